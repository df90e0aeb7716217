"""The Layers page's tuned lens under AppTest, on the tiny run: without a lens, the logit lens, the
three-measure chart and the fit panel; Fit starts the detached job and, when it ends, the page shows
both lenses side by side with the held-out KL; a lens of another checkpoint is said, not shown; a
checkpoint with no corpus gets a corpus picker. Every test kills and reaps the fits it started."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gpt import tuned_lens as tl
from trainers import lens_runs as lr
from trainers.fit_lens import run_fit

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture
def root(app_root: Path):
    yield app_root
    status = tl.lens_dir(app_root / "tiny-run") / "status.json"
    pid = json.loads(status.read_text()).get("pid") if status.is_file() else None
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def open_layers(ref: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    if ref is not None:
        at.session_state["model_ref"] = ref
    at.switch_page("screens/layers.py")
    at.session_state["prompt"] = "To be, or not to be"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by title."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[spec["layout"].get("title", {}).get("text", "")] = spec
    return out


def test_fit_from_the_page_then_both_lenses(root: Path) -> None:
    at = open_layers()
    figs = figures(at)
    assert any(t.startswith("logit lens") for t in figs) and not any(t.startswith("tuned lens") for t in figs)
    measures = figs["per layer, mean over the prompt's positions"]
    assert [d["name"] for d in measures["data"]] == ["logit lens"] * 3
    assert [d["x"] for d in measures["data"]][0] == ["embed", "after block 0", "after block 1"]
    assert any(i.value.startswith("No tuned lens for this model yet") for i in at.info)
    at.button(key="layers_fit_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    ckpt = root / "tiny-run" / "latest"
    deadline = time.time() + 240
    while (st := lr.lens_status(ckpt))["state"] in lr.LIVE and time.time() < deadline:
        time.sleep(0.2)
    assert st["state"] == "finished", st
    at.run()
    assert not at.exception
    figs = figures(at)
    assert {"tuned lens: top next-token guess after each block"} <= set(figs)
    tuned = figs["tuned lens: top next-token guess after each block"]["data"][0]
    assert tuned["y"] == ["embed", "after block 0", "after block 1"] and len(tuned["x"]) == 19
    measures = figs["per layer, mean over the prompt's positions"]
    assert [d["name"] for d in measures["data"]] == ["logit lens", "tuned lens"] * 3
    # the final row is the model's own output for both lenses: KL 0, rank 1
    for d in measures["data"][:4]:
        assert d["y"][-1] == pytest.approx(0.0 if d["yaxis"] == "y" else 1.0, abs=1e-6)
    assert any("Held-out KL per layer, logit lens → tuned lens" in c.value for c in at.caption)
    assert at.get("subheader")[1].value == "Logit lens and tuned lens"
    assert not [b for b in at.button if b.key == "layers_fit_start"]  # no panel once the lens is there


def test_a_lens_of_another_checkpoint_is_said_not_shown(root: Path) -> None:
    run_fit(root / "tiny-run" / "snapshots" / "iter_0000010", steps=3, log=lambda _m: None)
    at = open_layers()
    assert not any(t.startswith("tuned lens") for t in figures(at))
    assert any("fitted to another checkpoint (snapshots/iter_0000010)" in i.value for i in at.info)
    assert at.button(key="layers_fit_start").label == "Fit tuned lens"


def test_a_checkpoint_without_a_corpus_gets_a_picker(root: Path) -> None:
    bare = root / "bare"
    shutil.copytree(root / "tiny-run" / "latest", bare)
    at = open_layers(str(bare))
    assert at.selectbox(key="layers_fit_corpus").options[-1] == "python-docs"
    assert lr.lens_status(bare)["state"] == "none"
