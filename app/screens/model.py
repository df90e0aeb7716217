"""Model page: the card of the model being inspected, its device and dtype (app.model_options), and
the ways to choose another (bundled, a run's latest / best / snapshot, a path, an upload). Choosing
happens in callbacks, before the script, so the card shows the model chosen now; one that fails to
load never replaces it (st.error says why; a ckpt.pt without meta.pkl is offered a tokenizer). The
open tab ("_pick_tab") survives every rerun and shows what the choice did; Enter in the path box loads.
"""
from __future__ import annotations

import streamlit as st

from app import catalog, components, model_options, resources, state, uploads
from app.views import model_card as vm
from gpt.checkpoint import CheckpointError
from gpt.imports import MissingTokenizerError

ERROR, NOTICE, PICK = "_model_page_error", "_model_page_notice", "_pick"
TAB_KEY, TABS = "_pick_tab", ["Bundled model and runs", "Path", "Upload"]
ss = st.session_state


# -- callbacks ---------------------------------------------------------------------------------------
def use(ref: str, what: str, upload: bool = False) -> bool:
    """Make `ref` the current model if it loads; else keep the old one and record the error (an
    upload's in the user's file names, without the internal path)."""
    try:
        loaded = resources.load_model(ref)
    except CheckpointError as e:
        if isinstance(e, MissingTokenizerError) and not upload:  # (a failed upload is discarded)
            model_options.ask_tokenizer(ref, what, e)  # the Path tab asks which tokenizer to use
            return False
        ss[ERROR] = f"Could not load {what}: {uploads.explain(ref, e) if upload else e}"
        return False
    ss[state.MODEL_REF] = str(ref)
    ss.pop(resources.MODEL_ERROR, None)
    ss.pop(model_options.PENDING, None)
    ss[NOTICE] = f"Now inspecting {loaded.label}."
    return True


def on_pick() -> None:
    source = ss.get(f"{PICK}_source")
    which = ss.get(f"{PICK}_ckpt_{source}")
    ref = next((e.ref for e in catalog.checkpoints(source) if e.which == which), None) if source else None
    if ref is None:
        ss[ERROR] = f"{source} · {which} is gone; pick another checkpoint."
        return
    use(ref, f"{source} · {which}")


def on_path() -> None:
    if (path := vm.typed_path(ss.get("_pick_path"))) is None:
        ss[ERROR] = vm.NO_PATH
        return
    use(path, "that path")  # (the error names the path itself)


def on_upload() -> None:
    files = [(f.name, f.getvalue()) for f in ss.get("_pick_upload") or []]
    if err := uploads.try_upload(files, lambda path: use(path, "the upload", upload=True)):
        ss[ERROR] = f"Could not use the upload: {err}"


# -- sections ----------------------------------------------------------------------------------------
def card(loaded: resources.Loaded) -> None:
    c = vm.model_card(loaded.config, loaded.tokenizer, loaded.meta,
                      loaded.model.get_num_params(non_embedding=False), label=loaded.label)
    st.subheader(loaded.label)
    if note := loaded.meta.get("load_note"):  # a fallback or recovery, or where meta.pkl was found
        st.info(note)
    components.metric_row(vm.card_metrics(c, loaded.config))
    with st.expander("Model card", expanded=True):
        st.markdown(vm.card_markdown(c))


def from_runs() -> None:
    ref = components.picker(PICK, "source", help=vm.SOURCE_HELP)
    if not catalog.sources():
        st.caption("No bundled model and no runs yet: train one on the Train page, or load a path or an upload.")
    elif ref is not None:
        st.button("Inspect this checkpoint", key="_pick_go", on_click=on_pick, type="primary")


def from_path() -> None:
    with st.form("_pick_path_form", border=False):  # a form: Enter in the box loads, as the button does
        st.text_input("Path on this machine", key="_pick_path", placeholder=vm.PATH_PLACEHOLDER, help=vm.PATH_HELP)
        st.form_submit_button("Load this path", key="_pick_path_go", on_click=on_path)
    model_options.tokenizer_choice(use)  # only while a ckpt.pt without meta.pkl waits for one


def from_upload() -> None:
    st.file_uploader("Checkpoint files", accept_multiple_files=True, key="_pick_upload",
                     type=["zip", "safetensors", "json", "pt", "ckpt", "pkl"],
                     help=vm.upload_help(uploads.UPLOAD_HELP))
    st.caption(vm.upload_note(uploads.UPLOAD_LIMIT_MB, catalog.uploads_dir(), uploads.KEEP_UPLOADS))
    st.button("Load the upload", key="_pick_upload_go", on_click=on_upload)


def messages() -> None:
    """What the last choice did (its error, or the model now inspected), shown once."""
    if msg := ss.pop(ERROR, None):
        st.error(msg)
    if msg := ss.pop(NOTICE, None):
        st.success(msg)


# -- the page ----------------------------------------------------------------------------------------
st.title("Model")
loaded = resources.current_model()
if loaded is None:
    resources.show_no_model()
else:
    card(loaded)
model_options.device_panel(loaded)

st.subheader("Choose what to inspect")
# Plain st.tabs jump back to the first tab whenever the elements above them change; keyed tabs that
# track their state keep the open one. Every tab still renders, so all widgets exist on every run.
# The message goes in the open tab, under the button that caused it, where the user is looking.
for tab, section in zip(st.tabs(TABS, key=TAB_KEY, on_change="rerun"), (from_runs, from_path, from_upload)):
    with tab:
        section()
        if tab.open:
            messages()
