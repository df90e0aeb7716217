"""Attention page: one head's pattern and pre-softmax scores, where a chosen query attends, every
head at a glance (click one to open it), and a per-head summary.

Widgets and layout only; the figures come from app.views.attention.build. The grid is a Vega-Lite
chart with a point selection (plotly heatmaps send no clicks, streamlit #8760); its on_select
callback maps the selection to (layer, head) through views.attention.grid_pick before the script
reruns, so the selectboxes below show the clicked head.
"""
from __future__ import annotations

import functools
import time

import streamlit as st

from app import components, resources, state
from app.inspection import Inspection
from app.views import attention as va
from app.views import heads as vh

GRID_KEY, QUERY_KEY, INDUCTION_KEY = "attn_grid", "attn_query", "_attn_induction"
ss = st.session_state


def grid(insp: Inspection, view: va.AttentionView) -> None:
    L, H = insp.config.n_layer, insp.config.n_head
    st.subheader("All heads")
    st.caption("Each block is one head's pattern, average-pooled to at most "
               f"{view.grid_side}×{view.grid_side} cells and scaled to its own maximum. "
               "Click a block to open that head.")
    # a new chart (empty selection) whenever the open head changes, however it changed: a kept
    # selection would make a second click on the same block (after using the selectboxes) do nothing
    key = f"{GRID_KEY}_{L}x{H}_{insp.layer}_{insp.head}"
    st.vega_lite_chart(view.grid_frame, view.grid_spec, on_select=functools.partial(components.open_head, va.grid_pick, key, L, H),
                       selection_mode=va.GRID_PARAM, key=key, theme=None, width="content")


def summary(insp: Inspection, view: va.AttentionView) -> None:
    st.subheader("Head summary")
    if view.summary_fig is None:
        st.info(view.summary_note)
    else:
        st.caption("Over query positions 1…T-1 of this prompt: entropy of each head's attention (bits), mean "
                   "weight on the previous token, and on the first token (an attention sink).")
        st.plotly_chart(view.summary_fig, width="stretch", key="attn_summary")
        sel = view.selected_scores
        st.caption(f"layer {insp.layer}, head {insp.head}: entropy {sel['entropy']:.2f} bits · previous-token "
                   f"{sel['prev_token']:.2f} · first-token {sel['first_token']:.2f} · "
                   + vh.verdict(view.summary, "prev_token"))
    stamp = (insp.loaded.ref, insp.loaded.stamp)
    with st.expander("Induction scores (runs the model on a repeated random sequence)"):
        if st.button("Measure induction", key="attn_induction_go"):
            ss[INDUCTION_KEY] = stamp
        induction = resources.model_scores(insp.loaded).induction if ss.get(INDUCTION_KEY) == stamp else None
        if induction is not None:
            st.markdown(vh.verdict({"induction": induction}, "induction"))
            st.plotly_chart(va.induction_figure(induction, (insp.layer, insp.head)), width="stretch",
                            key="attn_induction")
    scores = {**view.summary, **({"induction": induction} if induction is not None else {})}
    if scores:
        st.subheader("Head table")
        st.caption("Every head of this prompt in one table: click a column header to sort, a row to open that head.")
        components.head_table(scores, key="attn_head_table", selected=(insp.layer, insp.head))


st.title("Attention")
t0 = time.perf_counter()
insp = components.inspection(va.NAMES)
T, labels = insp.T, insp.labels
if ss.get("_attn_ids") != hash(insp.ids) or not 0 <= int(ss.get(QUERY_KEY, -1)) < T:
    ss[QUERY_KEY] = T - 1  # a new prompt: look at its last token first
    ss["_attn_ids"] = hash(insp.ids)

c1, c2, c3 = st.columns([1, 1, 2])
c1.selectbox("Layer", range(insp.config.n_layer), key=state.LAYER)
c2.selectbox("Head", range(insp.config.n_head), key=state.HEAD)
query = c3.selectbox("Query token", range(T), format_func=lambda i: labels[i], key=QUERY_KEY)
view = va.build(insp, query)
ms = (time.perf_counter() - t0) * 1000

st.header(f"layer {insp.layer}, head {insp.head}")
left, right = st.columns(2)
left.plotly_chart(view.pattern, width="stretch", key="attn_pattern")
right.plotly_chart(view.scores, width="stretch", key="attn_scores")
st.caption(view.how_to_read)
components.token_legend()
st.subheader(f"Where {labels[query]} attends")
st.markdown(view.query_html, unsafe_allow_html=True)
st.markdown(view.query_legend, unsafe_allow_html=True)
st.plotly_chart(view.query_bar, width="stretch", key="attn_query_bar")
grid(insp, view)
summary(insp, view)
st.caption(f"computed in {ms:.0f} ms (trace + figures; the trace is cached per prompt)")
