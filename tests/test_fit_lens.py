"""The tuned-lens fit (trainers.fit_lens, trainers.lens_runs): after fitting, the tuned lens's mean KL
on held-out windows (recomputed here by hand) is at most the logit lens's at every layer but the
last; a fit killed with kill -9 resumes from its last save to the same lens as an uninterrupted fit;
stop and resume; refusals; the shipped lenses of the bundled models. Every test kills and reaps the
processes it started."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import tuned_lens as tl
from gpt.analysis import lens_logits
from gpt.checkpoint import load
from gpt.record import Recorder
from tests.job_fixtures import wait_for
from trainers import lens_runs as lr
from trainers.fit_lens import LensFitError, lens_windows, main, run_fit
from trainers.runlock import RunLock

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda _m: None)
LONG = dict(steps=400, windows=32, eval_windows=8, batch=256)  # a fit that lasts a few seconds


@pytest.fixture
def run(job_run: Path) -> Path:
    """A private copy of the tiny run (conftest's job_run, which reaps its fit at teardown)."""
    return job_run


def hand_kl(model, lens, windows: torch.Tensor) -> list[float]:
    """Mean KL(final || lens) per row over every position of `windows`, one window at a time,
    the translator written out (h + A h + b) instead of calling TunedLens."""
    L = model.config.n_layer
    sums = [0.0] * (L + 1)
    for w in windows:
        rec = Recorder(tl.NEEDS)
        with torch.no_grad():
            model(w[None], rec=rec)
            rows = [rec["blocks.0.hook_resid_pre"][0]] + [rec[f"blocks.{i}.hook_resid_post"][0] for i in range(L)]
            final = torch.log_softmax(lens_logits(model, rows[L]).double(), -1)  # (T, V)
            for r in range(L + 1):
                h = rows[r] if lens is None or r == L else rows[r] + rows[r] @ lens.weight[r].T + lens.bias[r]
                logp = torch.log_softmax(lens_logits(model, h).double(), -1)
                sums[r] += float((final.exp() * (final - logp)).sum())
    n = windows.numel()
    return [s / n for s in sums]


def test_fit_beats_the_logit_lens_held_out(run):
    st = run_fit(run / "latest", **QUIET)
    assert st["state"] == "finished" and st["done"] == st["total"] == 250, st
    model, tok, _ = load(run / "latest")
    model.eval()
    lens = tl.load_lens(tl.lens_dir(run), model)
    assert tl.fits(lens, model) and lens.meta["checkpoint"] == "latest" and lens.meta["data"]
    _, held = lens_windows(lens.meta["data"], tok, 64, 16, 32, 0, lambda _m: None)  # the job's held-out windows
    logit, tuned = hand_kl(model, None, held), hand_kl(model, lens, held)
    L = model.config.n_layer
    for r in range(L):  # every layer but the last, which is the model itself for both
        assert tuned[r] <= logit[r], (r, tuned, logit)
    assert tuned[L] == logit[L] == pytest.approx(0.0, abs=1e-9)
    assert lens.meta["held_out"]["tuned"] == pytest.approx(tuned, abs=1e-4)
    assert lens.meta["held_out"]["logit"] == pytest.approx(logit, abs=1e-4)
    assert not (tl.lens_dir(run) / "state.safetensors").exists()  # the resumable state is dropped at the end
    # a second run finds it done, and says so
    again = run_fit(run / "latest", **QUIET)
    assert again["state"] == "finished" and "already fitted to latest" in again["message"]


def test_kill9_then_resume_equals_uninterrupted(run, tmp_path, tiny_checkpoint, started):
    ref_root = tmp_path / "ref"
    shutil.copytree(tiny_checkpoint.run_dir, ref_root / "tiny-run")
    assert run_fit(ref_root / "tiny-run" / "latest", **QUIET, save_every=5, **LONG)["state"] == "finished"
    ref = tl.load_lens(tl.lens_dir(ref_root / "tiny-run"))
    argv = [sys.executable, "-m", "trainers.fit_lens", "--run", "tiny-run", "--root", str(run.parent),
            "--threads", "1", "--save-every", "5"] + [f"--{k.replace('_', '-')}={v}" for k, v in LONG.items()]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started.append(proc.pid)
    state = tl.lens_dir(run) / "state.safetensors"
    wait_for(lambda: proc.poll() is not None or (tl.load_fit_state(state) or {}).get("step", 0) >= 20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    st = lr.lens_status(run / "latest")
    assert st["state"] == "interrupted" and "start it again to resume" in st["message"], st
    saved = tl.load_fit_state(state)["step"]
    assert 20 <= saved < 400
    lines: list[str] = []
    assert run_fit(run / "latest", log=lines.append, save_every=5)["state"] == "finished"  # settings from the state
    assert f"(step {saved} of 400)" in lines[0]
    got = tl.load_lens(tl.lens_dir(run))
    torch.testing.assert_close(got.weight, ref.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.bias, ref.bias, atol=1e-6, rtol=0)
    assert not list(tl.lens_dir(run).glob(".*.tmp"))


def test_app_start_stop_resume(run, started):
    ckpt = run / "latest"
    assert lr.lens_status(ckpt)["state"] == "none"
    st = lr.start_lens(ckpt, steps=400)
    started.append(st["pid"])
    wait_for(lambda: (s := lr.lens_status(ckpt))["state"] == "running" and s["done"] >= 5)
    with pytest.raises(ValueError, match="already running"):
        lr.start_lens(ckpt)
    st = lr.stop_lens(ckpt, wait=True)
    assert st["state"] == "stopped" and 5 <= st["done"] < 400 and st["resumable"], st
    assert "start it again to resume" in st["message"] and not (tl.lens_dir(run) / "STOP").exists()
    with pytest.raises(LensFitError, match="steps 400 .asked 10.*--fresh"):
        run_fit(ckpt, steps=10, **QUIET)
    st = lr.start_lens(ckpt)  # resumes with the saved settings
    started.append(st["pid"])
    st = wait_for(lambda: (s := lr.lens_status(ckpt))["state"] not in lr.LIVE and s)
    assert st["state"] == "finished" and st["done"] == 400, st
    assert "resumable" in st and not st["resumable"]
    # a snapshot of the same run: its own fit replaces the lens, said in the log
    lines: list[str] = []
    assert run_fit(run / "snapshots" / "iter_0000010", steps=5, log=lines.append)["state"] == "finished"
    assert tl.load_lens(tl.lens_dir(run)).meta["checkpoint"] == "snapshots/iter_0000010"


def test_refusals(run, tmp_path, capsys, tiny_checkpoint):
    tl.lens_dir(run).mkdir()
    lock = RunLock.acquire(tl.lens_dir(run))  # as a running fit holds it
    try:
        with pytest.raises(ValueError, match="already running"):
            lr.start_lens(run / "latest")
        with pytest.raises(LensFitError, match="already running"):
            run_fit(run / "latest", **QUIET)
    finally:
        lock.close()
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert main(["--run", "nope", "--root", str(run.parent), "--threads", "1"]) == 1
        assert "error: no run named 'nope'" in capsys.readouterr().err
        # a checkpoint in no run names no corpus: the user must pick one
        bare = tmp_path / "upload"
        shutil.copytree(run / "latest", bare)
        assert main(["--path", str(bare), "--threads", "1"]) == 1
        err = capsys.readouterr().err
        assert "names no corpus" in err and "pick one with --data" in err
        assert main(["--path", str(bare), "--threads", "1", "--data", str(tmp_path / "gone.txt")]) == 1
        assert "cannot be used" in capsys.readouterr().err
        assert lr.lens_status(bare)["state"] == "failed"
        text = tmp_path / "text.txt"  # the tiny run's own characters (python-docs has some it lacks)
        text.write_text(tiny_checkpoint.text[:200_000], encoding="utf-8")
        assert main(["--path", str(bare), "--threads", "1", "--data", str(text), "--steps", "3"]) == 0
        assert tl.load_lens(tl.lens_dir(bare)).meta["data"] == str(text)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        lr.lens_status(tmp_path / "missing")


@pytest.mark.parametrize("name", ["shakespeare-char", "shakespeare-induction"])
def test_bundled_models_ship_a_fitted_lens(name):
    run_dir = REPO / "checkpoints" / name
    if not run_dir.is_dir():
        pytest.skip(f"checkpoints/{name} is not in this checkout")
    model = load(run_dir)[0]
    lens = tl.load_lens(tl.lens_dir(run_dir), model)
    assert lens is not None, f"checkpoints/{name}/lens is missing: python -m trainers.fit_lens --run {name} --threads 1"
    assert tl.fits(lens, model) and lens.meta["checkpoint"] == "latest"
    ho = lens.meta["held_out"]
    assert all(t <= g for t, g in zip(ho["tuned"][:-1], ho["logit"][:-1])), ho
    assert not (tl.lens_dir(run_dir) / ".lock").exists() and not (tl.lens_dir(run_dir) / "state.safetensors").exists()
    assert lr.lens_status(run_dir / "latest")["state"] == "finished"
