"""Small Streamlit widgets shared by pages. Each is a thin layer over a pure function (app.views,
app.catalog, app.resources); these only place the element and wire its events to state.

inspection(names)         the prompt box, then the page's Inspection (model, ids, labels, the cached
                          recording of `names` under the active edit, layer and head clamped)
prompt_box(loaded, names) the shared prompt box with its checks (app.views.prompt): empty, unknown
                          characters (with an offer to drop them), too long, over the memory estimate
picker(key, level)        the one model picker: the sidebar's flat list, the Model page's source and
                          checkpoint, the Timeline's run with snapshots (all from app.catalog)
head_table(scores, key)   every head in one sortable table; clicking a row opens that head (it sets
                          the shared session_state "layer" / "head", as the pages' selectors do)
token_legend()            the one legend of the token glyphs (· space, ⏎ newline, ...), under every
                          picture that draws tokens
metric_row(cells)         a row of st.metric, one per (label, value[, its other arguments]) a view built
say(msg)                  a (level, text) message shown as st.info / success / warning / error
kept_select(label, ...)   a select box whose kept value falls back to the first option once it is gone
load_or_stop(ref, what)   the model at ref, or an error saying why not and a stop (or_stop: any loader)
export_bar(page, insp, ...)  the data behind a page's view (NPZ, CSV) and "Open as notebook" downloads
png_button(chart, name)   "Figure (PNG)" beside an Altair chart (Streamlit hides Vega's own menu), drawn on click
copy_link(where, page, pages) the URL of the view (app.deeplink) kept in the address bar, and shown to copy
"""
from __future__ import annotations

import io
import zipfile
import zlib
from typing import Any, Callable, Sequence, TypeVar

import streamlit as st

from app import catalog, deeplink, exporting, interventions, notebooks, resources, state
from app.inspection import Inspection
from app.views import heads as vh
from app.views.tokens import glyph_legend

T = TypeVar("T")


def _set_head(pick: tuple[int, int]) -> None:
    st.session_state[state.LAYER], st.session_state[state.HEAD] = pick


def open_head(decode: Callable[..., tuple[int, int] | None], key: str, *args: Any) -> None:
    """An on_select / on_change callback: decode st.session_state[key] (a chart's selection, a
    widget's value) with `decode(value, *args)` and, when it names a head, open it (the shared
    "layer" and "head"). Used as functools.partial(open_head, va.grid_pick, key, L, H)."""
    pick = decode(st.session_state.get(key), *args)
    if pick is not None:
        _set_head(pick)


def head_table(scores: Any, key: str, selected: tuple[int, int] | None = None,
               sort_by: str | None = None, on_pick: Callable[[tuple[int, int]], None] | None = None,
               height: int | str = "auto") -> tuple[int, int] | None:
    """All heads in one table (app.views.heads.head_frame): a row per head, a column per score,
    sortable by clicking any header (st.dataframe does that natively).

    scores: gpt.heads.HeadScores, or a {score key: (L, H) tensor} mapping (e.g.
    gpt.heads.prompt_head_scores' dict, plus "induction" when measured).
    key: names the widget (unique on the page; the widget's own key adds the row order).
    selected: the (layer, head) open now; its row is the one selected, on first render and whenever
    `selected` changes (so every head selector on the page shows the same head).
    sort_by: a score key for the initial order (default: layer, head).
    on_pick: called with (layer, head) when the user clicks a row; the default sets
    session_state["layer"] and ["head"]. It runs as a callback, i.e. before the page's script
    reruns, so the page's own layer/head selectors already show the clicked head.
    Returns the (layer, head) of the row selected now, or None.
    """
    frame = vh.head_frame(scores, sort_by=sort_by)
    pick_fn = on_pick or _set_head
    # Streamlit keeps a keyed table's selection (row positions) across reruns, and a selection_default
    # applies only to a new widget. When the rows come in another order (new scores under sort_by,
    # another model) the kept selection would point at another head, and when the head is opened
    # elsewhere (the grid, a selectbox, a chart) it would still tick the old one. Keying the widget by
    # the row order and the open head starts a fresh selection, on `selected`'s row, in both cases.
    wkey = f"{key}-{zlib.crc32((','.join(frame['head']) + f'|{selected}').encode()):08x}"

    def on_select() -> None:
        pick = vh.pick_row(st.session_state.get(wkey), frame)
        if pick is not None:
            pick_fn(pick)

    default = None
    if selected is not None:
        rows = frame.index[(frame["layer"] == selected[0]) & (frame["head_index"] == selected[1])]
        if len(rows):
            default = {"selection": {"rows": [int(rows[0])]}}
    config: dict[str, Any] = {
        "head": st.column_config.TextColumn("head", help="L<layer>H<head>; click a row to open it"),
        "layer": None, "head_index": None,  # hidden: the head id says both
    }
    for k, label in vh.SCORES.items():
        if k not in frame.columns:
            continue
        if k == "entropy":
            config[k] = st.column_config.NumberColumn(label, help=vh.SCORE_HELP[k], format="%.2f")
        else:  # weights in 0..1: a bar reads faster than a number
            config[k] = st.column_config.ProgressColumn(label, help=vh.SCORE_HELP[k], format="%.2f",
                                                        min_value=0.0, max_value=1.0)
    event = st.dataframe(frame, key=wkey, hide_index=True, column_config=config, on_select=on_select,
                         selection_mode="single-row", selection_default=default, height=height)
    return vh.pick_row(event, frame)


