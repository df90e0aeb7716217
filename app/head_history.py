"""The Timeline's "Heads across training" section: every head's score at every snapshot, one line
per head, and a click on a line opens that head (the shared "layer" / "head").

Two sources. Where the run has the analysis job's results (gpt.score_history, through
app.resources.score_history) it shows Timeline 2.0: the six dataset-averaged scores, the top movers
highlighted, the phase-change markers (gpt.phase: a head's largest jump, the run's loss bumps) as
bands with their sentences, and the open head's top validation examples with its attention drawn
over the text. Otherwise it shows what the Timeline always did: head scores on a repeated random
sequence, computed per snapshot. Under both, while the analysis is missing or incomplete, the
analysis job's panel (app.analysis_panel: progress, Start, Stop). Widgets only; figures from app.views.score_history and
app.views.timeline, everything cached from app.resources.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import components, resources
from app.analysis_panel import analysis_panel
from app.inspection import Inspection
from app.views import heads as vh
from app.views import score_history as vs
from app.views import timeline as vt
from app.views.tokens import token_strs

if TYPE_CHECKING:
    from gpt.score_history import ScoreHistory

SCORE_KEY, HEAD_KEY, CHART_KEY = "_tl_score", "_tl_head", "_tl_chart"  # per-snapshot scores
ASCORE_KEY, CURVES_KEY, EX_ITER_KEY, EX_KEY = "_tl_ascore", "_tl_curves", "_tl_ex_iter", "_tl_ex"  # analysis
ss = st.session_state


def section(final: Inspection, paths: dict[int, str], run: str) -> dict[str, Any]:
    """The section for the run folder `run` (snapshots `paths`: iter -> checkpoint; `final`: the
    last snapshot's Inspection, which holds the open layer and head). Returns what it showed, as
    the Timeline's export takes it (app.export_history): {"score", and "history" (the analysis'
    ScoreHistory) or "snapshot_scores" ([(iter, HeadScores)])}."""
    st.subheader("Heads across training")
    try:
        history = resources.score_history(run)
    except ValueError as e:
        st.warning(f"The run's analysis cannot be read ({e}); showing head scores per snapshot instead.")
        history = None
    cfg = final.config
    if history is not None and any(v.shape[1:] != (cfg.n_layer, cfg.n_head) for v in history.scores.values()):
        st.warning("The run's analysis is of another model shape; showing head scores per snapshot instead.")
        history = None
    shown = per_snapshot(final, paths) if history is None else from_analysis(final, history, paths, run)
    if history is None or len(history.iters) < len(paths):  # none yet, or the job has more to do
        analysis_panel(run, key="_tl_an")
    return shown


def head_select(final: Inspection, where: Any) -> str:
    """The head selector, following the shared state (a chart click or another page may have moved
    it); returns the open head's id."""
    L, H, hid = final.config.n_layer, final.config.n_head, vh.head_id(final.layer, final.head)
    ss[HEAD_KEY] = hid
    where.selectbox("Head", [vh.head_id(l, h) for l in range(L) for h in range(H)], key=HEAD_KEY,
                    on_change=components.open_head, args=(vh.parse_head_id, HEAD_KEY),
                    help="Also: click a line in the chart.")
    return hid


def per_snapshot(final: Inspection, paths: dict[int, str]) -> dict[str, Any]:
    """Head scores on the repeated random sequence, computed for each snapshot (no analysis yet)."""
    L, H = final.config.n_layer, final.config.n_head
    c1, c2 = st.columns([3, 1])
    score = c1.radio("Score", list(vh.SCORES), format_func=vh.SCORES.get, key=SCORE_KEY, horizontal=True)
    hid = head_select(final, c2)
    with st.spinner(f"Scoring every head at {len(paths)} snapshots…"):
        scores = components.or_stop(lambda: [(it, resources.snapshot_scores(p)) for it, p in paths.items()],
                                    "A snapshot")
    key = f"{CHART_KEY}_{score}_{hid}"  # a new chart when the head changes: no stale selection
    chart = vt.history_chart(vt.history_frame(scores, score), score, selected=hid)
    st.altair_chart(chart, key=key, width="stretch", selection_mode=vt.PICK_PARAM,
                    on_select=partial(components.open_head, vt.chart_pick, key, L, H))
    components.png_button(chart, f"timeline-{score}", key="_tl_png")
    last = scores[-1][1]
    st.caption(vt.history_caption(score, last, last.induction_len))
    with st.expander("All heads at the last snapshot (click a row to open it)"):
        components.head_table(last, key="_tl_head_table", selected=(final.layer, final.head), sort_by=score)
    return {"score": score, "snapshot_scores": scores}


