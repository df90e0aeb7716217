"""trainers/runlock.py: one writer per run folder. A held lock refuses every other writer (the CLI,
the trainer, runs.start/resume/delete) before it writes anything; two CLI starts with one --name,
an app start against a CLI run, and two Resumes at once each end with exactly one writer, and the
loser is told the truth. Every test kills what it started in teardown."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trainers import runfolder, runlock, runs
from trainers.config import TrainConfig
from trainers.trainer import Callbacks, Trainer

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--data", "python-docs", "--threads", "1", "--device", "cpu", "--eval-iters", "2"]
CLI = [sys.executable, "-m", "trainers.train"]


@pytest.fixture
def root(tmp_path: Path, tmp_path_factory, monkeypatch) -> Path:
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    r = tmp_path / "ckpts"
    r.mkdir()
    yield r
    for d in r.glob("*"):  # kill any trainer still running, then reap it
        pid = (runfolder.read_json(d / "status.json") or {}).get("pid")
        if isinstance(pid, int) and runs.pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        if isinstance(pid, int):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run's lock (as a trainer would), until killed."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code, str(run_dir / runlock.LOCK_FILE)], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"held\n"
    return p


def cfg(root: Path, name: str, **kw) -> TrainConfig:
    base = dict(data="python-docs", name=name, root=str(root), max_iters=4, eval_interval=2, eval_iters=1,
                threads=1, device="cpu", snapshots=False)
    return TrainConfig.from_preset("tiny", **{**base, **kw})


def test_a_held_lock_refuses_every_other_writer(root: Path, capsys) -> None:
    from trainers.train import main
    d = root / "busy"
    d.mkdir()
    status = {"state": "stopped", "pid": None, "iter": 0, "message": "stopped"}
    runfolder.write_json_atomic(d / "status.json", status)
    p = holder(d)
    try:
        files = sorted(x.name for x in d.iterdir())
        assert runlock.lock_held(d) is True and runs.status("busy", root)["state"] == "stopped"
        with pytest.raises(runlock.RunBusy, match="being written by another process"):
            Trainer(cfg(root, "busy"), callbacks=Callbacks(on_message=lambda m: None)).fit()
        assert main(FLAGS + ["--root", str(root), "--name", "busy", "--max-iters", "2"]) == 2
        assert "being written by another process" in capsys.readouterr().err
        with pytest.raises(ValueError, match="is already running"):
            runs.resume("busy", max_iters=10, root=root)
        with pytest.raises(ValueError, match="still being written by its process"):
            runs.delete("busy", root)
        assert sorted(x.name for x in d.iterdir()) == files  # nothing was written
        assert runfolder.read_json(d / "status.json") == status
        # a live state with the lock held is live, whatever its pid says
        runfolder.write_json_atomic(d / "status.json", dict(status, state="running", pid=999_999))
        assert runs.status("busy", root)["state"] == "running"
    finally:
        p.kill()
        p.wait()
    st = runs.status("busy", root)  # the holder is gone: nobody writes it any more
    assert st["state"] == "interrupted" and runlock.lock_held(d) is False
    runs.delete("busy", root)
    assert not d.exists()


def test_a_lock_handed_to_a_child_is_never_free_in_between(root: Path) -> None:
    """runs.start and runs.resume keep the lock from before their first write; the child adopts
    the very same lock through $NANOLENS_RUN_LOCK_FD, so no second writer fits in between."""
    d = root / "handed"
    d.mkdir()
    lock = runlock.RunLock.acquire(d)
    code = ("import os, sys, time; from trainers.runlock import RunLock; "
            "l = RunLock.acquire(sys.argv[1], wait_s=0); print('adopted', l.fd, flush=True); time.sleep(60)")
    env = dict(os.environ, **{runlock.LOCK_ENV: str(lock.fd)})
    p = subprocess.Popen([sys.executable, "-c", code, str(d)], cwd=REPO, env=env, pass_fds=(lock.fd,),
                         stdout=subprocess.PIPE)
    try:
        lock.close()
        assert p.stdout.readline().startswith(b"adopted")
        assert runlock.lock_held(d) is True
        with pytest.raises(runlock.RunBusy):
            runlock.RunLock.acquire(d, wait_s=0.2)
    finally:
        p.kill()
        p.wait()
    runlock.RunLock.acquire(d, wait_s=0).close()  # free once the child is gone


def finished_run(root: Path, name: str) -> Path:
    Trainer(cfg(root, name, log_interval=1), callbacks=Callbacks(on_message=lambda m: None)).fit()
    return root / name


def iters_logged(d: Path) -> list[int]:
    return [r["iter"] for r in runs.read_metrics(d) if "train_loss" in r]


@pytest.mark.slow
def test_two_cli_starts_with_one_name_give_one_writer(root: Path) -> None:
    argv = CLI + FLAGS + ["--root", str(root), "--name", "twin", "--max-iters", "60", "--eval-interval", "20",
                  "--log-interval", "5"]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    err = next(e for p, (_o, e) in zip(procs, outs) if p.returncode == 2)
    assert any(s in err for s in ("being written by another process", "already exists", "trained already")), err
    assert "Traceback" not in err
    it = iters_logged(root / "twin")
    assert it == sorted(set(it)) and it[-1] == 55  # one writer: no duplicated or interleaved rows
    assert runs.status("twin", root)["state"] == "finished"


@pytest.mark.slow
def test_an_app_start_is_refused_while_a_cli_run_holds_the_name(root: Path) -> None:
    argv = CLI + FLAGS + ["--root", str(root), "--name", "taken", "--max-iters", "100000", "--eval-interval", "50"]
    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while runlock.lock_held(root / "taken") is not True:  # claimed before its data is even read
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
            time.sleep(0.05)
        with pytest.raises(ValueError, match="already exists"):
            runs.start({"preset": "tiny", "data": "python-docs", "name": "taken", "threads": 1,
                        "device": "cpu"}, root=root)
    finally:
        p.send_signal(signal.SIGTERM)  # a graceful stop
        p.communicate(timeout=120)
    assert runs.status("taken", root)["state"] == "stopped"


@pytest.mark.slow
def test_two_resumes_at_once_start_one_run_and_tell_the_other_the_truth(root: Path) -> None:
    d = finished_run(root, "again")
    results: list[object] = [None, None]
    gate = threading.Barrier(2)

    def press(i: int) -> None:
        gate.wait()
        try:
            results[i] = runs.resume("again", max_iters=40, root=root)
        except ValueError as e:
            results[i] = e

    threads = [threading.Thread(target=press, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(type, results), key=str) == sorted([str, ValueError], key=str), results
    assert "is already running" in str(next(r for r in results if isinstance(r, ValueError)))
    deadline = time.monotonic() + 180
    while runs.status("again", root)["state"] in runs.LIVE_STATES:
        assert time.monotonic() < deadline, (d / "train.log").read_text()[-2000:]
        time.sleep(0.1)
    assert runs.status("again", root)["state"] == "finished"
    log = (d / "train.log").read_text()
    assert log.count("resumed from iter 4") == 1 and "refused" not in log
    it = iters_logged(d)
    assert it == sorted(set(it)) and it[-1] == 39
    # and two CLI --resume at once: one continues, the other is refused before touching the folder
    argv = CLI + ["--root", str(root), "--resume", "--name", "again", "--max-iters", "60"]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], outs
    it = iters_logged(d)
    assert it == sorted(set(it)) and it[-1] == 59


def test_delete_refused_while_a_job_writes_inside_the_run(root: Path) -> None:
    """A run whose analysis job (or any job with its own lock inside the run) is live cannot be
    deleted; once that job is gone, it can."""
    d = root / "analysed"
    (d / "analysis").mkdir(parents=True)
    runfolder.write_json_atomic(d / "status.json", {"state": "done", "pid": None, "iter": 4, "message": "done"})
    p = holder(d / "analysis")
    try:
        with pytest.raises(ValueError, match="job still writing analysis/"):
            runs.delete("analysed", root)
        assert (d / "status.json").is_file()  # nothing was removed
    finally:
        p.kill()
        p.wait()
    runs.delete("analysed", root)
    assert not d.exists()
