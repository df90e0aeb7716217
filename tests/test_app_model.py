"""The Model page and the router (AppTest): no model -> guidance; a run -> its card; choosing a
snapshot, a path or an upload changes the card; a corrupt or hostile upload shows an error and the
previous model stays chosen; the chosen model is the same on every page. The app opens on the Home
page (what nanolens is, the model in one line, where to start); the card is on the Model page."""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest


MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture
def root(app_root: Path) -> Path:
    """A private checkpoints root with a copy of the tiny run (see conftest.app_root)."""
    return app_root


def app(page: str | None = "screens/model.py") -> AppTest:
    """The app after its first run (the Home page), then switched to `page` (None: stay on Home)."""
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
    return at


def text_of(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "info", "error", "success", "caption", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def card_value(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_no_model_shows_guidance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    st.cache_resource.clear()
    at = app()
    assert any("No model yet: train one or load one" in i.value for i in at.info)
    assert not at.metric  # no card
    assert at.session_state["model_ref"] is None
    assert "Model: none yet" in text_of(at)  # the sidebar says so too


def test_run_card_and_snapshot_choice(root: Path) -> None:
    at = app()
    assert at.session_state["model_ref"] == str(root / "tiny-run")
    assert card_value(at, "Iterations trained") == "30"
    assert "tiny-run · latest" in text_of(at)
    ckpt = at.selectbox(key="_pick_ckpt_tiny-run")
    assert ckpt.options[:2] == ["latest", "best"] and "iter 10" in ckpt.options
    ckpt.set_value("iter 10")
    at.button(key="_pick_go").click()
    at.run()
    assert not at.exception and not at.error
    assert card_value(at, "Iterations trained") == "10"
    assert at.session_state["model_ref"] == str(root / "tiny-run" / "snapshots" / "iter_0000010")
    assert "Now inspecting tiny-run · iter 10" in text_of(at)
    # the sidebar shows the chosen model on every page
    assert at.sidebar.selectbox[0].format_func(at.sidebar.selectbox[0].value) == "tiny-run · iter 10"


def test_model_stays_chosen_on_other_pages(root: Path) -> None:
    at = app()
    at.text_input(key="_pick_path").input(str(root / "tiny-run" / "best"))
    at.button(key="_pick_path_go").click()
    at.run()
    chosen = at.session_state["model_ref"]
    assert chosen == str(root / "tiny-run" / "best")
    at.switch_page("screens/train.py")
    at.run()
    assert not at.exception
    assert at.session_state["model_ref"] == chosen
    at.switch_page("screens/model.py")
    at.run()
    assert at.session_state["model_ref"] == chosen and "tiny-run · best" in text_of(at)


def test_sidebar_switches_model(root: Path) -> None:
    at = app()
    box = at.sidebar.selectbox[0]
    assert box.value == str(root / "tiny-run")
    box.set_value(str(root / "tiny-run" / "best"))
    at.run()
    assert at.session_state["model_ref"] == str(root / "tiny-run" / "best")
    assert "tiny-run · best" in text_of(at)


def test_bad_path_keeps_previous_model(root: Path) -> None:
    at = app()
    before = at.session_state["model_ref"]
    at.text_input(key="_pick_path").input(str(root / "does-not-exist"))
    at.button(key="_pick_path_go").click()
    at.run()
    assert not at.exception
    assert any("no such file" in e.value for e in at.error)
    assert at.session_state["model_ref"] == before and card_value(at, "Iterations trained") == "30"


def _zip_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in folder.iterdir():
            zf.write(p, f"{folder.name}/{p.name}")
    return buf.getvalue()


def test_upload_zip_becomes_the_model(root: Path) -> None:
    at = app()
    at.file_uploader(key="_pick_upload").set_value(
        ("snap.zip", _zip_of(root / "tiny-run" / "snapshots" / "iter_0000010"), "application/zip"))
    at.button(key="_pick_upload_go").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert card_value(at, "Iterations trained") == "10"
    assert "/.uploads/" in at.session_state["model_ref"]


class Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/nanolens-test-pwned"),))


@pytest.mark.parametrize("files", [
    [("ckpt.pt", b"\x80\x02 this is not a checkpoint", "application/octet-stream")],
    [("ckpt.pt", pickle.dumps({"model": Evil(), "model_args": {}}, protocol=2), "application/octet-stream")],
    [("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}", "application/octet-stream"),
     ("config.json", b'{"format": "nanolens", "version": 1}', "application/json")],
    [("evil.zip", b"PK\x05\x06" + b"\x00" * 18, "application/zip")],
])
def test_corrupt_or_hostile_upload_shows_error_and_keeps_model(root: Path, files) -> None:
    Path("/tmp/nanolens-test-pwned").unlink(missing_ok=True)
    at = app()
    before = at.session_state["model_ref"]
    at.file_uploader(key="_pick_upload").set_value(files)
    at.button(key="_pick_upload_go").click()
    at.run()
    assert not at.exception
    assert at.error and at.error[0].value.startswith("Could not"), [e.value for e in at.error]
    assert at.session_state["model_ref"] == before
    assert card_value(at, "Iterations trained") == "30"  # the previous model is still shown
    assert not Path("/tmp/nanolens-test-pwned").exists()
    uploads = root / ".uploads"
    assert not uploads.exists() or not any(uploads.iterdir())  # the refused files are gone
    # and the app keeps working: another choice still loads
    at.button(key="_pick_go").click()
    at.run()
    assert not at.exception and not at.error


def test_bundled_model_is_the_default(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_BUNDLED", str(root / "tiny-run" / "snapshots" / "iter_0000010"))
    at = app()
    assert card_value(at, "Iterations trained") == "10"
    assert "bundled · iter_0000010" in text_of(at)
    assert at.selectbox(key="_pick_source").options[0] == "(bundled model)"



# -- the Home page (the default) ---------------------------------------------------------------------
def _nanogpt_params(m: dict) -> int:
    """Parameters of a nanoGPT with biases and tied embeddings, counted from its config alone."""
    V, B, C, L = m["vocab_size"], m["block_size"], m["n_embd"], m["n_layer"]
    block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    return V * C + B * C + L * block + 2 * C


def _links(at: AppTest) -> dict[str, str]:
    return {p.proto.label: p.proto.page for p in at.page_link}


def test_home_is_the_default_page(root: Path) -> None:
    import json

    at = app(page=None)
    assert at.title[0].value == "nanolens"
    assert not at.metric and not at.main.expander  # the model card stays on the Model page
    saved = json.loads((root / "tiny-run" / "latest" / "config.json").read_text())
    m, meta = saved["model"], saved["meta"]
    line = next(md.value for md in at.markdown if md.value.startswith("Inspecting "))
    assert line == (f"Inspecting **tiny-run · latest**: {m['n_layer']} layers × {m['n_head']} heads, "
                    f"{_nanogpt_params(m) / 1e3:.2f}K parameters, char tokenizer ({m['vocab_size']} tokens), "
                    f"{meta['iter']} iterations trained, val loss {meta['val_loss']:.4f}.")
    links = _links(at)
    assert links.pop("Choose another model") == "model"
    assert list(links)[:3] == ["Walkthrough", "Train", "Attention"]
    assert links["Timeline"] == "timeline"
    for page, label in (("patch", "Patch"), ("attribution", "Attribution")):  # only once they exist
        assert (label in links) == (Path(MAIN).parent / "screens" / f"{page}.py").is_file()


def test_home_without_a_model_says_where_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    st.cache_resource.clear()
    at = app(page=None)
    assert any("No model yet: train one or load one" in i.value for i in at.info)
    assert not any(md.value.startswith("Inspecting ") for md in at.markdown)
    assert {"train", "model", "walkthrough", "attention"} <= set(_links(at).values())


# -- loading and uploading: what the page says (issues 12 and 13) -----------------------------------
def _nanogpt(root: Path, dataset: str | None = "shakespeare_char") -> tuple[bytes, bytes]:
    """(ckpt.pt, meta.pkl) as nanoGPT writes them, for the tiny run's best/ weights."""
    import torch

    from gpt.checkpoint import load

    model, tok, _ = load(root / "tiny-run" / "best")
    c = model.config
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "iter_num": 30, "config": {"dataset": dataset},
                "model_args": dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                                   block_size=c.block_size, bias=c.bias, vocab_size=c.vocab_size,
                                   dropout=c.dropout)}, buf)
    meta = {"vocab_size": tok.vocab_size, "itos": dict(enumerate(tok.chars)),
            "stoi": {ch: i for i, ch in enumerate(tok.chars)}}
    return buf.getvalue(), pickle.dumps(meta)


