"""The SAE job (trainers.train_sae) and its detached runner (trainers.sae_runs): a run from the CLI
writes the SAE, its metrics and its feature index; a job killed with SIGKILL resumes from its last
state and ends with one metrics row per step; stop; a second start is refused."""
from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from gpt.sae import load_sae
from gpt.sae_index import load_index, sae_path
from tests.job_fixtures import reap, wait_for
from trainers import sae_runs

HOOK = "blocks.1.hook_resid_post"
SMALL = dict(batch_tokens=256, eval_every=20, save_every=5, val_windows=4, index_windows=8, expansion=2, k=4)


@pytest.fixture
def run(job_run: Path) -> Path:
    """A private copy of the tiny run (conftest's job_run, which reaps its SAE jobs at teardown)."""
    return job_run


def _start(run: Path, pids: list[int], **settings) -> dict:
    st = sae_runs.start_sae(run, HOOK, **settings)
    pids.append(st["pid"])  # the child's (start_sae writes it), reaped in teardown
    return st


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (sae_path(run, HOOK) / "metrics.jsonl").read_text().splitlines()]


def test_cli_trains_and_writes_everything(run: Path, capsys) -> None:
    from trainers.train_sae import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert main(["--run", run.name, "--root", str(run.parent), "--hook", HOOK, "--steps", "40", "--threads", "1",
                 *flags]) == 0
    out = capsys.readouterr().out
    assert "finished: trained 40 steps" in out and "CE loss recovered" in out
    d = sae_path(run, HOOK)
    rows = _rows(run)
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(10, 41, 10))
    ev = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in ev] == [20, 40]
    assert all(0 <= r["dead"] <= 1 and r["l0"] <= 4 + 1e-6 for r in ev)
    assert ev[-1]["ce_zero"] > ev[-1]["ce_clean"]  # zeroing the stream hurts; the ratio is defined
    sae = load_sae(d, hook=HOOK)
    assert sae.cfg.n_latents == 128 and sae.meta["finished"] and sae.meta["checkpoint_sha256"]
    idx = load_index(d)
    assert idx is not None and idx.windows.shape == (8, 32) and idx.n_latents == 128
    assert json.loads((d / "status.json").read_text())["state"] == "finished"
    # a bad hook is refused with a message, nothing trained
    assert main(["--run", run.name, "--root", str(run.parent), "--hook", "blocks.9.hook_resid_post",
                 "--steps", "5"]) == 1
    assert "layers 0..1" in capsys.readouterr().err


def test_killed_job_resumes(run: Path, started: list[int]) -> None:
    _start(run, started, steps=400, **SMALL)
    d = sae_path(run, HOOK)
    wait_for(lambda: sae_runs.sae_status(run, HOOK)["step"] >= 30 and (d / "state.safetensors").is_file(),
             120, "30 steps and a saved state")
    pid = sae_runs.sae_status(run, HOOK)["pid"]
    os.kill(pid, signal.SIGKILL)
    reap([pid])
    wait_for(lambda: sae_runs.sae_status(run, HOOK)["state"] == "interrupted", 30, "'interrupted'")
    killed_at = sae_runs.sae_status(run, HOOK)["step"]
    assert killed_at < 400
    _start(run, started, steps=400, **SMALL)  # resumes
    with pytest.raises(ValueError, match="already training"):
        sae_runs.start_sae(run, HOOK, steps=400, **SMALL)
    wait_for(lambda: sae_runs.sae_status(run, HOOK)["state"] == "finished", 300, "the resumed job to finish")
    log = (d / "train_sae.log").read_text()
    assert "resuming at step" in log
    steps = [r["step"] for r in _rows(run) if r["kind"] == "train"]
    assert steps == list(range(10, 401, 10))  # rows after the lost state were dropped, then redone
    assert load_index(d) is not None


def test_stop_saves_and_says_stopped(run: Path, started: list[int]) -> None:
    _start(run, started, steps=100_000, **SMALL)
    wait_for(lambda: sae_runs.sae_status(run, HOOK)["step"] >= 10, 120, "10 steps")
    st = sae_runs.stop_sae(run, HOOK, wait=True, timeout=60)
    assert st["state"] == "stopped" and "start it again to resume" in st["message"]
    assert (sae_path(run, HOOK) / "state.safetensors").is_file()
    assert load_sae(sae_path(run, HOOK)).meta["finished"] is False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(started[0], 0)  # it exits on its own after saying "stopped"
