"""Entry point of the inspector: `streamlit run app/main.py` (or `make run`) from the repo root.

It only routes: st.navigation over the page scripts in app/screens/ (a page is listed only when its
file exists, so later pages plug in without editing this file), plus the one element every page
shares, the current model in the sidebar (components.picker). Session defaults come from
app.state.init_state(); a deep link's parameters (app.deeplink) are applied before any page runs,
and the URL and the sidebar's "Link to this view" follow the view after it ran.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `streamlit run app/main.py` puts app/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from app import catalog, components, deeplink, interventions, state  # noqa: E402

HERE = Path(__file__).resolve().parent
# (file under app/, title, url_path, icon); the first is the default page. Material icons are drawn
# with the font Streamlit ships (no request leaves the machine); the browser-tab icon is a file, since
# Streamlit fetches a ":material/...:" page_icon from Google's font CDN (tests/e2e/test_offline.py).
PAGES = [
    ("screens/home.py", "Home", "home", ":material/home:"),
    ("screens/walkthrough.py", "Walkthrough", "walkthrough", ":material/school:"),
    ("screens/model.py", "Model", "model", ":material/memory:"),
    ("screens/train.py", "Train", "train", ":material/model_training:"),
    ("screens/attention.py", "Attention", "attention", ":material/grid_on:"),
    ("screens/layers.py", "Layers", "layers", ":material/layers:"),
    ("screens/next_token.py", "Next token", "next-token", ":material/format_list_numbered:"),
    ("screens/generate.py", "Generate", "generate", ":material/edit_note:"),
    ("screens/timeline.py", "Timeline", "timeline", ":material/timeline:"),
    ("screens/compare.py", "Compare", "compare", ":material/compare_arrows:"),
    ("screens/patch.py", "Patch", "patch", ":material/build:"),
    ("screens/attribution.py", "Attribution", "attribution", ":material/account_tree:"),
    ("screens/features.py", "Features", "features", ":material/scatter_plot:"),
]
ICON = HERE / "static" / "nanolens.png"  # the browser tab's icon, served by this app
SIDEBAR_KEY = "_sidebar_model"


def _choose(ref: str) -> None:
    """The sidebar's on_change: switch model only if the new one loads (else keep the old)."""
    from app import resources
    from gpt.checkpoint import CheckpointError

    try:
        resources.load_model(ref)
    except CheckpointError as e:
        st.session_state[resources.MODEL_ERROR] = str(e)
        return
    st.session_state[state.MODEL_REF] = ref


def model_sidebar() -> None:
    """The current model on every page: the compact picker over the bundled model and the runs."""
    try:
        ref = st.session_state.get(state.MODEL_REF)
        if ref is None:  # a run may have produced its first checkpoint since the session began
            ref = st.session_state[state.MODEL_REF] = catalog.default_ref()
        with st.sidebar:
            chosen = components.picker(SIDEBAR_KEY, "checkpoint", current=ref, on_change=_choose,
                                       help="The model every page inspects; the Model page offers "
                                            "snapshots, paths and uploads.")
    except (OSError, ValueError, RecursionError) as e:  # an unreadable checkpoints root, or a file
        st.sidebar.caption(f"Cannot list runs: {e}")  # in a run folder, must not take every page down
        return
    if chosen is None:
        st.sidebar.caption("Model: none yet")


def page_list() -> list[st.Page]:
    """The st.Page of every page file present. The default page is served at / (its own url_path
    would answer "Page not found"), so it is registered twice: visible at /, and hidden at its own
    path (/home), which is where links to it and deep links point."""
    present = [p for p in PAGES if (HERE / p[0]).is_file()]
    out = [st.Page(f, title=t, url_path=u, icon=i) for f, t, u, i in present[1:]]
    if present:
        f, t, u, i = present[0]
        out = [st.Page(f, title=t, url_path=DEFAULT_ALIAS, icon=i, default=True), *out,
               st.Page(f, title=t, url_path=u, icon=i, visibility="hidden")]
    return out


DEFAULT_ALIAS = "index"  # the default page's internal name (served at /, never linked)
st.set_page_config(page_title="nanolens", page_icon=str(ICON), layout="wide")
state.init_state()
notes = deeplink.apply(st.query_params, st.session_state)  # before any widget reads the state
nav = st.navigation(page_list())
model_sidebar()
interventions.panel()
for note in notes:
    st.warning(note, icon=":material/link_off:")
link_box = st.sidebar.empty()
try:
    nav.run()
finally:  # also after st.stop / st.rerun: the URL and the link follow what the page settled on
    components.copy_link(link_box, nav.url_path or PAGES[0][2], [u for _, _, u, _ in PAGES])