def _upload(at: AppTest, files: list) -> AppTest:
    if files:
        at.file_uploader(key="_pick_upload").set_value(files)
    at.button(key="_pick_upload_go").click()
    at.run()
    assert not at.exception, at.exception
    return at


def _no_uploads_left(root: Path) -> bool:
    uploads = root / ".uploads"
    return not uploads.exists() or not any(uploads.iterdir())


def test_nanogpt_out_dir_loads_by_path(root: Path, tmp_path: Path) -> None:
    """Issue 12, 2: nanoGPT's own layout (out-x/ckpt.pt, data/<dataset>/meta.pkl in the repo) loads,
    and the card says where the vocabulary was found."""
    ckpt, meta = _nanogpt(root)
    repo = tmp_path / "nanoGPT"
    (repo / "out-x").mkdir(parents=True)
    (repo / "out-x" / "ckpt.pt").write_bytes(ckpt)
    (repo / "data" / "shakespeare_char").mkdir(parents=True)
    (repo / "data" / "shakespeare_char" / "meta.pkl").write_bytes(meta)
    at = app()
    at.text_input(key="_pick_path").input(str(repo / "out-x"))
    at.button(key="_pick_path_go").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["model_ref"] == str(repo / "out-x")
    where = repo / "data" / "shakespeare_char" / "meta.pkl"
    assert any(f"meta.pkl found at {where}" in i.value for i in at.info)


