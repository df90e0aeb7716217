"""Layers page: the residual stream's norm through the layers, the logit lens, and the embeddings.

Widgets and layout only; the figures come from app.views.layers.build.
"""
from __future__ import annotations

import time

import streamlit as st

from app import components, resources
from app.views import layers as vl
from app.views.tokens import token_strs, unique_labels

NORM_KEY, LENS_KEY = "layers_norm", "layers_lens_start"
LENS_WIDTH = 32  # positions in the logit-lens table at once: enough to read the token in each cell



st.title("Layers")
loaded = resources.require_model()
p = components.prompt_box(loaded, vl.NAMES)
ids = list(p.ids)
T = len(ids)
strs = token_strs(loaded.tokenizer.token_str, ids)
labels = unique_labels(strs)

c1, c2 = st.columns([3, 2])
choice = c1.radio("Residual-stream quantity", list(vl.NORM_CHOICES), key=NORM_KEY, horizontal=True)
width = min(LENS_WIDTH, T)
start = 0
if T > width:
    ss = st.session_state
    if not 0 <= int(ss.get(LENS_KEY, 0)) <= T - width:  # a shorter prompt than before
        ss[LENS_KEY] = T - width
    start = c2.slider(f"Logit lens: first of {width} positions", 0, T - width, key=LENS_KEY)

t0 = time.perf_counter()
rec = resources.trace(loaded, tuple(ids), vl.NAMES)
view = vl.build(loaded.model, rec, ids, strs, loaded.tokenizer.token_str, vl.NORM_CHOICES[choice],
                vl.lens_window(T, start, width))
ms = (time.perf_counter() - t0) * 1000

st.subheader("Residual stream norm")
st.caption("L2 norm of each position's vector, block by block: the input to each block (pre), after its "
           "attention (mid), its output (post), and what attention and the MLP each wrote.")
st.plotly_chart(view.norm, width="stretch", key="layers_norm_fig")

st.subheader("Logit lens")
st.caption("Each block's residual stream read out as if it were the last: through the final LayerNorm "
           "(with that residual's own statistics) and the unembedding. Cells show the top guess for the "
           "next token, colored by its probability; hover for the top 5. "
           f"Positions {start}…{start + width - 1} of {T}.")
st.plotly_chart(view.lens, width="stretch", key="layers_lens_fig")

st.subheader("Embeddings")
left, right = st.columns(2)
left.plotly_chart(view.embeddings, width="stretch", key="layers_pca_fig")
right.plotly_chart(view.positions, width="stretch", key="layers_pos_fig")
st.caption(f"computed in {ms:.0f} ms (trace + figures; the trace is cached per prompt)")