def token_legend(where: Any = st) -> None:
    """The token-glyph legend (app.views.tokens.glyph_legend) in `where`."""
    where.markdown(glyph_legend(), unsafe_allow_html=True)


def metric_row(cells: Sequence[tuple[str, str] | tuple[str, str, dict[str, Any]]], where: Any = st) -> None:
    """One st.metric per cell, side by side in `where`: (label, value) or (label, value, st.metric's
    other keyword arguments: delta, help, ...), as the views build them."""
    for col, (label, value, *kwargs) in zip(where.columns(len(cells)), cells):
        col.metric(label, value, **(kwargs[0] if kwargs else {}))


def say(msg: tuple[str, str] | None, where: Any = st) -> None:
    """Show a (level, text) message with the element of its level ("info", "success", "warning",
    "error"); None shows nothing."""
    if msg is not None:
        getattr(where, msg[0])(msg[1])


def kept_select(label: str, options: Sequence[Any], key: str, where: Any = st, **kwargs: Any) -> Any:
    """where.selectbox(label, options, key=key, **kwargs) whose kept value, once it is no longer
    among `options` (a run deleted, another model chosen), falls back to the first option instead
    of failing. `options` must not be empty."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    return where.selectbox(label, options, key=key, **kwargs)


DROP_KEY = "drop_unknown"
LEVELS = {"info": st.info, "warning": st.warning, "error": st.error}


def prompt_box(loaded: "resources.Loaded", names: tuple[str, ...] | list[str], where: Any = st
               ) -> "resources.PromptIds":
    """The prompt shared by every page (session_state "prompt"), checked for this model and for the
    recordings `names` the page will make. `where` is the container the box goes in (default: the
    page). Shows the checker's message; stops the page when the prompt cannot run (empty, unknown
    characters not dropped, over the memory estimate)."""
    text = where.text_area("Prompt", key=state.PROMPT, height=90)
    drop = False
    if text and loaded.tokenizer.unknown_chars(text):
        st.session_state[DROP_KEY] = st.session_state.get(DROP_KEY, False)
        drop = where.checkbox("Drop the characters this model does not know", key=DROP_KEY)
    p = resources.prompt_ids(loaded, text, drop_unknown=drop, names=names)
    if p.message:
        LEVELS.get(p.level, st.info)(p.message)
    if not p.ok:
        st.stop()
    return p


def inspection(names: tuple[str, ...], where: Any = st, check: tuple[str, ...] | None = None,
               record: bool = True) -> Inspection:
    """The preamble of every inspector page: the current model (or the "No model yet" guidance and a
    stop), the prompt box checked for `check` (default: `names`), and the Inspection of the prompt
    recording `names` under the session's active edit (record=False: no forward, rec is None).
    The shared layer and head are clamped to the model and written back, so the page's selectors
    bound to them always hold a valid value."""
    loaded = resources.require_model()
    interventions.banner()  # every inspector page says when it shows an edited model
    p = prompt_box(loaded, check if check is not None else names, where)
    ss = st.session_state
    insp = resources.inspect(loaded, p.ids, names if record else None, ss.get(state.LAYER),
                             ss.get(state.HEAD), ss.get(state.EDIT))
    ss[state.LAYER], ss[state.HEAD] = insp.layer, insp.head
    return insp


def load_or_stop(ref: str, what: str) -> "resources.Loaded":
    """resources.load_model(ref); when it cannot load, say so ("<what> cannot be loaded: <why>")
    and stop the script (or the fragment) here."""
    return or_stop(lambda: resources.load_model(ref), what)


def or_stop(make: Callable[[], T], what: str) -> T:
    """make() (a load, or anything that loads checkpoints); when it raises CheckpointError, say
    "<what> cannot be loaded: <why>" and stop the script (or the fragment) here."""
    from gpt.checkpoint import CheckpointError

    try:
        return make()
    except CheckpointError as e:
        st.error(f"{what} cannot be loaded: {e}")
        st.stop()


# -- the one model picker ---------------------------------------------------------------------------
def picker(key: str, level: str = "checkpoint", where: Any = st, current: str | None = None,
           on_change: Callable[[str], None] | None = None, help: str | None = None) -> str | None:
    """Choose what to inspect from app.catalog. Returns the chosen ref (or run folder), None when
    there is nothing to choose.

    level "checkpoint": one select box over the bundled model and every run's latest and best (the
      sidebar); `current` is kept in the list even when the catalog lacks it (an upload, a path).
      The widget is keyed by `current`, so when another page changes the model this one starts
      afresh on it instead of fighting over the value; on_change(ref) runs when the user picks.
    level "source": two boxes, the bundled model or a run (key+"_source"), then its latest, best or
      a snapshot (key+"_ckpt_<source>") (the Model page, which loads on a button).
    level "run": runs that kept snapshots, the current model's and the bundled first (the Timeline).
    """
    if level == "checkpoint":
        choices = {e.ref: e.label for e in catalog.entries(snapshots=False)}
        if current is not None and current not in choices:
            choices = {current: catalog.describe(current), **choices}
        if not choices:
            return None
        refs, wkey = list(choices), f"{key}:{current}"
        return where.selectbox("Model", refs, index=refs.index(current) if current in refs else 0, key=wkey,
                               format_func=lambda r: choices.get(r, r), help=help,
                               on_change=(lambda: on_change(st.session_state[wkey])) if on_change else None)
    if level == "run":
        runs = {str(s.path): s.label for s in catalog.timeline_runs(current)}
        if not runs:
            return None
        return kept_select("Run", list(runs), key, where, format_func=runs.get, help=help)
    if level != "source":
        raise ValueError(f"picker level must be 'checkpoint', 'source' or 'run', got {level!r}")
    sources = {s.key: s.label for s in catalog.sources()}
    if not sources:
        return None
    left, right = where.columns(2)
    source = left.selectbox("Bundled model or run", list(sources), key=f"{key}_source",
                            format_func=lambda k: k if k == catalog.BUNDLED_SOURCE else sources[k])
    options = {e.which: e.ref for e in catalog.checkpoints(source)}
    if not options:
        st.caption(f"{source} has no checkpoint yet (it writes one at its first evaluation).")
        return None
    which = right.selectbox("Checkpoint", list(options), key=f"{key}_ckpt_{source}", help=help)
    return options.get(which)


# -- export ------------------------------------------------------------------------------------------
CSV_MAX_CELLS = 2_000_000  # a long-format CSV of a bigger table (all heads at T=1024) would be huge: NPZ only


def _csv_zip(tables: list[exporting.Table]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for t in tables:
            if t.values.size <= CSV_MAX_CELLS:
                z.writestr(f"{t.name}.csv", exporting.to_csv(t))
    return buf.getvalue()


def png_only(name: str) -> dict[str, Any]:
    """A plotly config whose modebar holds only "Download plot as a png" (for small clickable charts
    whose other modebar buttons would get in the way), saving nanolens-<name>.png at twice the size."""
    return {"displaylogo": False, "modeBarButtons": [["toImage"]],
            "toImageButtonOptions": {"format": "png", "filename": f"nanolens-{name}", "scale": 2}}


def png_button(chart: Any, name: str, where: Any = st, key: str | None = None) -> None:
    """A "Figure (PNG)" download of an Altair chart (or a Vega-Lite spec dict) the page shows, since
    Streamlit turns Vega-Embed's own export menu off. The PNG is drawn (app.figure_png, server-side,
    offline) only when the button is clicked, so a large chart costs nothing on page load; the
    chart's selections are untouched (it draws a copy of the spec). Saves nanolens-<name>.png."""
    from app import figure_png

    where.download_button("Figure (PNG)", lambda: figure_png.to_png(chart), f"nanolens-{name}.png", "image/png",
                          key=key or f"_png_{name}", on_click="ignore", icon=":material/image:",
                          help="This chart as a PNG image, drawn on the server when you click.")


