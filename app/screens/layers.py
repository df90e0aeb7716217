"""Layers page: the residual stream's norm through the layers, the logit lens beside the tuned lens
(or a panel to fit one) with their per-layer measures, and the embeddings.

The template for an inspector page: widgets and layout only. One call builds the Inspection (the
prompt box, the model, the cached recording of the names this page reads); one call turns it and
the page's own choices into figures (app.views.layers.build); the rest places them.
"""
from __future__ import annotations

import time

import streamlit as st

from app import components, resources
from app.lens_panel import lens_panel
from app.views import layers as vl
from app.views import lens as vlens

NORM_KEY, LENS_KEY = "layers_norm", "layers_lens_start"
ss = st.session_state


def lens_start(T: int, width: int, where: st.delta_generator.DeltaGenerator) -> int:
    """The first position of the logit-lens window (a slider once the prompt is wider than it)."""
    if T <= width:
        return 0
    if not 0 <= int(ss.get(LENS_KEY, 0)) <= T - width:  # a shorter prompt than before
        ss[LENS_KEY] = T - width
    return where.slider(f"Logit lens: first of {width} positions", 0, T - width, key=LENS_KEY)


st.title("Layers")
t0 = time.perf_counter()
insp = components.inspection(vl.NAMES)
c1, c2 = st.columns([3, 2])
choice = c1.radio("Residual-stream quantity", list(vl.NORM_CHOICES), key=NORM_KEY, horizontal=True)
width = min(vl.lens_width(insp.loaded.tokenizer.kind), insp.T)  # as many as can carry their text
start = lens_start(insp.T, width, c2)
view = vl.build(insp, vl.NORM_CHOICES[choice], vl.lens_window(insp.T, start, width),
                resources.model_views(insp.loaded), with_lens=False)

st.subheader("Residual stream norm")
st.caption("L2 norm of each position's vector, block by block: the input to each block (pre), after its "
           "attention (mid), its output (post), and what attention and the MLP each wrote.")
st.plotly_chart(view.norm, width="stretch", key="layers_norm_fig")
components.token_legend()

lstate = resources.lens_state(insp.loaded)
positions = vl.lens_window(insp.T, start, width)
two = lstate.lens is not None
lview = resources.lens_view(insp, lstate.lens, positions, vl.LENS_PLOT_PX / 2 if two else vl.LENS_PLOT_PX)
ms = (time.perf_counter() - t0) * 1000

st.subheader("Logit lens and tuned lens" if two else "Logit lens")
st.caption("Each block's residual stream read out as if it were the last: through the final LayerNorm "
           "(with that residual's own statistics) and the unembedding. Cells show the top guess for the "
           "next token (cut to fit: hover for the top 5 in full), colored by its probability; an outline "
           f"marks a guess that is the actual next token. Positions {start}…{start + width - 1} of {insp.T}."
           + (" The tuned lens first passes each residual through its layer's affine translator, fitted so "
              "the readout matches the model's final distribution (Belrose et al. 2023)." if two else ""))
if two:
    left, right = st.columns(2)
    left.plotly_chart(lview.logit, width="stretch", key="layers_lens_fig")
    right.plotly_chart(lview.tuned, width="stretch", key="layers_tuned_fig")
    st.caption(vlens.held_out_text(lstate.lens))
else:
    st.plotly_chart(lview.logit, width="stretch", key="layers_lens_fig")
st.caption(vl.lens_note(insp.model))
st.markdown("**Per layer: KL to the final distribution, rank of the final top-1 token, entropy**")
st.plotly_chart(lview.measures, width="stretch", key="layers_measures_fig")
if not two:
    if lstate.note:
        st.info(lstate.note)
    if lstate.checkpoint:
        lens_panel(lstate, key="layers_fit")

st.subheader("Embeddings")
left, right = st.columns(2)
left.plotly_chart(view.embeddings, width="stretch", key="layers_pca_fig")
right.plotly_chart(view.positions, width="stretch", key="layers_pos_fig")
st.caption(f"computed in {ms:.0f} ms (trace + figures; the trace is cached per prompt)")
components.export_bar("layers", insp)
