"""Model page: the card of the model being inspected, and the ways to choose another one
(the bundled model, a run's latest / best / snapshot, a path, an upload).

Choosing happens in button callbacks, which run before the script, so the card below always shows
the model that is chosen now. A model that fails to load never replaces the current one: the
error is shown (st.error with the CheckpointError message) and everything keeps working.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import catalog, components, resources, state, uploads
from app.views.model_card import card_markdown, model_card
from gpt.checkpoint import CheckpointError

ERROR, NOTICE, PICK = "_model_page_error", "_model_page_notice", "_pick"
ss = st.session_state


# -- callbacks ---------------------------------------------------------------------------------------
def use(ref: str, what: str) -> bool:
    """Make `ref` the current model if it loads; else keep the old one and record the error."""
    try:
        loaded = resources.load_model(ref)
    except CheckpointError as e:
        ss[ERROR] = f"Could not load {what}: {e}"
        return False
    ss[state.MODEL_REF] = str(ref)
    ss.pop(resources.MODEL_ERROR, None)
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
    raw = (ss.get("_pick_path") or "").strip().strip('"')
    if not raw:
        ss[ERROR] = "Type the path of a checkpoint folder, a ckpt.pt or a Hugging Face folder."
        return
    use(str(Path(raw).expanduser()), raw)


def on_upload() -> None:
    files = ss.get("_pick_upload") or []
    try:
        path = uploads.save_upload([(f.name, f.getvalue()) for f in files])
    except (CheckpointError, OSError) as e:
        ss[ERROR] = f"Could not use the upload: {e}"
        return
    if not use(str(path), ", ".join(f.name for f in files)):
        uploads.discard_upload(path)


# -- sections ----------------------------------------------------------------------------------------
def card(loaded: resources.Loaded) -> None:
    c = model_card(loaded.config, loaded.tokenizer, loaded.meta,
                   loaded.model.get_num_params(non_embedding=False), label=loaded.label)
    st.subheader(loaded.label)
    m = st.columns(4)
    m[0].metric("Parameters", c["Parameters"].split(" ")[0])
    m[1].metric("Layers × heads", f"{loaded.config.n_layer} × {loaded.config.n_head}")
    m[2].metric("Iterations trained", c["Iterations trained"])
    m[3].metric("Val loss", c["Val loss"])
    with st.expander("Model card", expanded=True):
        st.markdown(card_markdown(c))


def from_runs() -> None:
    ref = components.picker(PICK, "source", help="latest: the last saved state; best: lowest val loss; "
                                                 "iter N: a snapshot kept along the way.")
    if not catalog.sources():
        st.caption("No bundled model and no runs yet: train one on the Train page, or load a path or an upload.")
    elif ref is not None:
        st.button("Inspect this checkpoint", key="_pick_go", on_click=on_pick, type="primary")


def from_path() -> None:
    st.text_input("Path on this machine", key="_pick_path",
                  placeholder="checkpoints/my-run, …/out/ckpt.pt, or a Hugging Face GPT-2 folder",
                  help="A nanolens checkpoint or run folder, a nanoGPT ckpt.pt (meta.pkl beside it "
                       "for character models), or a Hugging Face GPT-2 folder (config.json + weights).")
    st.button("Load this path", key="_pick_path_go", on_click=on_path)


def from_upload() -> None:
    st.file_uploader("Checkpoint files", accept_multiple_files=True, key="_pick_upload",
                     type=["zip", "safetensors", "json", "pt", "ckpt", "pkl"],
                     help=uploads.UPLOAD_HELP[0].upper() + uploads.UPLOAD_HELP[1:] + ".")
    st.caption(f"Uploads are kept under `{catalog.uploads_dir()}`. Nothing in a file is run as code.")
    st.button("Load the upload", key="_pick_upload_go", on_click=on_upload)


# -- the page ----------------------------------------------------------------------------------------
st.title("Model")
if msg := ss.pop(ERROR, None):
    st.error(msg)
if msg := ss.pop(NOTICE, None):
    st.success(msg)
loaded = resources.current_model()
if loaded is None:
    resources.show_no_model()
else:
    card(loaded)

st.subheader("Choose what to inspect")
tab_runs, tab_path, tab_upload = st.tabs(["Bundled model and runs", "Path", "Upload"])
with tab_runs:
    from_runs()
with tab_path:
    from_path()
with tab_upload:
    from_upload()
