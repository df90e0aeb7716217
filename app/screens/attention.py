"""Attention page: one head's pattern and pre-softmax scores (past ZOOM tokens: a pooled overview of
the whole pattern and a zoomed window at full resolution), where a chosen query attends and what
attends to it, heads compared in colour (and BertViz's head view for short prompts), every head at
a glance (click one to open it), and a per-head summary.

Widgets and layout only; figures come from app.views.attention*, the lazy per-layer attention from
app.resources.attention_trace: the open layer alone is computed first (the blocks before it run
fused, without their patterns), so its figures are on screen before the second pass digests every
other layer for the grid and the summary. Sections with widgets live in app.attention_sections.
Every Plotly chart keeps its modebar (Download plot as PNG) on hover; the CSS below only takes its
buttons out of the keyboard's tab order.
"""
from __future__ import annotations

import time

import streamlit as st
import torch

from app import attention_sections as sec
from app import components, resources
from app.views import attention as va
from app.views import attention_heads as vah
from app.views import attention_long as val

ss = st.session_state

st.title("Attention")
st.html(vah.MODEBAR_CSS)  # Plotly modebars out of the tab order, still there on mouse hover
t0 = time.perf_counter()
insp = components.inspection(va.NAMES, record=False)
T, labels = insp.T, insp.labels
if ss.get("_attn_ids") != hash(insp.ids) or not 0 <= int(ss.get(sec.QUERY_KEY, -1)) < T:
    ss[sec.QUERY_KEY] = T - 1  # a new prompt: look at its last token first
    ss["_attn_ids"] = hash(insp.ids)
query = sec.layer_head_query(insp)
trace = resources.attention_trace(insp)
pattern, top = trace.pattern(insp.layer), float(trace.digest(insp.layer).tops[insp.head])  # (H, T, T)
opened = pattern[insp.head]  # (T, T)

st.header(f"layer {insp.layer}, head {insp.head}")
window = sec.zoom(T, query)
q0, q1, k0, k1 = window
if T > val.ZOOM:
    ov = val.overview(opened, top, window)
    over, note = st.columns([3, 2])
    over.image(ov.png, caption=f"the whole pattern: {T}×{T}, block-max pooled to {ov.side}×{ov.side} "
               f"({ov.cell:g} tokens a cell), log colour scale; the orange box is the zoom", width=min(512, ov.side * 2))
    note.markdown(f"**Zoom:** queries {q0}…{q1 - 1} × keys {k0}…{k1 - 1} at full resolution below. "
                  "Move it with the two boxes above (arrow keys step by 16); choosing a query recentres it.")
left, right = st.columns(2)
ztop = val.crop_top(opened, window)  # the zoom's own colour top (the whole pattern's when T <= ZOOM)
sec.chart(val.crop_figure(opened, labels, window, "pattern (softmax)", "pattern", ztop), "attn_pattern", left)
sec.chart(val.crop_figure(trace.scores(insp.layer)[insp.head], labels, window, "pre-softmax scores q·k/√d",
                          "scores"), "attn_scores", right)
ms = (time.perf_counter() - t0) * 1000  # the first figures are on their way to the browser
st.caption(va.how_to_read(ztop, T))
components.token_legend()

row = opened[query]  # (T,) where the chosen query attends
st.subheader(f"Where {labels[query]} attends")
st.markdown(va.attention_html(insp.strs, row, query), unsafe_allow_html=True)
st.markdown(va.attention_legend_html(row, query), unsafe_allow_html=True)
sec.strip(insp, row, query, window)
sec.chart(va.attention_bar_figure(labels, row, query), "attn_query_bar")
sec.compare_heads(insp, pattern, query)
with st.spinner("Every layer's heads, for the grid and the summary…"):
    digests = trace.digests()  # the second pass: every other layer's pattern, digested
scores = {k: torch.stack([getattr(d, k) for d in digests]) for k in ("entropy", "prev_token", "first_token")
          } if T > 1 else {}
sec.grid(insp, scores)
sec.summary(insp, scores)
st.caption(f"computed in {(time.perf_counter() - t0) * 1000:.0f} ms, the first figures in {ms:.0f} ms "
           "(the attention is cached per prompt)")
components.export_bar("attention", insp, query=query)
