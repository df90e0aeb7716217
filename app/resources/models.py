"""Models: the one cache of loaded checkpoints (keyed by app.tracecache.checkpoint_stamp), the
session's current model, and the guidance when there is none."""
from __future__ import annotations

import streamlit as st

from app import catalog, state
from app.inspection import Loaded
from app.tracecache import checkpoint_stamp
from gpt.checkpoint import CheckpointError, load

APP_DIR = catalog.REPO / "app"
MODEL_ERROR = "model_error"  # session_state: why the chosen model could not be loaded
NO_MODEL = "No model yet: train one or load one."


def _make_loaded(ref: str, stamp: str) -> Loaded:
    model, tok, meta = load(ref)
    return Loaded(model=model, tokenizer=tok, meta=meta, ref=ref, label=catalog.describe(ref),
                  config=model.config, stamp=stamp)


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _load_cached(ref: str, stamp: str) -> Loaded:
    return _make_loaded(ref, stamp)


def load_model(ref: str) -> Loaded:
    """The model at `ref` (anything gpt.checkpoint.load accepts), cached by (ref, checkpoint mtime).
    Raises CheckpointError naming the file and the problem; errors are not cached."""
    ref = str(ref)
    return _load_cached(ref, checkpoint_stamp(ref))


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
    want = state.default_prompt(loaded.tokenizer.kind)
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
