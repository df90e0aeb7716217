"""Small Streamlit widgets shared by pages. Each is a thin layer over a pure function in app/views
(which tests call without Streamlit); these only place the element and wire its events to state.

head_table(scores, key)  every head in one sortable table; clicking a row opens that head (it sets
                         the shared session_state "layer" / "head", as the pages' selectors do).
prompt_box(loaded, names) the shared prompt box with its checks (app.views.prompt): empty, unknown
                         characters (with an offer to drop them), too long, over the memory estimate.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable

import streamlit as st

from app import resources, state
from app.views import heads as vh


def _set_head(pick: tuple[int, int]) -> None:
    st.session_state[state.LAYER], st.session_state[state.HEAD] = pick


def head_table(scores: Any, key: str, selected: tuple[int, int] | None = None,
               sort_by: str | None = None, on_pick: Callable[[tuple[int, int]], None] | None = None,
               height: int | str = "auto") -> tuple[int, int] | None:
    """All heads in one table (app.views.heads.head_frame): a row per head, a column per score,
    sortable by clicking any header (st.dataframe does that natively).

    scores: gpt.analysis.HeadScores, or a {score key: (L, H) tensor} mapping (e.g.
    app.views.attention.prompt_head_scores' dict, plus "induction" when measured).
    key: names the widget (unique on the page; the widget's own key adds the row order).
    selected: the (layer, head) open now; its row is selected on first render.
    sort_by: a score key for the initial order (default: layer, head).
    on_pick: called with (layer, head) when the user clicks a row; the default sets
    session_state["layer"] and ["head"]. It runs as a callback, i.e. before the page's script
    reruns, so the page's own layer/head selectors already show the clicked head.
    Returns the (layer, head) of the row selected now, or None.
    """
    frame = vh.head_frame(scores, sort_by=sort_by)
    pick_fn = on_pick or _set_head
    # Streamlit keeps a keyed table's selection (row positions) across reruns; when the rows come in
    # another order (new scores under sort_by, another model), that selection would point at another
    # head. Keying the widget by the row order starts a fresh selection (selected's row) instead.
    wkey = f"{key}-{zlib.crc32(','.join(frame['head']).encode()):08x}"

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
