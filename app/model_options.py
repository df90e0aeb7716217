"""The Model page's loading options, as widgets: the device and dtype the model runs in, with the
memory line (what its weights and a trace need against the device's free memory), and the choice of
tokenizer for a character nanoGPT ckpt.pt that came without its meta.pkl.

The decisions are gpt.devices' (what is offered, what fits) and gpt.imports' (what can stand in for
meta.pkl); the session's choices live in app.resources.models' keys (model_device, model_dtype,
model_tokenizers) and every load goes through app.resources.load_model. A choice takes effect only
once the model loads with it: a refusal (too large, a bad text file) keeps the model that was there.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

from app import resources, state
from app.resources import models as rm
from app.views import model_card as vm
from gpt import devices
from gpt.checkpoint import CheckpointError
from gpt.imports import MissingTokenizerError, chosen_tokenizer, missing_meta_reason, tokenizer_options

PICK_DEVICE, PICK_DTYPE, APPLY = "_device_pick", "_dtype_pick", "_device_go"
PENDING, TOK_PICK, TOK_PATH, TOK_GO = "_tok_pending", "_tok_pick", "_tok_path", "_tok_go"
MSG, TOK_MSG = "_device_msg", "_tok_msg"  # (level, text) of the last choice, shown once under it
ss = st.session_state


# -- device and dtype --------------------------------------------------------------------------------
def _apply_device() -> None:
    """Callback: load the current model on the picked device and dtype; keep them only if it loads."""
    dev, dt = ss.get(PICK_DEVICE), ss.get(PICK_DTYPE)
    ref = ss.get(state.MODEL_REF)
    try:
        if ref is not None:
            resources.load_model(ref, dev, dt)
    except CheckpointError as e:
        ss[MSG] = ("error", f"Kept {devices.describe(*rm.model_choice())}: {e}")
        return
    ss[rm.DEVICE], ss[rm.DTYPE] = dev, dt
    ss[MSG] = ("success", f"Now on {devices.describe(dev, dt)}.")


def device_panel(loaded: resources.Loaded | None) -> None:
    """The line "device: cuda (NVIDIA H200), bf16" with what the model needs and the free memory,
    then the device and dtype pickers (on their own keys, so leaving the page keeps the choice)."""
    dev, dt = rm.model_choice()
    if loaded is not None:
        est = devices.estimate(loaded.config, loaded.dtype, loaded.device)
        st.markdown(vm.device_line(devices.describe(loaded.device, loaded.dtype), est.words(),
                                   devices.gib(devices.free_bytes(loaded.device))))
    with st.expander("Device and dtype"):
        if ss.get(PICK_DEVICE) not in devices.device_choices():
            ss[PICK_DEVICE] = dev
        pick_dev = st.selectbox("Device", devices.device_choices(), key=PICK_DEVICE, help=vm.DEVICE_HELP)
        offered = devices.dtype_choices(pick_dev, rm.allow_cpu_half())
        if ss.get(PICK_DTYPE) not in offered:
            ss[PICK_DTYPE] = dt if dt in offered else offered[0]
        pick_dt = st.selectbox("Dtype", offered, key=PICK_DTYPE, help=vm.DTYPE_HELP)
        if offered == ["fp32"]:
            st.caption(vm.cpu_only_fp32(devices.CPU_ONLY_FP32))
        if loaded is not None:
            est = devices.estimate(loaded.config, pick_dt, pick_dev)
            st.caption(vm.estimate_line(est.words()))
            if (why := devices.check_fits(est)) is not None:
                st.warning(why)
        st.button("Use this device and dtype", key=APPLY, on_click=_apply_device,
                  disabled=loaded is not None and (pick_dev, pick_dt) == (loaded.device, loaded.dtype))
        if msg := ss.pop(MSG, None):
            getattr(st, msg[0])(msg[1])


# -- a tokenizer for a ckpt.pt without meta.pkl --------------------------------------------------------
def ask_tokenizer(ref: str, what: str, error: MissingTokenizerError) -> None:
    """Remember that `ref` needs a tokenizer chosen by hand (tokenizer_choice then asks)."""
    ss[PENDING] = {"ref": str(ref), "what": what, "vocab": error.vocab_size, "reason": missing_meta_reason(error),
                   "error": str(error)}


def _use_tokenizer(use: Callable[[str, str], bool]) -> None:
    """Callback: check the chosen tokenizer, keep it for the ref, and load with it through `use`."""
    p = ss.get(PENDING)
    if not p:
        return
    choice = ss.get(TOK_PICK)
    path = vm.typed_path(ss.get(TOK_PATH)) if choice == "text" else None
    try:
        chosen_tokenizer(choice, p["vocab"], path)
    except CheckpointError as e:
        ss[TOK_MSG] = ("error", str(e))
        return
    ss[rm.TOKENIZERS] = {**(ss.get(rm.TOKENIZERS) or {}), p["ref"]: (choice, path)}
    if use(p["ref"], p["what"]):
        ss.pop(PENDING, None)


def tokenizer_choice(use: Callable[[str, str], bool]) -> None:
    """While a ckpt.pt without meta.pkl waits for a tokenizer: the reason, the choices that fit its
    vocabulary (a text file's path when that is chosen) and a button that loads it with the choice."""
    p = ss.get(PENDING)
    if not p:
        return
    st.warning(p["reason"])
    st.caption(p["error"])
    options = tokenizer_options(p["vocab"])
    if ss.get(TOK_PICK) not in options:
        ss[TOK_PICK] = next(iter(options))
    choice = st.radio("Tokenizer", list(options), format_func=options.get, key=TOK_PICK)
    if choice == "text":
        st.text_input("Text file (UTF-8) whose characters are the vocabulary", key=TOK_PATH)
    st.button("Load with this tokenizer", key=TOK_GO, on_click=_use_tokenizer, args=(use,), type="primary")
    if msg := ss.pop(TOK_MSG, None):
        getattr(st, msg[0])(msg[1])
