"""Entry point of the inspector: `streamlit run app/main.py` (or `make run`) from the repo root.

It only routes: st.navigation over the page scripts in app/screens/ (a page is listed only when its
file exists, so later pages plug in without editing this file), plus the one element every page
shares, the current model in the sidebar. Session defaults come from app.state.init_state().
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `streamlit run app/main.py` puts app/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

HERE = Path(__file__).resolve().parent
# (file under app/, title, url_path, icon); the first is the default page
PAGES = [
    ("screens/model.py", "Model", "model", ":material/memory:"),
    ("screens/train.py", "Train", "train", ":material/model_training:"),
    ("screens/attention.py", "Attention", "attention", ":material/grid_on:"),
    ("screens/layers.py", "Layers", "layers", ":material/layers:"),
    ("screens/next_token.py", "Next token", "next-token", ":material/format_list_numbered:"),
    ("screens/generate.py", "Generate", "generate", ":material/edit_note:"),
    ("screens/timeline.py", "Timeline", "timeline", ":material/timeline:"),
    ("screens/walkthrough.py", "Walkthrough", "walkthrough", ":material/school:"),
]
SIDEBAR_KEY = "_sidebar_model"


def _choose_from_sidebar(key: str) -> None:
    """on_change of the sidebar selector: switch model only if the new one loads (else keep the old)."""
    from app import resources
    from gpt.checkpoint import CheckpointError

    ref = st.session_state[key]
    try:
        resources.load_model(ref)
    except CheckpointError as e:
        st.session_state[resources.MODEL_ERROR] = str(e)
        return
    st.session_state[state.MODEL_REF] = ref


def model_sidebar() -> None:
    """The current model on every page: a compact selector over the bundled model and the runs."""
    ref = st.session_state.get(state.MODEL_REF)
    if ref is None:  # a run may have produced its first checkpoint since the session began
        ref = st.session_state[state.MODEL_REF] = state.default_model_ref()
    try:
        choices = dict(state.model_choices(snapshots=False))
    except OSError as e:  # an unreadable checkpoints root must not take every page down
        st.sidebar.caption(f"Cannot list runs: {e}")
        choices = {}
    if ref is not None and ref not in choices:
        choices = {ref: state.describe_ref(ref), **choices}
    with st.sidebar:
        if not choices:
            st.caption("Model: none yet")
            return
        # keyed by the current ref: when another page changes the model, this widget starts afresh
        # on it instead of fighting over the value
        key = f"{SIDEBAR_KEY}:{ref}"
        refs = list(choices)
        st.selectbox("Model", refs, index=refs.index(ref) if ref in refs else 0, key=key,
                     format_func=lambda r: choices.get(r, r), on_change=_choose_from_sidebar, args=(key,),
                     help="The model every page inspects; the Model page offers snapshots, paths and uploads.")


st.set_page_config(page_title="nanolens", page_icon=":material/visibility:", layout="wide")
state.init_state()
pages = [st.Page(f, title=t, url_path=u, icon=i, default=(n == 0))
         for n, (f, t, u, i) in enumerate(p for p in PAGES if (HERE / p[0]).is_file())]
nav = st.navigation(pages)
model_sidebar()
nav.run()
