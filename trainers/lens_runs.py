"""The tuned-lens fit as the app drives it: start it detached, stop it, read its state.

start_lens launches `python -m trainers.fit_lens --path CHECKPOINT [--data CORPUS]` in its own
session (it outlives the app), logging to <home>/lens/fit.log (home: the checkpoint's run folder,
else its own folder; gpt.tuned_lens.lens_home). It takes lens/.lock first and hands it to the
child (trainers.runlock, as runs.start does for training), so a second start is refused with the
truth while the first goes on; the lock is the lens's own, so a run can train, be analysed and have
its lens fitted at once. stop_lens writes lens/STOP; the fit saves its state after the current step
and says "stopped". lens_status only reads (never writes, never creates the lock file).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpt.tuned_lens import lens_dir, lens_home
from trainers.fit_lens import LOG, STATE_FILE, STATUS, STOP_FILE
from trainers.runfolder import is_count, is_number, pid_alive, read_json, write_json_atomic
from trainers.runlock import LOCK_ENV, RunBusy, RunLock, lock_held
from trainers.runs import REPO_ROOT

STATES = ("running", "finished", "stopped", "failed")  # what status.json may say
LIVE = ("starting", "running", "stopping")


def _home(checkpoint: str | os.PathLike) -> Path:
    p = Path(checkpoint).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    return lens_home(p)


def lens_status(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The tuned-lens fit of the lens home of the (resolved) checkpoint at `checkpoint`: {"state",
    "pid", "done", "total" (steps), "message", "checkpoint" (which one the fit is for, relative to
    the home), "updated_ts", "home", "resumable" (a saved state waits)}. state: "none" (never
    started), a status.json state, "stopping" (STOP asked, not yet seen) or "interrupted" (status
    says running but no process holds lens/.lock: killed; start again to resume). Never writes.
    FileNotFoundError: no such checkpoint."""
    home = _home(checkpoint)
    ldir = lens_dir(home)
    st = read_json(ldir / STATUS)
    out: dict[str, Any] = {"home": str(home), "pid": None, "updated_ts": None,
                           "resumable": (ldir / STATE_FILE).is_file()}
    if st is None or st.get("state") not in STATES:
        return dict(out, state="none", done=0, total=0, checkpoint="",
                    message="no tuned lens fitted yet" if not out["resumable"] else "a saved fit waits; start it to resume")
    done = st.get("done") if is_count(st.get("done")) else 0
    total = st.get("total") if is_count(st.get("total")) else 0
    out.update(state=st["state"], done=done, total=total, message=str(st.get("message", ""))[:2000],
               checkpoint=str(st.get("checkpoint") or ""), pid=st.get("pid") if is_count(st.get("pid"), 1) else None,
               updated_ts=st.get("updated_ts") if is_number(st.get("updated_ts")) else None)
    if st["state"] == "running":
        held = lock_held(ldir)
        if not (held if held is not None else pid_alive(out["pid"])):
            return dict(out, state="interrupted", pid=None,
                        message=f"the fit ({out['pid']}) is gone (killed or crashed: see lens/{LOG}) at step "
                                f"{done}/{total}; start it again to resume from its last save")
        if (ldir / STOP_FILE).exists():
            return dict(out, state="stopping", message="stop requested")
    return out


def start_lens(checkpoint: str | os.PathLike, data: str | None = None, threads: int = 1,
               steps: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """Launch the tuned-lens fit of the checkpoint at `checkpoint` in the background (resuming a
    saved fit of the same checkpoint) and return its status. data: the corpus (default: the run's
    own; a checkpoint in no run needs one). ValueError when it cannot start: already running, or a
    folder that cannot be written. threads: the fit's torch threads (1 leaves a core to the app)."""
    home = _home(checkpoint)
    ldir = lens_dir(home)
    try:
        ldir.mkdir(exist_ok=True)
        lock = RunLock.acquire(ldir, wait_s=1.0)
    except RunBusy:
        raise ValueError(f"a tuned-lens fit of {home.name!r} is already running; stop it, or wait for it") from None
    except OSError as e:
        raise ValueError(f"cannot write {ldir} ({e.strerror or e}); copy the checkpoint to a folder you can write") from None
    try:
        (ldir / STOP_FILE).unlink(missing_ok=True)
        st = read_json(ldir / STATUS) or {}
        write_json_atomic(ldir / STATUS, {
            "state": "running", "pid": None, "done": st.get("done") if is_count(st.get("done")) else 0,
            "total": st.get("total") if is_count(st.get("total")) else 0, "message": "starting",
            "checkpoint": st.get("checkpoint") or "", "updated_ts": time.time()})
        argv = [sys.executable, "-m", "trainers.fit_lens", "--path", str(Path(checkpoint).expanduser()),
                "--threads", str(threads)] + (["--data", data] if data else []) + \
            (["--steps", str(steps)] if steps else []) + (["--fresh"] if fresh else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), **{LOCK_ENV: str(lock.fd)})
        with open(ldir / LOG, "ab") as log:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    pass_fds=(lock.fd,))
        st = read_json(ldir / STATUS) or {}
        if st.get("pid") is None and st.get("message") == "starting":  # the child writes its own soon
            write_json_atomic(ldir / STATUS, dict(st, pid=proc.pid))
    finally:
        lock.close()  # the child holds it now
    return lens_status(checkpoint)


def stop_lens(checkpoint: str | os.PathLike, wait: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Ask a running fit to stop (lens/STOP): it saves its state after the current step and says
    "stopped". With wait, poll until it has (or `timeout` seconds pass). Returns its status; a fit
    that is not running is left as it is."""
    st = lens_status(checkpoint)
    if st["state"] not in LIVE:
        return st
    (lens_dir(st["home"]) / STOP_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    deadline = time.monotonic() + (timeout if wait else 0.0)
    while (st := lens_status(checkpoint))["state"] in LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
    return st


__all__ = ["lens_status", "start_lens", "stop_lens", "STATES", "LIVE"]
