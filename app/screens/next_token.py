"""Next-token page: how surprised the model is by each token of the prompt, and its whole
next-token distribution at any position, at a chosen temperature.

Widgets and layout only; the figures come from app.views.tokens.build_next_token.
"""
from __future__ import annotations

import time

import streamlit as st

from app import components, resources
from app.views import tokens as vt

POS_KEY, TEMP_KEY, K_KEY = "nt_pos", "nt_temperature", "nt_k"
ss = st.session_state

st.title("Next token")
t0 = time.perf_counter()
insp = components.inspection(vt.NAMES)
T, labels = insp.T, insp.labels
if ss.get("_nt_ids") != hash(insp.ids) or not 0 <= int(ss.get(POS_KEY, -1)) < T:
    ss[POS_KEY] = T - 1  # a new prompt: start at its last position (what comes after the prompt)
    ss["_nt_ids"] = hash(insp.ids)

c1, c2, c3 = st.columns([2, 2, 1])
pos = c1.selectbox("Position", range(T), format_func=lambda i: f"after {labels[i]}", key=POS_KEY,
                   help="The distribution the model predicts for the token that follows this one.")
temperature = c2.slider("Temperature", 0.0, 2.0, 1.0, 0.05, key=TEMP_KEY,
                        help="Logits are divided by it before the softmax; 0 is greedy (all mass on the top token).")
k = c3.number_input("Top k shown", 3, 50, 10, key=K_KEY)
view = vt.build_next_token(insp, pos, temperature, int(k))
ms = (time.perf_counter() - t0) * 1000

st.subheader("How expected was each token?")
st.markdown(view.strip, unsafe_allow_html=True)
st.markdown(vt.surprise_legend_html(), unsafe_allow_html=True)
components.token_legend()
if view.mean_bits is not None:
    st.caption(f"Colors use the model's own probabilities (temperature 1). Mean surprise {view.mean_bits:.2f} bits "
               f"per token over {len(view.surprise_bits)} predictions; hover a token for its numbers.")

st.subheader(f"Next-token distribution after {labels[pos]}")
if insp.edit:  # original beside edited, and what the edit costs at each position
    orig = resources.trace(insp.loaded, insp.ids, vt.NAMES)  # the same prompt with no edit
    cmp = vt.build_edit_compare(orig["logits"], insp.rec["logits"], insp.ids, insp.strs, insp.token_str,
                                pos, temperature, int(k), labels)
    left, right = st.columns(2)
    left.plotly_chart(cmp.original, width="stretch", key="nt_orig_fig")
    right.plotly_chart(cmp.edited, width="stretch", key="nt_edit_fig")
    st.subheader("Δloss per position (edited − original)")
    st.plotly_chart(cmp.dloss_figure, width="stretch", key="nt_dloss_fig")
    st.caption("Above 0 (red): the edit made the actual next token less expected; below 0 (green): more.")
else:
    st.plotly_chart(view.distribution, width="stretch", key="nt_dist_fig")
components.export_bar("next_token", insp, pos=pos, temperature=temperature)
st.caption(f"computed in {ms:.0f} ms (trace + figures; the trace is cached per prompt)")
