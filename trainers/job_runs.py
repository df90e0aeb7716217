"""What the three detached-job launchers share (trainers/analysis_runs.py, lens_runs.py,
sae_runs.py): start a job's process in its own session under the job folder's lock, read the
fields every status.json has, tell a live job from a killed one, and ask it to stop.

A job folder is laid out as trainers/jobcli.py says (.lock, status.json, STOP, the job's log).
launch() takes the lock first, writes status.json with the message "starting" and hands the lock
to the child, so a second start is refused with the truth while the first goes on. Readers here
never write and never create the lock file. Nothing here imports torch or Streamlit, so the app's
imports stay light.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainers.jobcli import STARTING, STATUS, STOP_FILE
from trainers.runfolder import is_count, is_number, pid_alive, read_json, write_json_atomic
from trainers.runlock import LOCK_ENV, RunBusy, RunLock, lock_held
from trainers.runs import REPO_ROOT

STATES = ("running", "finished", "stopped", "failed")  # what a job's status.json may say
LIVE = ("starting", "running", "stopping")  # states in which a job's process is (or soon is) there
MESSAGE_MAX = 2000  # characters of status.json's message a reader passes on


def read_status(d: Path) -> dict[str, Any] | None:
    """d/status.json when it reads back as a dict with one of STATES, else None (never started,
    or a file that cannot be trusted: both read as "none")."""
    st = read_json(d / STATUS)
    return st if st is not None and st.get("state") in STATES else None


def common_fields(st: dict[str, Any]) -> dict[str, Any]:
    """The fields every job's status shares, checked: {"state", "pid" (None unless a count >= 1),
    "message" (at most MESSAGE_MAX characters), "updated_ts" (None unless a number)}."""
    return {"state": st["state"], "pid": st.get("pid") if is_count(st.get("pid"), 1) else None,
            "message": str(st.get("message", ""))[:MESSAGE_MAX],
            "updated_ts": st.get("updated_ts") if is_number(st.get("updated_ts")) else None}


def count(st: dict[str, Any], field: str, default: int = 0) -> int:
    """st[field] when it is a whole number >= 0, else `default` (a counter of a job's progress)."""
    return st[field] if is_count(st.get(field)) else default


def running_state(d: Path, pid: int | None) -> str:
    """For a job whose status.json says "running": "interrupted" when no process holds d/.lock
    (or, in a folder without a lock file, when `pid` is gone: killed or crashed), "stopping" when
    d/STOP waits to be seen, else "running"."""
    held = lock_held(d)
    if not (held if held is not None else pid_alive(pid)):
        return "interrupted"
    return "stopping" if (d / STOP_FILE).exists() else "running"


def running_update(d: Path, pid: int | None, gone: str) -> dict[str, Any]:
    """What a status that says "running" becomes (running_state): for "interrupted" {"state":
    "interrupted", "pid": None, "message": gone}, for "stopping" {"state": "stopping", "message":
    "stop requested"}, else {} (it is running)."""
    now = running_state(d, pid)
    if now == "interrupted":
        return {"state": now, "pid": None, "message": gone}
    return {"state": now, "message": "stop requested"} if now == "stopping" else {}


def launch(d: Path, module: str, args: Sequence[str], log: str, threads: int,
           first: Callable[[dict[str, Any]], dict[str, Any]], busy: str, unwritable: str) -> int:
    """Start `python -m <module> <args> --threads N` detached (its own session, it outlives the
    app), its output appended to d/<log>, and return its pid. d (created if needed) is locked
    first and the lock handed to the child; a stale d/STOP is deleted and status.json is written
    as {"state": "running", "pid": None, **first(the previous status.json or {}), "message":
    "starting", "updated_ts"} (first gives the job's counters), then the child's pid is put there
    unless the child has written its own. ValueError(busy) when another process holds the lock;
    ValueError("cannot write d (why); " + unwritable) when d cannot be made or locked.
    threads: the child's torch and OpenMP threads (1 leaves a core to the app)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(d, wait_s=1.0)
    except RunBusy:
        raise ValueError(busy) from None
    except OSError as e:
        raise ValueError(f"cannot write {d} ({e.strerror or e}); {unwritable}") from None
    try:
        (d / STOP_FILE).unlink(missing_ok=True)
        write_json_atomic(d / STATUS, {"state": "running", "pid": None, **first(read_json(d / STATUS) or {}),
                                       "message": STARTING, "updated_ts": time.time()})
        argv = [sys.executable, "-m", module, *args, "--threads", str(threads)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), **{LOCK_ENV: str(lock.fd)})
        with open(d / log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    pass_fds=(lock.fd,))
        st = read_json(d / STATUS) or {}
        if st.get("pid") is None and st.get("message") == STARTING:  # the child writes its own soon
            write_json_atomic(d / STATUS, dict(st, pid=proc.pid))
    finally:
        lock.close()  # the child holds it now
    return proc.pid


def request_stop(status: Callable[[], dict[str, Any]], folder: Callable[[dict[str, Any]], Path],
                 wait: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Ask a live job to stop by writing STOP in its folder (folder(its status)); with wait, poll
    status() every 0.1 s until the job is no longer LIVE or `timeout` seconds pass. Returns the
    last status; a job that is not live is left as it is."""
    st = status()
    if st["state"] not in LIVE:
        return st
    (folder(st) / STOP_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    deadline = time.monotonic() + (timeout if wait else 0.0)
    while (st := status())["state"] in LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
    return st


__all__ = ["STATES", "LIVE", "MESSAGE_MAX", "read_status", "common_fields", "count", "running_state",
           "running_update", "launch", "request_stop"]
