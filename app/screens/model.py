"""Model page: the card of the model being inspected, and the ways to choose another one
(the bundled model, a run's latest / best / snapshot, a path, an upload).

Choosing happens in button callbacks, which run before the script, so the card below always shows
the model that is chosen now. A model that fails to load never replaces the current one: the
error is shown (st.error with the CheckpointError message) and everything keeps working.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import resources, state
from app.views.model_card import card_markdown, model_card
from gpt.checkpoint import CheckpointError, list_snapshots
from trainers.runs import list_runs

ERROR, NOTICE = "_model_page_error", "_model_page_notice"
BUNDLED = "(bundled model)"


def use(ref: str, what: str) -> bool:
    """Make `ref` the current model if it loads; else keep the old one and record the error."""
    try:
        loaded = resources.load_model(ref)
    except CheckpointError as e:
        st.session_state[ERROR] = f"Could not load {what}: {e}"
        return False
    st.session_state[state.MODEL_REF] = str(ref)
    st.session_state.pop(resources.MODEL_ERROR, None)
    st.session_state[NOTICE] = f"Now inspecting {loaded.label}."
    return True


def checkpoint_options(source: str) -> dict[str, str]:
    """{label: ref} of the checkpoints of a source (the bundled model, or a run name)."""
    if source == BUNDLED:
        b = state.bundled_path()
        return {"bundled": str(b)} if b else {}
    d = resources.checkpoints_root() / source
    out = {w: str(d if w == "latest" else d / w) for w in ("latest", "best")
           if (d / w / "config.json").is_file()}  # the run folder itself follows latest/
    out.update({f"iter {it}": str(p) for it, p in reversed(list_snapshots(d))})
    return out


def on_pick() -> None:
    source = st.session_state.get("_pick_source")
    which = st.session_state.get(f"_pick_ckpt_{source}")
    ref = checkpoint_options(source).get(which) if source else None
    if ref is None:
        st.session_state[ERROR] = f"{source} · {which} is gone; pick another checkpoint."
        return
    use(ref, f"{source} · {which}")


def on_path() -> None:
    raw = (st.session_state.get("_pick_path") or "").strip().strip('"')
    if not raw:
        st.session_state[ERROR] = "Type the path of a checkpoint folder, a ckpt.pt or a Hugging Face folder."
        return
    use(str(Path(raw).expanduser()), raw)


def on_upload() -> None:
    files = st.session_state.get("_pick_upload") or []
    try:
        path = resources.save_upload([(f.name, f.getvalue()) for f in files])
    except (CheckpointError, OSError) as e:
        st.session_state[ERROR] = f"Could not use the upload: {e}"
        return
    if not use(str(path), ", ".join(f.name for f in files)):
        resources.discard_upload(path)


# -- the card --------------------------------------------------------------------------------------
st.title("Model")
if msg := st.session_state.pop(ERROR, None):
    st.error(msg)
if msg := st.session_state.pop(NOTICE, None):
    st.success(msg)

loaded = resources.current_model()
if loaded is None:
    resources.show_no_model()
else:
    card = model_card(loaded.config, loaded.tokenizer, loaded.meta,
                      loaded.model.get_num_params(non_embedding=False), label=loaded.label)
    st.subheader(loaded.label)
    c = st.columns(4)
    c[0].metric("Parameters", card["Parameters"].split(" ")[0])
    c[1].metric("Layers × heads", f"{loaded.config.n_layer} × {loaded.config.n_head}")
    c[2].metric("Iterations trained", card["Iterations trained"])
    c[3].metric("Val loss", card["Val loss"])
    with st.expander("Model card", expanded=True):
        st.markdown(card_markdown(card))

# -- choosing ----------------------------------------------------------------------------------------
st.subheader("Choose what to inspect")
tab_runs, tab_path, tab_upload = st.tabs(["Bundled model and runs", "Path", "Upload"])

with tab_runs:
    sources = ([BUNDLED] if state.bundled_path() else []) + [r["name"] for r in list_runs()]
    if not sources:
        st.caption("No bundled model and no runs yet: train one on the Train page, or load a path or an upload.")
    else:
        left, right = st.columns(2)
        source = left.selectbox("Bundled model or run", sources, key="_pick_source")
        options = checkpoint_options(source)
        if not options:
            st.caption(f"{source} has no checkpoint yet (it writes one at its first evaluation).")
        else:
            right.selectbox("Checkpoint", list(options), key=f"_pick_ckpt_{source}",
                                    help="latest: the last saved state; best: lowest val loss; "
                                         "iter N: a snapshot kept along the way.")
            st.button("Inspect this checkpoint", key="_pick_go", on_click=on_pick, type="primary")

with tab_path:
    st.text_input("Path on this machine", key="_pick_path",
                  placeholder="checkpoints/my-run, …/out/ckpt.pt, or a Hugging Face GPT-2 folder",
                  help="A nanolens checkpoint or run folder, a nanoGPT ckpt.pt (meta.pkl beside it "
                       "for character models), or a Hugging Face GPT-2 folder (config.json + weights).")
    st.button("Load this path", key="_pick_path_go", on_click=on_path)

with tab_upload:
    st.file_uploader("Checkpoint files", accept_multiple_files=True, key="_pick_upload",
                     type=["zip", "safetensors", "json", "pt", "ckpt", "pkl"],
                     help=resources.UPLOAD_HELP[0].upper() + resources.UPLOAD_HELP[1:] + ".")
    st.caption(f"Uploads are kept under `{resources.uploads_dir()}`. Nothing in a file is run as code.")
    st.button("Load the upload", key="_pick_upload_go", on_click=on_upload)
