"""Session-state keys shared by every page, and their defaults.

Keys (all plain `st.session_state` entries; see KEYS):
  "model_ref"  str path of the chosen checkpoint (a run folder, a checkpoint folder, a ckpt.pt, ...)
               or None. Every page reads it through app.resources.current_model().
  "prompt"     str, shared across pages. Default: a Shakespeare line, or for BPE (gpt2) models
               "The quick brown fox" (see default_prompt / app.resources.current_model).
  "layer", "head"  int, the layer / head the pages look at (0 by default; app.inspection clamps).
  "gen"        dict, generation state of the Generate page ({} by default).
  "edit"       gpt.edit.Edits or None: the active intervention every inspector page runs under.

Widgets may bind to these keys (`st.text_area("Prompt", key="prompt")`, with no `value=`): init_state()
re-assigns every key on each run, which stops Streamlit from dropping a widget's value when the
user moves to a page that does not show that widget (Streamlit docs, "Widget behavior").
What can be inspected, and which model is the default, is app.catalog's business.
"""
from __future__ import annotations

from typing import Any

MODEL_REF, PROMPT, LAYER, HEAD, GEN, EDIT = "model_ref", "prompt", "layer", "head", "gen", "edit"
KEYS = (MODEL_REF, PROMPT, LAYER, HEAD, GEN, EDIT)
CHAR_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
BPE_PROMPT = "The quick brown fox"
DEFAULT_PROMPTS = (CHAR_PROMPT, BPE_PROMPT)


def default_prompt(tokenizer_kind: str | None = None) -> str:
    """The starting prompt for a model whose tokenizer is of `tokenizer_kind` ("char" | "gpt2")."""
    return BPE_PROMPT if tokenizer_kind == "gpt2" else CHAR_PROMPT


def init_state(state: Any = None) -> None:
    """Fill in missing keys with their defaults and keep the present ones (see module docstring).
    `state` defaults to st.session_state (a dict works too, for tests)."""
    if state is None:
        import streamlit as st

        state = st.session_state
    if MODEL_REF not in state:
        from app.catalog import default_ref

        state[MODEL_REF] = default_ref()
    defaults: dict[str, Any] = {PROMPT: CHAR_PROMPT, LAYER: 0, HEAD: 0, GEN: {}, EDIT: None}
    for k, v in defaults.items():
        if k not in state:
            state[k] = v
    for k in KEYS:  # re-assign: interrupts widget clean-up so shared keys survive page changes
        state[k] = state[k]