def from_analysis(final: Inspection, history: "ScoreHistory", paths: dict[int, str], run: str) -> dict[str, Any]:
    """Timeline 2.0: the analysis job's curves with their markers, then the open head's examples."""
    L, H = final.config.n_layer, final.config.n_head
    c1, c2 = st.columns([3, 1])
    names = vs.score_options(list(history.scores))
    score = components.kept_select("Score", names, ASCORE_KEY, c1, format_func=vs.label,
                                   help="Each score is averaged over the analysis job's validation windows.")
    hid = head_select(final, c2)
    values = history.scores[score]  # (S, L, H)
    marks = vs.markers_for(history.iters, values, score, resources.metrics_tail(run).update().series)
    frame = vs.curves_frame(history.iters, values, selected=hid)
    key = f"{CURVES_KEY}_{score}_{hid}"  # a new chart when the head changes: no stale selection
    chart = vs.curves_chart(frame, score, history.iters, vs.marker_frame(marks.shown, history.iters))
    st.altair_chart(chart, key=key, width="stretch", selection_mode=vt.PICK_PARAM,
                    on_select=partial(components.open_head, vt.chart_pick, key, L, H))
    components.png_button(chart, f"timeline-{score}", key="_tl_apng")
    for line in vs.marker_lines(marks):
        st.markdown(line)
    st.caption(vs.curves_caption(score, history.meta, len(history.iters), len(paths)))
    examples(final, history, score, paths, hid)
    return {"score": score, "history": history}


def examples(final: Inspection, history: "ScoreHistory", score: str, paths: dict[int, str], hid: str) -> None:
    """The open head's top validation windows for `score` at a chosen snapshot, its attention from
    a query position (by default where the head shows the score most) shaded over the text."""
    st.markdown(f"#### {hid}'s top validation examples")
    score, note = vs.example_score(score, list(history.top))
    c1, c2, c3 = st.columns([1, 2, 2])
    it = components.kept_select("At snapshot", history.iters[::-1], EX_ITER_KEY, c1, format_func=lambda i: f"iter {i}")
    top = history.top[score][history.iters.index(it)][final.layer][final.head] if score in history.top else []
    if not top:
        st.caption(f"The analysis kept no examples of {vs.label(score)} for {hid} at iter {it}.")
        return
    labels = [vs.example_label(r, int(w), float(v)) for r, (w, v) in enumerate(top)]
    rank = labels.index(components.kept_select("Example", labels, EX_KEY, c2,
                                               help=f"The head's {vs.label(score)} score on each window, best first."))
    ids = tuple(history.windows[int(top[rank][0])])
    if it not in paths:
        st.warning(f"The snapshot of iter {it} is gone; pick another.")
        return
    try:
        pattern = components.or_stop(lambda: resources.head_pattern(paths[it], ids, final.layer, final.head), f"iter {it}")
    except ValueError as e:
        st.error(str(e))
        return
    q = c3.slider("Query position", 0, len(ids) - 1, vs.default_query(pattern, ids, score),
                  key=f"_tl_ex_q_{it}_{hid}_{score}_{rank}",  # each example opens on its own best query
                  help="The token whose attention is drawn; it starts where the head shows the score most.")
    view = vs.example_view(token_strs(final.token_str, ids), ids, pattern, score, q, hid, it)
    st.caption(" ".join(filter(None, (view.caption, note))))
    st.markdown(view.html, unsafe_allow_html=True)
    st.markdown(view.legend, unsafe_allow_html=True)
    components.token_legend()