def test_upload_without_meta_pkl_asks_for_it(root: Path) -> None:
    ckpt, _ = _nanogpt(root)
    at = _upload(app(), [("ckpt.pt", ckpt, "application/octet-stream")])
    msg = at.error[0].value
    assert "upload meta.pkl together with it" in msg and "data/shakespeare_char/meta.pkl" in msg
    assert ".uploads" not in msg and "copy" not in msg
    assert _no_uploads_left(root)


def test_empty_upload_says_it_is_empty(root: Path) -> None:
    at = _upload(app(), [("model.pt", b"", "application/octet-stream")])
    assert at.error[0].value == "Could not load the upload: model.pt: empty (0 bytes)"
    assert _no_uploads_left(root)


def test_upload_is_labelled_by_its_file_names(root: Path) -> None:
    ckpt, meta = _nanogpt(root)
    at = _upload(app(), [("shakespeare.pt", ckpt, "application/octet-stream"),
                         ("meta.pkl", meta, "application/octet-stream")])
    assert not at.error, [e.value for e in at.error]
    assert "Now inspecting upload · shakespeare.pt + meta.pkl." in text_of(at)
    assert at.subheader[0].value == "upload · shakespeare.pt + meta.pkl"


def test_absurd_upload_is_refused_and_discarded(root: Path) -> None:
    """Issue 13, 6: a 1 KB config claiming 10000 layers, uploaded with real weights."""
    import json

    src = root / "tiny-run" / "best"
    info = json.loads((src / "config.json").read_text())
    info["model"]["n_layer"] = 10_000
    at = _upload(app(), [("model.safetensors", (src / "model.safetensors").read_bytes(), "application/octet-stream"),
                         ("config.json", json.dumps(info).encode(), "application/json")])
    msg = at.error[0].value
    assert msg.startswith("Could not load the upload: model.safetensors: the config describes") and ".uploads" not in msg
    assert card_value(at, "Iterations trained") == "30" and _no_uploads_left(root)


def test_load_without_a_file_names_the_upload_limit(root: Path) -> None:
    """Issue 13, 7: a file over the limit never arrives; the message names the 50 MB limit."""
    at = _upload(app(), [])
    assert "at most 50 MB" in at.error[0].value and "Path tab" in at.error[0].value
    assert any("at most 50 MB" in c.value for c in at.caption)


def test_run_caught_mid_swap_says_so(root: Path) -> None:
    """Issue 13, 4: latest/ renamed aside by a save: the card is still the latest (iter 30), and says
    it was read from the hidden copy, not silently best/."""
    import os

    run = root / "tiny-run"
    os.rename(run / "latest", run / ".latest.old-1-abcdef12")
    at = app()
    assert at.subheader[0].value == "tiny-run · latest" and card_value(at, "Iterations trained") == "30"
    assert any("latest/ is being replaced" in i.value for i in at.info)


def test_run_without_latest_is_labelled_best(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "tiny-run" / "latest")
    at = app()
    assert at.subheader[0].value == "tiny-run · best (no latest/)"
    assert any("no complete latest/; showing best/" in i.value for i in at.info)


@pytest.mark.parametrize("data, says", [(b"", "empty (0 bytes)"),
                                        (b"garbage " * 50, "not a PyTorch zip or pickle file")])
