"""trainers.runs: background runs as the app drives them (start, poll, stop, resume, kill -9,
re-attach, delete). Every test kills what it started in teardown."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from trainers import runs
from trainers.machine import default_threads
from trainers.data import SHARED_SHAKESPEARE

HAVE_SHAKESPEARE = SHARED_SHAKESPEARE.is_file()


@pytest.fixture
def root(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    root = tmp_path / "ckpts"
    yield root
    for d in root.glob("*"):  # kill anything still running, then reap it
        pid = (runs.read_json(d / "status.json") or {}).get("pid")
        if pid and runs.pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def wait_for(pred, timeout: float = 120.0, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {pred}")


def start(root: Path, **kw) -> str:
    cfg = dict(preset="tiny", data="python-docs", threads=1, max_iters=100, eval_iters=2, device="cpu")
    return runs.start({**cfg, **kw}, root=root)


def done(name: str, root: Path):
    st = runs.status(name, root)
    return st if st["state"] not in runs.LIVE_STATES else None


@pytest.mark.slow
@pytest.mark.parametrize("data", [
    pytest.param("shakespeare", marks=pytest.mark.skipif(
        not HAVE_SHAKESPEARE, reason="../shared/data/tinyshakespeare.txt absent: ran on python-docs")),
    pytest.param("python-docs", marks=pytest.mark.skipif(
        HAVE_SHAKESPEARE, reason="Tiny Shakespeare from ../shared is there: ran on it instead")),
])
def test_tiny_background_run(root, data):
    name = start(root, data=data, max_iters=120, eval_interval=40)
    assert name.startswith(f"tiny-{data}-")
    seen_live = []  # row counts seen while the status said running
    while True:  # the app's polling loop: rows must show up while the run goes
        rows = runs.read_metrics(root / name)
        st = runs.status(name, root)
        if rows and st["state"] == "running":
            seen_live.append(len(rows))
        if st["state"] not in runs.LIVE_STATES:
            break
        time.sleep(0.05)
    assert st["state"] == "finished", (st, (root / name / "train.log").read_text()[-2000:])
    rows = runs.read_metrics(root / name)
    assert seen_live and seen_live[0] < len(rows)  # partial metrics were readable mid-run
    evals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(evals) == 4 and evals[-1] < evals[0] - 0.5  # loss falls
    listed = {r["name"]: r for r in runs.list_runs(root)}
    assert listed[name]["state"] == "finished" and listed[name]["val_loss"] == pytest.approx(evals[-1])
    rc = runs.read_json(root / name / "config.json")
    assert rc["data"]["name"] == data and rc["train"]["threads"] == 1
    log = (root / name / "train.log").read_text()
    assert "device: cpu, 1 thread, bf16 off, compile off" in log
    # the checkpoint loads and generates: a few greedy tokens through forward
    model, tok, meta = ckpt.load(root / name)
    assert meta["iter"] == 120
    idx = torch.tensor([tok.encode("\n")])
    with torch.no_grad():
        for _ in range(20):
            logits, _ = model(idx[:, -model.config.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    text = tok.decode(idx[0].tolist())
    assert len(text) == 21 and tok.encode(text) == idx[0].tolist()
    # and it is the trained model: its loss on held-out text is far below the untrained one's
    from trainers.data import Corpus
    val = Corpus.load(data, tok, block_size=32).val[:33 * 8].long().view(8, 33)  # (B, T+1)
    with torch.no_grad():
        _, loss = model(val[:, :-1].contiguous(), val[:, 1:].contiguous())
    assert loss.item() < evals[0] - 0.5


@pytest.mark.slow
def test_stop_then_resume(root):
    name = start(root, name="s", max_iters=100000, eval_interval=20, log_interval=5)
    wait_for(lambda: len(runs.read_metrics(root / name)) >= 4)
    assert runs.status(name, root)["state"] == "running"
    with pytest.raises(ValueError, match="stop it before deleting"):
        runs.delete(name, root)
    with pytest.raises(ValueError, match="stop it before resuming"):
        runs.resume(name, root=root)
    with pytest.raises(ValueError, match="already exists"):
        start(root, name="s")
    assert runs.stop(name, root)["state"] in ("stopping", "stopped")  # returns at once
    st = runs.stop(name, root, wait=True)
    assert st["state"] == "stopped" and st["message"].startswith("stopped at iter")
    it = st["iter"]
    assert ckpt.load(root / name)[2]["iter"] == it  # latest saved on stop
    assert not (root / name / runs.STOP_FILE).exists()
    runs.resume(name, max_iters=it + 12, root=root)
    st = wait_for(lambda: done(name, root))
    assert st["state"] == "finished" and st["iter"] == it + 12
    log = (root / name / "train.log").read_text()
    assert f"resumed from iter {it} (optimizer state loaded)" in log
    opt = ckpt.load_optimizer_state(root / name)
    assert int(opt["state"][0]["step"]) == it + 12  # Adam's step count went on from the saved one
    runs.delete(name, root)
    assert not (root / name).exists()


@pytest.mark.slow
def test_kill9_then_resume(root):
    # a checkpoint every iteration: most of the run is spent writing latest/, so the kill
    # very likely lands mid-write, and the latest checkpoint must still load
    name = start(root, name="k", max_iters=100000, eval_interval=1, log_interval=1)
    wait_for(lambda: len(runs.read_metrics(root / name)) >= 20)
    pid = runs.status(name, root)["pid"]
    os.kill(pid, signal.SIGKILL)
    st = wait_for(lambda: done(name, root), timeout=30)
    assert st["state"] == "interrupted" and "resume" in st["message"]
    model, _, meta = ckpt.load(root / name)
    it = meta["iter"]
    assert it >= 5 and all(torch.isfinite(p).all() for p in model.parameters())
    assert ckpt.load_optimizer_state(root / name) is not None
    runs.resume(name, max_iters=it + 5, root=root)
    st = wait_for(lambda: done(name, root))
    assert st["state"] == "finished" and st["iter"] == it + 5, st
    assert f"resumed from iter {it} (optimizer state loaded)" in (root / name / "train.log").read_text()
    evals = [r["iter"] for r in runs.read_metrics(root / name) if "val_loss" in r]
    assert evals == sorted(set(evals)) and evals[-1] == it + 5


def test_reattach_marks_dead_process_interrupted(root):
    d = root / "ghost"
    d.mkdir(parents=True)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that is gone
    runs.write_json_atomic(d / "status.json", {"state": "running", "pid": p.pid, "iter": 7,
                                               "max_iters": 10, "updated_ts": time.time()})
    (d / runs.STOP_FILE).write_text("stale")
    before = (d / "status.json").read_bytes()
    st = runs.status("ghost", root)
    assert st["state"] == "interrupted" and "iter 7" in st["message"]
    # reading never writes: the next writer (resume) records it
    assert (d / "status.json").read_bytes() == before and (d / runs.STOP_FILE).exists()
    assert [r["state"] for r in runs.list_runs(root)] == ["interrupted"]
    with pytest.raises(ValueError, match="no latest/ checkpoint"):
        runs.resume("ghost", root=root)


def test_start_refuses_bad_input(root, tmp_path):
    with pytest.raises(ValueError, match="must not contain"):
        start(root, name="../x")
    with pytest.raises(ValueError, match="divisible"):
        start(root, n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="does not exist"):
        start(root, data=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unknown training settings"):
        start(root, learning_rat=1.0)
    assert not root.exists() or list(root.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        runs.status("nope", root)


def test_default_threads_leave_a_core():
    n = len(os.sched_getaffinity(0))
    assert default_threads() == max(1, n - 1)
    assert default_threads(world_size=2) == max(1, (n - 1) // 2)


@pytest.mark.slow
def test_recover_latest_after_kill_between_renames(root):
    """gpt.checkpoint.save swaps latest/ with two renames; a kill between them leaves only the
    hidden copy. recover_latest (run by resume) puts it back and clears leftovers."""
    from trainers.config import TrainConfig
    from trainers.trainer import Callbacks, Trainer

    cfg = TrainConfig.from_preset("tiny", data="python-docs", name="r", root=str(root), max_iters=4,
                                  eval_interval=2, eval_iters=1, threads=1, device="cpu")
    Trainer(cfg, callbacks=Callbacks(on_message=lambda m: None)).fit()
    d = root / "r"
    os.rename(d / "latest", d / ".latest.old-123-abcd")  # the complete copy, renamed aside
    (d / ".latest.tmp-9-ffff").mkdir()  # a half-written one: no config.json
    (d / "snapshots" / ".iter_0000004.tmp-9-ffff").mkdir()
    assert ckpt.load(d)[2]["iter"] == 4  # load already falls back (best/ is at iter 4 too)
    runs.recover_latest(d)
    assert ckpt.load(d / "latest")[2]["iter"] == 4
    assert [p.name for p in d.rglob(".*")] == [".lock"]  # the lock file stays (never deleted)
    name = runs.resume("r", max_iters=6, root=root)
    st = wait_for(lambda: done(name, root))
    assert st["state"] == "finished" and st["iter"] == 6


def test_exported_run_is_read_only(tiny_checkpoint, tmp_path):
    """A shipped run (trainers.export) loads in fp16 storage but can be neither resumed nor deleted."""
    from trainers.export import export_run
    root = tmp_path / "ship"
    out = export_run(tiny_checkpoint.run_dir, root / "shipped")
    assert out["checkpoints"] >= 3
    assert not (root / "shipped" / "latest" / "optimizer.pt").exists()
    model, _, meta = ckpt.load(root / "shipped")
    assert meta["iter"] == tiny_checkpoint.iters[-1]
    with pytest.raises(ValueError, match="read-only"):
        runs.delete("shipped", root=root)
    with pytest.raises(ValueError, match="read-only"):
        runs.resume("shipped", max_iters=10_000, root=root)
    assert (root / "shipped" / "latest" / "model.safetensors").is_file()  # nothing was lost
    with pytest.raises(ValueError, match="exists"):
        export_run(tiny_checkpoint.run_dir, root / "shipped")  # never overwritten silently


def test_export_keeps_only_the_snapshots_asked_for(tiny_checkpoint, tmp_path):
    """--snapshots ships a chosen subset of a densely snapshotted run; an iteration the run does not
    have is refused, naming the ones it has, before anything is written."""
    from trainers.export import export_run, main as export_main
    first, last = tiny_checkpoint.iters[0], tiny_checkpoint.iters[-1]
    out = export_run(tiny_checkpoint.run_dir, tmp_path / "some", keep=[first, last])
    assert [it for it, _ in ckpt.list_snapshots(tmp_path / "some")] == [first, last]
    assert out["checkpoints"] == 2 + sum(d.is_dir() for d in (ckpt.latest_dir(tmp_path / "some"),
                                                              ckpt.best_dir(tmp_path / "some")))
    has = list(tiny_checkpoint.iters)
    with pytest.raises(ValueError, match=re.escape(f"no snapshot at iter [7]; it has {has}")):
        export_run(tiny_checkpoint.run_dir, tmp_path / "none", keep=[first, 7])
    assert not (tmp_path / "none").exists()
    assert export_main([str(tiny_checkpoint.run_dir), str(tmp_path / "cli"), "--snapshots", f"{last}"]) == 0
    assert [it for it, _ in ckpt.list_snapshots(tmp_path / "cli")] == [last]


def test_bundled_run_is_read_only(tmp_path):
    import shutil
    bundled = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char"
    shutil.copytree(bundled, tmp_path / "shakespeare-char")  # a copy: a bug here must not delete the real one
    with pytest.raises(ValueError, match="read-only"):
        runs.delete("shakespeare-char", root=tmp_path)
    assert (tmp_path / "shakespeare-char" / "latest" / "model.safetensors").is_file()


def test_start_hands_the_child_only_the_run_folder(root, monkeypatch):
    """The app's start path never goes through argv: the child gets `--run <folder>`, and the
    folder's config.json holds the validated settings."""
    seen = []

    class FakeProc:
        pid = 4242

    def popen(cmd, **kw):
        seen.append(cmd)
        return FakeProc()

    monkeypatch.setattr(runs.subprocess, "Popen", popen)
    name = start(root, name="argv", max_iters=7, n_layer=3, learning_rate=5e-4)
    d = root / name
    assert seen == [[sys.executable, "-m", "trainers.train", "--run", str(d)]]
    rc = runs.read_json(d / "config.json")
    assert set(rc) == {"train", "created_at"}
    train = rc["train"]
    assert (train["max_iters"], train["n_layer"], train["learning_rate"]) == (7, 3, 5e-4)
    assert (train["name"], train["root"], train["threads"], train["data"]) == ("argv", str(root.resolve()), 1,
                                                                               "python-docs")
    from trainers.config import read_run_config
    assert read_run_config(d).to_dict() == train  # what the child will train, field for field
    assert runs.status(name, root)["pid"] == 4242
    # resume hands over the folder too, with the new target written into config.json
    runs.write_json_atomic(d / "status.json", {"state": "stopped", "iter": 5})
    ckpt.latest_dir(d).mkdir()
    runs.write_json_atomic(ckpt.latest_dir(d) / "config.json", {"meta": {"iter": 5}})
    runs.resume(name, max_iters=9, root=root)
    assert seen[-1] == [sys.executable, "-m", "trainers.train", "--run", str(d), "--resume"]
    assert runs.read_json(d / "config.json")["train"]["max_iters"] == 9


