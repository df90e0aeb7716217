"""Models: the one cache of loaded checkpoints (keyed by app.tracecache.checkpoint_stamp, device,
dtype and a tokenizer chosen by hand), the session's current model and its device / dtype / tokenizer
choices, and the guidance when there is none.

Session-state keys kept here (plain entries, never widget keys, so they survive page changes):
  "model_device", "model_dtype"  the Model page's choice (default: gpt.devices.default_device(), fp32)
  "model_tokenizers"             {ref: (choice, text path or None)}: the tokenizer chosen for a
                                 character ckpt.pt without meta.pkl (gpt.imports.tokenizer_options)
"""
from __future__ import annotations

import os

import streamlit as st

from app import catalog, state
from app.inspection import Loaded
from app.tracecache import checkpoint_stamp
from gpt import devices
from gpt.checkpoint import CheckpointError, load
from gpt.imports import chosen_tokenizer

APP_DIR = catalog.REPO / "app"
MODEL_ERROR = "model_error"  # session_state: why the chosen model could not be loaded
NO_MODEL = "No model yet: train one or load one."
DEVICE, DTYPE, TOKENIZERS = "model_device", "model_dtype", "model_tokenizers"
CPU_HALF_ENV = "NANOLENS_CPU_HALF"  # "1": offer bf16 on the CPU too (tests of the half-precision paths)
TokSpec = tuple[str, str | None] | None  # (gpt.imports.tokenizer_options key, text path) or None


def allow_cpu_half() -> bool:
    """Whether bf16 is offered on the CPU ($NANOLENS_CPU_HALF=1; see gpt.devices.CPU_ONLY_FP32)."""
    return os.environ.get(CPU_HALF_ENV) == "1"


def model_choice() -> tuple[str, str]:
    """The session's (device, dtype): the Model page's choice where it is still on offer here, else
    (gpt.devices.default_device(), "fp32")."""
    try:
        dev, dt = st.session_state.get(DEVICE), st.session_state.get(DTYPE)
    except Exception:  # outside a Streamlit script (a thread, a test): the defaults
        dev = dt = None
    if dev not in devices.device_choices():
        dev = devices.default_device()
    if dt not in devices.dtype_choices(dev, allow_cpu_half()):
        dt = "fp32"
    return dev, dt


def tokenizer_spec(ref: str) -> TokSpec:
    """The tokenizer chosen by hand in this session for `ref`, or None."""
    try:
        spec = (st.session_state.get(TOKENIZERS) or {}).get(str(ref))
    except Exception:
        return None
    return tuple(spec) if spec else None  # type: ignore[return-value]


def _make_loaded(ref: str, stamp: str, device: str, dtype: str, tok: TokSpec) -> Loaded:
    tokenizer = chosen_tokenizer(tok[0], None, tok[1]) if tok else None
    model, tokenizer, meta = load(ref, device, devices.DTYPES[dtype], tokenizer=tokenizer,
                                  fits=lambda config, src: devices.require_fits(config, src, device, dtype))
    return Loaded(model=model, tokenizer=tokenizer, meta=meta, ref=ref, label=catalog.describe(ref),
                  config=model.config, stamp=f"{stamp}|{device}|{dtype}|{tok}", device=device, dtype=dtype)


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _load_cached(ref: str, stamp: str, device: str, dtype: str, tok: TokSpec) -> Loaded:
    return _make_loaded(ref, stamp, device, dtype, tok)


def load_model(ref: str, device: str | None = None, dtype: str | None = None, tok: TokSpec = None) -> Loaded:
    """The model at `ref` (anything gpt.checkpoint.load accepts) on `device` in `dtype` (None: the
    session's model_choice()), with the tokenizer `tok` (None: the one chosen for ref in this
    session, if any), cached by (ref, checkpoint mtime, device, dtype, tok). Raises CheckpointError
    naming the file and the problem (TooLargeError when it does not fit the device's free memory,
    MissingTokenizerError when a choice of tokenizer is needed); errors are not cached."""
    ref = str(ref)
    dev, dt = model_choice()
    return _load_cached(ref, checkpoint_stamp(ref), device or dev, dtype or dt, tok or tokenizer_spec(ref))


def current_model() -> Loaded | None:
    """The model chosen in this session (session_state["model_ref"]); when none is chosen yet, the
    default (catalog.default_ref). None when there is none or it failed to load; the reason is
    kept in session_state["model_error"] for show_no_model. A still-untouched default prompt is
    switched to the one that suits the model's tokenizer."""
    ss = st.session_state
    if state.MODEL_REF not in ss:
        state.init_state()
    if ss.get(state.MODEL_REF) is None:
        ss[state.MODEL_REF] = catalog.default_ref()
    ref = ss.get(state.MODEL_REF)
    if ref is None:
        return None
    try:
        loaded = load_model(ref)
    except CheckpointError as e:
        ss[MODEL_ERROR] = str(e)
        return None
    ss.pop(MODEL_ERROR, None)
    want = state.default_prompt("gpt2" if loaded.tokenizer.kind == "hf" else loaded.tokenizer.kind)
    if ss.get(state.PROMPT) in state.DEFAULT_PROMPTS and ss.get(state.PROMPT) != want:
        try:
            ss[state.PROMPT] = want
        except st.errors.StreamlitAPIException:  # the prompt widget is already on the page
            pass
    return loaded


def show_no_model() -> None:
    """The guidance shown when there is no model: why (if a load failed) and where to get one."""
    err = st.session_state.get(MODEL_ERROR)
    if err:
        st.error(f"The chosen model could not be loaded: {err}")
    st.info(NO_MODEL)
    for page, label, icon in (
            ("screens/train.py", "Train a model (the tiny preset takes under a minute)", "model_training"),
            ("screens/model.py", "Load a checkpoint: a run, a path or an upload", "folder_open")):
        if (APP_DIR / page).is_file():  # st.page_link refuses pages that are not registered
            st.page_link(page, label=label, icon=f":material/{icon}:")
    st.caption(f"The bundled model is looked for in `checkpoints/{catalog.BUNDLED_NAME}` "
               "(or set NANOLENS_BUNDLED to a checkpoint path).")


def require_model() -> Loaded:
    """The current model; if there is none, show the guidance and stop this page's script."""
    loaded = current_model()
    if loaded is None:
        show_no_model()
        st.stop()
    return loaded



def clear() -> None:
    _load_cached.clear()
