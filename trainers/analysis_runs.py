"""The analysis job as the app drives it: start it detached, stop it, read its state.

start_analysis launches `python -m trainers.analyze --run NAME --root ROOT` in its own session
(it outlives the app), logging to <run>/analysis/analyze.log. It takes analysis/.lock first and
hands it to the child (trainers.runlock, as runs.start does for training), so a second start is
refused with the truth while the first goes on; the lock is the analysis's own, so a run can be
trained and analysed at once. stop_analysis writes analysis/STOP; the job stops after its current
chunk of windows and says "stopped". analysis_status only reads (never writes, never creates the
lock file). Nothing here imports torch or Streamlit.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpt.layout import analysis_dir, list_snapshots
from trainers.runfolder import is_count, is_number, pid_alive, read_json, write_json_atomic
from trainers.runlock import LOCK_ENV, RunBusy, RunLock, lock_held
from trainers.runs import REPO_ROOT, run_path

STATUS, STOP_FILE, LOG = "status.json", "STOP", "analyze.log"  # (trainers.analyze writes the same names)
STATES = ("running", "finished", "stopped", "failed")  # what status.json may say
LIVE = ("starting", "running", "stopping")


def _run_dir(run: str, root: str | os.PathLike | None) -> Path:
    d = run_path(run, root)  # ValueError: a bad name
    if not d.is_dir():
        raise FileNotFoundError(f"no run named {run!r} in {d.parent}")
    return d


def _done(d: Path, iters: list[int]) -> int:
    names = set(os.listdir(analysis_dir(d))) if analysis_dir(d).is_dir() else set()
    return sum(f"iter_{it:07d}.json" in names for it in iters)


def analysis_status(run: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The analysis of run `run`: {"state", "pid", "done", "total", "message", "updated_ts",
    "path"}. state: "none" (never started), a status.json state ("running", "finished",
    "stopped", "failed"), "stopping" (STOP asked, not yet seen), or "interrupted" (status says
    running but no process holds analysis/.lock: killed; start again to resume). When nothing
    runs, done/total count the result files against the run's snapshots now (a run trained on
    after its analysis shows what is left). Never writes. FileNotFoundError: no such run."""
    d = _run_dir(run, root)
    adir = analysis_dir(d)
    iters = [it for it, _ in list_snapshots(d)]
    st = read_json(adir / STATUS)
    out: dict[str, Any] = {"path": str(d), "pid": None, "updated_ts": None}
    if st is None or st.get("state") not in STATES:
        done = _done(d, iters)
        word = "not analysed yet" if not done else f"{done} of {len(iters)} snapshots analysed"
        return dict(out, state="none", done=done, total=len(iters),
                    message=f"{word}: {len(iters)} snapshot{'s' * (len(iters) != 1)} to score" if iters
                    else "no snapshots to analyse")
    out.update(state=st["state"], pid=st.get("pid") if is_count(st.get("pid"), 1) else None,
               message=str(st.get("message", ""))[:2000],
               updated_ts=st.get("updated_ts") if is_number(st.get("updated_ts")) else None)
    held = lock_held(adir)
    if st["state"] == "running":
        alive = held if held is not None else pid_alive(out["pid"])
        done = st.get("done") if is_count(st.get("done")) else _done(d, iters)
        total = st.get("total") if is_count(st.get("total")) else len(iters)
        if not alive:
            done = _done(d, iters)
            return dict(out, state="interrupted", done=done, total=len(iters), pid=None,
                        message=f"the analysis process ({out['pid']}) is gone (killed or crashed: see "
                                f"analysis/{LOG}) at {done}/{len(iters)} snapshots; start it again to resume")
        if (adir / STOP_FILE).exists():
            return dict(out, state="stopping", done=done, total=total, message="stop requested")
        return dict(out, done=done, total=total)
    done = _done(d, iters)
    if st["state"] == "finished" and done < len(iters):
        out["message"] = (f"{len(iters) - done} snapshot{'s' * (len(iters) - done != 1)} not analysed yet "
                          "(the run kept new ones); start it again to score them")
    return dict(out, done=done, total=len(iters))


def start_analysis(run: str, root: str | os.PathLike | None = None, windows: int | None = None,
                   threads: int = 1) -> dict[str, Any]:
    """Launch the analysis of run `run` in the background (resuming what is done) and return its
    status. ValueError when it cannot start: a bad name, no snapshots, already running, or a folder
    that cannot be written. threads: the job's torch threads (1 leaves a core to the app)."""
    d = _run_dir(run, root)
    if not list_snapshots(d):
        raise ValueError(f"run {run!r} has no snapshots to analyse; train it with snapshots on (the default)")
    adir = analysis_dir(d)
    try:
        adir.mkdir(exist_ok=True)
        lock = RunLock.acquire(adir, wait_s=1.0)
    except RunBusy:
        raise ValueError(f"the analysis of run {run!r} is already running; stop it, or wait for it") from None
    except OSError as e:
        raise ValueError(f"cannot write {adir} ({e.strerror or e}); copy the run to a folder you can write") from None
    try:
        (adir / STOP_FILE).unlink(missing_ok=True)
        st = read_json(adir / STATUS) or {}
        write_json_atomic(adir / STATUS, {
            "state": "running", "pid": None, "done": st.get("done") if is_count(st.get("done")) else 0,
            "total": len(list_snapshots(d)), "message": "starting", "updated_ts": time.time()})
        argv = [sys.executable, "-m", "trainers.analyze", "--run", d.name, "--root", str(d.parent),
                "--threads", str(threads)] + (["--windows", str(windows)] if windows else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), **{LOCK_ENV: str(lock.fd)})
        with open(adir / LOG, "ab") as log:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    pass_fds=(lock.fd,))
        st = read_json(adir / STATUS) or {}
        if st.get("pid") is None and st.get("message") == "starting":  # the child writes its own soon
            write_json_atomic(adir / STATUS, dict(st, pid=proc.pid))
    finally:
        lock.close()  # the child holds it now
    return analysis_status(run, root)


def stop_analysis(run: str, root: str | os.PathLike | None = None, wait: bool = False,
                  timeout: float = 60.0) -> dict[str, Any]:
    """Ask a running analysis to stop (analysis/STOP): it finishes its chunk of windows, keeps every
    snapshot already written and says "stopped". With wait, poll until it has (or `timeout`
    seconds pass). Returns its status; a job that is not running is left as it is."""
    st = analysis_status(run, root)
    if st["state"] not in LIVE:
        return st
    (analysis_dir(st["path"]) / STOP_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    deadline = time.monotonic() + (timeout if wait else 0.0)
    while (st := analysis_status(run, root))["state"] in LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
    return st


__all__ = ["analysis_status", "start_analysis", "stop_analysis", "STATES", "LIVE"]