def test_bad_file_by_path_says_what_it_is_once(root: Path, tmp_path: Path, data: bytes, says: str) -> None:
    """Issue 12, 3: no Python internals, and the path appears once."""
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(data)
    at = app()
    at.text_input(key="_pick_path").input(str(bad))
    at.button(key="_pick_path_go").click()
    at.run()
    msg = at.error[0].value
    assert msg.startswith(f"Could not load that path: {bad}: {says}") and msg.count(str(bad)) == 1
    assert not any(w in msg for w in ("EOFError", "IndexError", "Unpickling", "Traceback"))


# -- device, dtype, memory and a tokenizer chosen by hand (issue 17) ---------------------------------
def test_device_line_and_dtype_choice(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The line under the card says where the model runs and what it needs; choosing bf16 (offered on
    this CPU only for tests, NANOLENS_CPU_HALF=1) loads it in bf16, and the inspector pages run on it."""
    from gpt import devices

    monkeypatch.setenv("NANOLENS_CPU_HALF", "1")
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    at = app()
    line = next(m.value for m in at.markdown if m.value.startswith("**device:"))
    assert line.startswith("**device: cpu, fp32** · needs weights") and "GiB free there" in line
    assert at.selectbox(key="_device_pick").options == ["cpu"]
    assert at.selectbox(key="_dtype_pick").options == ["fp32", "bf16"]
    assert at.button(key="_device_go").disabled  # the choice is the model's already
    at.selectbox(key="_dtype_pick").set_value("bf16")
    at.run()
    assert any("(bf16)" in c.value for c in at.caption)  # the estimate for the picked dtype
    at.button(key="_device_go").click()
    at.run()
    assert not at.exception and [s.value for s in at.success] == ["Now on device: cpu, bf16."]
    assert any(m.value.startswith("**device: cpu, bf16**") for m in at.markdown)
    assert (at.session_state["model_device"], at.session_state["model_dtype"]) == ("cpu", "bf16")
    at.switch_page("screens/attention.py")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def test_too_large_choice_and_path_are_refused(root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a memory limit below what the model needs the picker warns before loading, applying it
    keeps the current model, and a path too large is refused with the numbers."""
    from gpt import devices
    from gpt.checkpoint import load, save

    monkeypatch.setenv("NANOLENS_CPU_HALF", "1")
    at = app()
    monkeypatch.setenv(devices.LIMIT_ENV, "1000")
    at.selectbox(key="_dtype_pick").set_value("bf16")
    at.run()
    assert any("This model does not fit" in w.value for w in at.warning)
    at.button(key="_device_go").click()
    at.run()
    assert any(e.value.startswith("Kept device: cpu, fp32:") and "does not fit" in e.value for e in at.error)
    assert "model_dtype" not in at.session_state  # nothing was chosen: the default stays
    model, tok, _ = load(root / "tiny-run")
    other = save(tmp_path / "other", model, tok)
    at.text_input(key="_pick_path").input(str(other))
    at.button(key="_pick_path_go").click()
    at.run()
    assert any("does not fit" in e.value and "free" in e.value and "MiB" in e.value for e in at.error)
    assert at.session_state["model_ref"] != str(other)


def test_ckpt_without_meta_pkl_offers_a_tokenizer(root: Path, tmp_path: Path, tiny_checkpoint) -> None:
    """A ckpt.pt by path with no meta.pkl anywhere: the page says why a choice is needed, offers the
    tokenizers that fit, and loads with the one chosen (a text file's characters, here the run's own)."""
    ckpt, _ = _nanogpt(root)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ckpt.pt").write_bytes(ckpt)
    (tmp_path / "text.txt").write_text(tiny_checkpoint.text, encoding="utf-8")
    at = app()
    at.text_input(key="_pick_path").input(str(tmp_path / "out" / "ckpt.pt"))
    at.button(key="_pick_path_go").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from gpt.checkpoint import load

    vocab = load(root / "tiny-run")[0].config.vocab_size  # 65 on Tiny Shakespeare, more on python-docs (CI)
    assert any(f"has no meta.pkl, so the order of its {vocab} characters is unknown" in w.value for w in at.warning)
    assert any("a text file" in o for o in at.radio(key="_tok_pick").options)
    at.radio(key="_tok_pick").set_value("text")
    at.run()
    at.text_input(key="_tok_path").input(str(tmp_path / "text.txt"))
    at.button(key="_tok_go").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["model_ref"] == str(tmp_path / "out" / "ckpt.pt")
    assert any("chosen by hand" in i.value for i in at.info)
    assert card_value(at, "Iterations trained") == "30"
