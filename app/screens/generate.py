"""Generate page: sample step by step with a KV cache, see the distribution each token was drawn
from and where the model looked, step back, or force another token. The "Steer" toggle swaps in the
steering panel (app/steering_panel.py): default and steered columns stepping together.

Widgets and layout only. The sequence and its Generator live in an app.generation.GenerationSession
(st.session_state["gen_live"], mirrored as a dict in ["gen"]); the buttons call it in callbacks,
which run before the script, so the page below always shows the new state. A click during a rerun
is safe: the session locks, and its callbacks never touch st.session_state (app/generation.py).
The export bar's tables and notebook come from app.export_generation.
"""
from __future__ import annotations

import time
from typing import Callable

import streamlit as st

from app import components, resources, state, steering_panel
from app.generation import KEEP_ATTENTION, GenerationSession, GenState, Settings
from app.inspection import Inspection
from app.views import generate as vg
from app.views.tokens import md_label

TOP_K_SHOWN = 10
NAMES = ("logits",)  # generation records one attention row per step itself; the prompt check needs a name
ss = st.session_state
session = GenerationSession(ss, state.GEN, top_k_shown=TOP_K_SHOWN)


def settings_box(vocab_size: int) -> Settings:
    with st.expander("Sampling settings", expanded=False):
        c = st.columns(4)
        temperature = c[0].slider("Temperature", 0.0, 2.0, 1.0, 0.05, key="gen_temperature",
                                  help="0 is greedy: always the most likely token.")
        top_k = c[1].number_input("Top k (0 = off)", 0, vocab_size, 0, key="gen_top_k",
                                  help="Draw only from the k most likely tokens.")
        top_p = c[2].slider("Top p (1 = off)", 0.05, 1.0, 1.0, 0.05, key="gen_top_p",
                            help="Draw only from the most likely tokens whose probabilities sum to p.")
        seed = c[3].number_input("Seed", 0, 2**31 - 1, 1337, key="gen_seed")
    return Settings(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed))


def last_step(view: vg.GenerateView, gs: GenState, token_str: Callable[[int], str]) -> None:
    last = gs.steps[-1]
    how = "forced" if last.forced else "drawn"
    st.subheader(f"Token {last.pos}: {token_str(last.token)!r} ({how}, p={last.prob:.3f})")
    left, right = st.columns([2, 3])
    with left:
        st.plotly_chart(view.distribution, width="stretch", key="gen_dist_fig")
        st.caption("Force another token instead of the last one:")
        cols = st.columns(3)
        for j, (tok_id, s, prob, _) in enumerate(a for a in view.alternatives if not a[3]):
            cols[j % 3].button(f"{md_label(s)} · {prob:.1%}", key=f"gen_force_{tok_id}", on_click=session.force,
                               args=(tok_id,), width="stretch")
    with right:
        if view.attention is not None:
            st.plotly_chart(view.attention, width="stretch", key="gen_att_fig")
            if last.cropped:
                st.caption(f"The context window slid: it starts at token {last.ctx_start}.")
        else:
            st.caption(f"Attention is kept for the last {KEEP_ATTENTION} steps only.")


st.title("Generate")
loaded = resources.require_model()
components.interventions.banner()  # the edit Generate steps under (ss["edit"] below)
p = components.prompt_box(loaded, NAMES)
settings = settings_box(loaded.config.vocab_size)
if st.toggle("Steer: a default and a steered column, side by side", key="gen_steer"):
    steering_panel.show(loaded, p.ids, settings, ss.get(state.EDIT))  # app/steering_panel.py
    st.stop()
gs = session.sync(loaded, p.ids, settings, ss.get(state.EDIT))

with st.container(horizontal=True):
    st.button("Step", key="gen_step", on_click=session.step, args=(1,), type="primary")
    st.button("Step ×10", key="gen_step10", on_click=session.step, args=(10,))
    st.button("Back", key="gen_back", on_click=session.back, disabled=gs.n_new == 0)
    st.button("Reset", key="gen_reset", on_click=session.reset, disabled=gs.n_new == 0)

t0 = time.perf_counter()
view = vg.build(gs, loaded.tokenizer.token_str)
ms = (time.perf_counter() - t0) * 1000
st.markdown(view.text, unsafe_allow_html=True)
components.token_legend()
timing = ""
if gs.ms:
    how = "window slid: full recompute" if gs.steps[-1].cropped else "KV cache"
    timing = f" · last step {gs.ms[-1]:.1f} ms ({how})"
st.caption(f"{gs.n_new} new tokens{timing} · figures in {ms:.0f} ms")
if gs.steps:
    last_step(view, gs, loaded.tokenizer.token_str)
else:
    st.info("Press Step to generate the next token.")
# the export replays this sequence: its tables are the steps above, its notebook recomputes them (teacher forcing)
components.export_bar("generate", Inspection.of(loaded, tuple(gs.ids), None, (), edit=ss.get(state.EDIT)),
                      loaded=loaded, state=gs, sampling=settings, k=TOP_K_SHOWN)
