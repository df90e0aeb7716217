"""The Walkthrough page's Generation tab (widgets and layout only): temperature, top-k and seed,
Next token / Back / Reset, and one turn of the sampling loop explained with the step's real numbers.

Generation is an app.generation.GenerationSession under session state "_wt_gen", as on the Generate
page; its buttons call it in callbacks. Texts and figures come from app.views.walkthrough.
"""
from __future__ import annotations

import streamlit as st

from app import components, state
from app.generation import GenerationSession, Settings
from app.inspection import Inspection
from app.views import walkthrough as vw


def show(insp: Inspection) -> None:
    """The tab for the page's Inspection (its model, edit and token strings; the prompt is re-read
    uncropped from session state, since the loop itself crops to block_size)."""
    ss = st.session_state
    session = GenerationSession(ss, "_wt_gen")  # in the script run: the constructor reads session state
    cfg, text = insp.config, ss.get(state.PROMPT) or ""
    full, err = vw.full_prompt(insp.loaded.tokenizer, text, bool(ss.get(components.DROP_KEY)))  # the loop crops it
    if err is not None:
        st.error(err)
        return
    c1, c2, c3 = st.columns(3)
    temp = c1.slider("temperature", 0.0, 2.0, 1.0, 0.05, key="wt_temp", help="0 = always the most likely token")
    top_k = c2.number_input("top-k (0 = off)", 0, cfg.vocab_size, 0, key="wt_topk")
    seed = c3.number_input("seed", 0, 2**31 - 1, 1337, key="wt_seed")
    gs = session.sync(insp.loaded, full, Settings(float(temp), int(top_k), 1.0, int(seed)), insp.edit)
    b1, b2, b3, _ = st.columns([1, 1, 1, 4])
    b1.button("Next token ▶", key="wt_next", type="primary", on_click=session.step)
    b2.button("Back", key="wt_back", disabled=gs.n_new == 0, on_click=session.back)
    b3.button("Reset", key="wt_reset", disabled=gs.n_new == 0, on_click=session.reset)
    st.markdown(vw.LOOP)
    last = session.last()
    if last is None:
        st.info(vw.loop_intro(len(gs.ids), cfg.block_size))
        st.markdown(vw.start_html(gs.ids, insp.token_str, cfg.block_size), unsafe_allow_html=True)
        return
    parts, table = vw.loop_steps(last[0], last[1], gs.ids, cfg, insp.token_str)
    for kind, body in parts:
        if kind == "figure":
            st.plotly_chart(body, key="wt_step")
        else:
            st.markdown(body, unsafe_allow_html=True)
    with st.expander("the numbers"):
        st.dataframe(table, hide_index=True)
    st.caption(f"this step took {gs.ms[-1]:.0f} ms · {gs.n_new} token(s) generated")
