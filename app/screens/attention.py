"""Attention page: one head's pattern and pre-softmax scores, where a chosen query attends, every
head at a glance (click one to open it), and a per-head summary.

Widgets and layout only; the figures come from app.views.attention / app.views.tokens. The grid is
a Vega-Lite chart with a point selection (plotly heatmaps send no clicks, streamlit #8760); its
on_select callback maps the selection to (layer, head) through views.attention.grid_pick before
the script reruns, so the selectboxes below show the clicked head.
"""
from __future__ import annotations

import functools
import time

import streamlit as st

from app import components, resources, state
from app.views import attention as va
from app.views.tokens import token_strs, unique_labels
from gpt.analysis import head_scores

GRID_KEY, QUERY_KEY, INDUCTION_KEY = "attn_grid", "attn_query", "_attn_induction"
NAMES = va.NAMES



st.title("Attention")
loaded = resources.require_model()
L, H = loaded.config.n_layer, loaded.config.n_head
ss = st.session_state
for name, n in ((state.LAYER, L), (state.HEAD, H)):  # another model may have fewer layers or heads
    if not 0 <= int(ss.get(name, 0)) < n:
        ss[name] = 0


def grid_key(layer: int, head: int) -> str:
    """A new chart (empty selection) whenever the open head changes, however it changed: a kept
    selection would make a second click on the same block (after using the selectboxes) do nothing."""
    return f"{GRID_KEY}_{L}x{H}_{layer}_{head}"


def on_grid_click(key: str) -> None:
    pick = va.grid_pick(st.session_state.get(key), L, H)
    if pick is not None:
        st.session_state[state.LAYER], st.session_state[state.HEAD] = pick


p = components.prompt_box(loaded, NAMES)
ids = list(p.ids)
T = len(ids)
strs = token_strs(loaded.tokenizer.token_str, ids)
labels = unique_labels(strs)
if ss.get("_attn_ids") != hash(p.ids) or not 0 <= int(ss.get(QUERY_KEY, -1)) < T:
    ss[QUERY_KEY] = T - 1  # a new prompt: look at its last token first
    ss["_attn_ids"] = hash(p.ids)

c1, c2, c3 = st.columns([1, 1, 2])
layer = c1.selectbox("Layer", range(L), key=state.LAYER)
head = c2.selectbox("Head", range(H), key=state.HEAD)
query = c3.selectbox("Query token", range(T), format_func=lambda i: labels[i], key=QUERY_KEY)

t0 = time.perf_counter()
rec = resources.trace(loaded, tuple(ids), NAMES)
view = va.build(rec, L, H, layer, head, query, strs)
ms = (time.perf_counter() - t0) * 1000

st.header(f"layer {layer}, head {head}")
left, right = st.columns(2)
left.plotly_chart(view.pattern, width="stretch", key="attn_pattern")
right.plotly_chart(view.scores, width="stretch", key="attn_scores")

st.subheader(f"Where {labels[query]} attends")
st.markdown(view.query_html, unsafe_allow_html=True)
st.plotly_chart(view.query_bar, width="stretch", key="attn_query_bar")

st.subheader("All heads")
st.caption("Each block is one head's pattern, average-pooled to at most "
           f"{view.grid_side}×{view.grid_side} cells and scaled to its own maximum. "
           "Click a block to open that head.")
key = grid_key(layer, head)
st.vega_lite_chart(view.grid_frame, view.grid_spec, on_select=functools.partial(on_grid_click, key),
                   selection_mode=va.GRID_PARAM, key=key, theme=None, width="content")

st.subheader("Head summary")
st.caption("Over query positions 1…T-1 of this prompt: entropy of each head's attention (bits), mean "
           "weight on the previous token, and on the first token (an attention sink).")
st.plotly_chart(view.summary_fig, width="stretch", key="attn_summary")
sel = view.selected_scores
st.caption(f"layer {layer}, head {head}: entropy {sel['entropy']:.2f} bits · previous-token "
           f"{sel['prev_token']:.2f} · first-token {sel['first_token']:.2f}")
with st.expander("Induction scores (runs the model on a repeated random sequence)"):
    stamp = (loaded.ref, loaded.stamp)
    if st.button("Measure induction", key="attn_induction_go"):
        ss[INDUCTION_KEY] = (stamp, head_scores(loaded.model).induction)
    got = ss.get(INDUCTION_KEY)
    if got is not None and got[0] == stamp:
        st.plotly_chart(va.induction_figure(got[1], (layer, head)), width="stretch", key="attn_induction")
st.subheader("Head table")
st.caption("Every head of this prompt in one table: click a column header to sort, a row to open that head.")
components.head_table({**view.summary, **({"induction": got[1]} if got is not None and got[0] == stamp else {})},
                      key="attn_head_table", selected=(layer, head))
st.caption(f"computed in {ms:.0f} ms (trace + figures; the trace is cached per prompt)")
