"""The Model page and the router (AppTest): no model -> guidance; a run -> its card; choosing a
snapshot, a path or an upload changes the card; a corrupt or hostile upload shows an error and the
previous model stays chosen; the chosen model is the same on every page."""
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


def app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
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