def export_bar(page: str, insp: Inspection | None = None, loaded: "resources.Loaded | None" = None,
               where: Any = st, **settings: Any) -> None:
    """Three download buttons under a page's view: its data as NPZ (every table, with its labels) and
    as CSV (a zip, one file per table), and "Open as notebook" (an .ipynb that recomputes the numbers
    with gpt/). `settings` are the page's own choices, as app.exporting.page_tables and
    app.notebooks.page_notebook take them. Nothing is computed until a button is clicked."""
    tables = lambda: exporting.page_tables(page, insp, {**settings, "loaded": loaded})  # noqa: E731
    a, b, c = where.columns(3)
    a.download_button("Data (NPZ)", lambda: exporting.to_npz(tables()), exporting.filename(page, "data", "npz"),
                      "application/octet-stream", key=f"_export_npz_{page}", on_click="ignore",
                      icon=":material/download:", help="Every array of this view with its labels; np.load reads it.")
    b.download_button("Data (CSV)", lambda: _csv_zip(tables()), exporting.filename(page, "csv", "zip"),
                      "application/zip", key=f"_export_csv_{page}", on_click="ignore", icon=":material/table:",
                      help="One CSV per array, with token, layer and head labels.")
    try:
        notebooks.edit_spec(insp.edit if insp is not None else None)
    except ValueError as e:  # an edit that cannot be written as text
        c.caption(str(e))
        return
    c.download_button("Open as notebook", lambda: notebooks.page_notebook(page, insp, settings, loaded=loaded),
                      exporting.filename(page, "notebook", "ipynb"),
                      "application/x-ipynb+json", key=f"_export_nb_{page}", on_click="ignore",
                      icon=":material/code:", help="A Jupyter notebook that loads this checkpoint and "
                      "recomputes and plots these numbers with the gpt/ API.")


def copy_link(where: Any, page: str, pages: Sequence[str]) -> None:
    """Write the view's parameters into the URL (app.deeplink.sync) and show the link in `where` (a
    placeholder), in st.code, whose copy button needs no component and works offline. Never raises:
    a failure here must not take the page down."""
    try:
        params = deeplink.sync(st.query_params, st.session_state, page)
        url = deeplink.link(str(st.context.url or ""), page, params, pages)
    except Exception:  # noqa: BLE001 (a session closing mid-run, a context without a URL)
        return
    with where.container().expander("Link to this view", icon=":material/link:"):
        st.code(url, language=None, wrap_lines=True)
        st.caption("Copy it with the button in its corner: it opens this model, prompt, layer, head and "
                   "position." + (" The prompt is too long for a link and stays out." if "prompt" not in params
                                  and st.session_state.get(state.PROMPT) else ""))