@pytest.mark.slow
def test_start_trains_from_config_json_through_the_process(root):
    name = start(root, name="cfg", max_iters=12, eval_interval=6, log_interval=3)
    d = root / name
    pid = runs.status(name, root)["pid"]
    # Popen returns once exec has begun (the close-on-exec pipe closed); the kernel fills in the
    # new program's arguments a moment later, and until then /proc/PID/cmdline reads empty
    cmdline = wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes(), timeout=10).split(b"\0")
    assert cmdline[1:] == [b"-m", b"trainers.train", b"--run", str(d).encode(), b""]  # no settings
    written = runs.read_json(d / "config.json")["train"]
    st = wait_for(lambda: done(name, root))
    assert st["state"] == "finished" and st["iter"] == 12, (d / "train.log").read_text()[-2000:]
    rc = runs.read_json(d / "config.json")
    assert rc["train"] == written  # trained as written, and completed by the trainer
    assert {"model", "data", "tokenizer", "created_at"} <= set(rc) and rc["model"]["n_layer"] == 2
    assert [it for it, _ in ckpt.list_snapshots(d)] == [0, 10, 12]
    assert all(ckpt.has_checkpoint(ckpt.snapshot_dir(d, it)) for it in (0, 10, 12))
    assert "device: cpu, 1 thread" in (d / "train.log").read_text()


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"model": {}}', 'expected a JSON object with a "train" object'),
    ('{"train": {"learning_rat": 1.0}}', r"unknown TrainConfig fields \['learning_rat'\]"),
    ('{"train": {"preset": "tiny", "n_embd": 64, "n_head": 3, "device": "cpu"}}', "divisible by n_head"),
    ('{"train": {"preset": "tiny", "max_iters": "ten", "device": "cpu"}}', "field 'max_iters' must be int, got 'ten'"),
    ('{"train": {"preset": "tiny", "max_iters": 0, "device": "cpu"}}', "--max-iters must be an integer >= 1"),
    (None, "cannot be read"),
])
def test_bad_config_json_in_run_dir_is_refused_clearly(tmp_path, capsys, content, match):
    """A launched run whose config.json is bad fails with the reason, named after the file, in
    stderr (train.log) and in status.json (what the app shows), before anything trains."""
    from trainers.train import main

    d = tmp_path / "bad"
    d.mkdir()
    if content is not None:
        (d / "config.json").write_text(content)
    runs.write_json_atomic(d / "status.json", {"state": "starting", "pid": None, "updated_ts": time.time()})
    assert main(["--run", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {d / 'config.json'}: ") and re.search(match, err), err
    st = runs.read_json(d / "status.json")
    assert st["state"] == "failed" and re.search(match, st["message"]) and st["pid"] == os.getpid()
    assert sorted(p.name for p in d.iterdir()) == sorted(["status.json"] + (["config.json"] if content else []))
