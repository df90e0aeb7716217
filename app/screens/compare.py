"""Compare page: two checkpoints on one prompt (two snapshots of a run, two runs, the bundled model
against an upload) or one model on two prompts, side by side with their differences (B − A):
attention patterns, logit lens, next-token distributions with KL per position, head scores, DLA.

Widgets and layout only: checkpoints from app.catalog, models, traces and head scores from
app.resources, figures (and what is compared, skipped and why: gpt.compare) from app.views.compare.
The tabs are lazy: only the open one runs, and each side records only what it reads.
"""
from __future__ import annotations

import streamlit as st

from app import catalog, components, interventions, resources, state
from app.inspection import clamp
from app.views import compare as vc
from app.views import heads as vh
from app.views.layers import lens_width, lens_window
from gpt.checkpoint import run_of

MODE, A, B, PROMPT_B, TAB = "cmp_mode", "cmp_a", "cmp_b", "cmp_prompt_b", "cmp_tab"
POS, SCORE, TOKEN, LENS = "cmp_pos", "cmp_score", "cmp_token", "cmp_lens_start"
ss = st.session_state


def checkpoints(current: resources.Loaded) -> tuple[resources.Loaded, resources.Loaded, bool]:
    """The mode, then two checkpoints (any two from the catalog, the current model too: an upload or
    a path), or the current model twice. First visit: the current run's first and last snapshot
    when it kept two, else the current model on two prompts."""
    run = run_of(current.ref)
    pair = vc.default_pair(catalog.snapshots(run) if run is not None else [])
    ss.setdefault(MODE, vc.TWO_CHECKPOINTS if pair else vc.TWO_PROMPTS)
    if st.radio("Compare", [vc.TWO_CHECKPOINTS, vc.TWO_PROMPTS], key=MODE, horizontal=True) == vc.TWO_PROMPTS:
        return current, current, True
    runs = [(s.key, catalog.snapshots(s.path)) for s in catalog.timeline_runs(current.ref)]
    options = vc.choices((current.ref, current.label), runs, [(e.ref, e.label) for e in catalog.entries(snapshots=False)])
    for key, ref, col in zip((A, B), pair or (current.ref, current.ref), st.columns(2)):
        ss[key] = ss[key] if ss.get(key) in options else ref
        col.selectbox(f"Checkpoint {key[-1].upper()}", list(options), key=key, format_func=options.get)
    return components.load_or_stop(ss[A], "Checkpoint A"), components.load_or_stop(ss[B], "Checkpoint B"), False


def prompts(la: resources.Loaded, lb: resources.Loaded, two: bool, names: tuple[str, ...]) -> tuple[tuple, tuple]:
    """A's prompt (the shared prompt box) and B's: the same text, or its own box with two prompts."""
    box_a, box_b = st.columns(2) if two else (st, st)
    pa = components.prompt_box(la, names, box_a)
    ss.setdefault(PROMPT_B, vc.second_prompt(lb.tokenizer.kind))
    text = box_b.text_area("Prompt B", key=PROMPT_B, height=90) if two else ss.get(state.PROMPT, "")
    pb = resources.prompt_ids(lb, text, drop_unknown=bool(ss.get(components.DROP_KEY)), names=names)
    if pb.message and (two or pb.message != pa.message):  # the same notice as A's is said once
        components.say((pb.level, f"{'Prompt' if two else 'Checkpoint'} B: {pb.message}"))
    if not pb.ok:
        st.stop()
    return pa.ids, pb.ids


def selectors(la: resources.Loaded, lb: resources.Loaded) -> st.delta_generator.DeltaGenerator:
    """Layer and head (shared with every page), kept inside both models; returns the row's last column."""
    L, H = min(la.config.n_layer, lb.config.n_layer), min(la.config.n_head, lb.config.n_head)
    ss[state.LAYER], ss[state.HEAD] = clamp(ss.get(state.LAYER), L), clamp(ss.get(state.HEAD), H)
    c1, c2, c3 = st.columns([1, 1, 3])
    c1.selectbox("Layer", range(L), key=state.LAYER)
    c2.selectbox("Head", range(H), key=state.HEAD)
    return c3


def show(view: vc.PairView, key: str, stacked: bool = False, wide: bool = False) -> None:
    """A and B side by side (stacked: one above the other), under them the difference and the extra
    figure side by side (wide or stacked: one under the other, full width), then the caption."""
    top, bottom = ((st, st) if stacked else st.columns(2)), ((st, st) if stacked or wide else st.columns(2))
    for j, (where, fig) in enumerate(zip((*top, *bottom), (view.a, view.b, view.diff, view.extra))):
        if fig is not None:
            where.plotly_chart(fig, key=f"{key}_{j}", width="stretch")
    st.caption(view.caption)


st.title("Compare")
current = resources.require_model()
interventions.banner()
la, lb, two = checkpoints(current)
names = vc.names_for(ss.get(TAB))
ids_a, ids_b = prompts(la, lb, two, names)
ea, eb, note = vc.side_edits(ss.get(state.EDIT), current, la, lb)
components.say(("caption", note) if note else None)
c3 = selectors(la, lb)
a, b = (resources.inspect(lx, ids, names, ss[state.LAYER], ss[state.HEAD], ex) for lx, ids, ex in ((la, ids_a, ea), (lb, ids_b, eb)))
comp = vc.comparison(a, b)
m = min(a.T, b.T)
if ss.get("_cmp_ids") != hash((a.ids, b.ids)) or not 0 <= int(ss.get(POS, -1)) < m:
    ss[POS], ss["_cmp_ids"] = m - 1, hash((a.ids, b.ids))  # new prompts: their last position first
labels = vc.pair_labels(a, b, m)
pos = c3.selectbox("Position (Next token, Attribution)", range(m), format_func=labels.__getitem__, key=POS)
for msg in [("info", line) for line in comp.skipped] + [("caption", line) for line in comp.notes]:
    components.say(msg)
components.metric_row(vc.summary(a, b, comp))

tabs = st.tabs(list(vc.TABS), key=TAB, on_change="rerun")  # lazy: only the open tab runs
with tabs[0]:
    if tabs[0].open:
        show(vc.build_attention(a, b, comp), "cmp_attn")
        components.token_legend()
with tabs[1]:
    if tabs[1].open:
        width = min(lens_width(a.loaded.tokenizer.kind), m)
        ss[LENS] = min(int(ss.get(LENS, m - width)), m - width)  # a shorter prompt than before
        start = st.slider(f"First of {width} positions", 0, m - width, key=LENS) if m > width else 0
        show(vc.build_lens(a, b, comp, lens_window(m, start, width)), "cmp_lens", stacked=True)
with tabs[2]:
    if tabs[2].open:
        show(vc.build_next(a, b, comp, pos), "cmp_next", wide=True)
with tabs[3]:
    if tabs[3].open:
        key = st.radio("Score", list(vh.SCORES), format_func=vh.SCORES.get, key=SCORE, horizontal=True)
        show(vc.build_scores(a, b, resources.compare_scores(a), resources.compare_scores(b), key, comp), "cmp_scores")
with tabs[4]:
    if tabs[4].open:
        options = vc.dla_tokens(a, b, comp, pos)
        token = st.selectbox("Token to attribute", list(options), format_func=options.get, key=f"{TOKEN}_{pos}") if options else None
        show(vc.build_dla(a, b, comp, pos, token), "cmp_dla")
components.export_bar("compare", a, loaded=la, b=b, pos=pos)  # every tab's numbers, app.export_generation
