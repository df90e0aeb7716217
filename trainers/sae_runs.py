"""SAE training jobs as the app drives them: start one detached, stop it, read its state.

start_sae launches `python -m trainers.train_sae --run NAME --root ROOT --hook HOOK ...` in its own
session (it outlives the app), logging to <run>/sae/<name>/train_sae.log. It takes the SAE
folder's .lock first and hands it to the child (trainers.runlock, as trainers.analysis_runs does),
so a second start is refused with the truth while the first goes on. stop_sae writes STOP; the job
stops after its step, saves its state and says "stopped". sae_status only reads. Nothing here
imports torch or Streamlit.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpt.sae_index import sae_path
from trainers.runfolder import is_count, is_number, pid_alive, read_json, write_json_atomic
from trainers.runlock import LOCK_ENV, RunBusy, RunLock, lock_held
from trainers.runs import REPO_ROOT

STATUS, STOP_FILE, LOG, CONFIG = "status.json", "STOP", "train_sae.log", "config.json"  # as trainers.train_sae
STATES = ("running", "finished", "stopped", "failed")
LIVE = ("starting", "running", "stopping")


def _dir(run_dir: str | os.PathLike, name: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder {run_dir}")
    return sae_path(run_dir, name)  # ValueError: a bad name


def sae_status(run_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The SAE job <run>/sae/<name>: {"state", "pid", "step", "total", "message", "updated_ts",
    "path"}. state: "none" (never started), a status.json state, "stopping" (STOP asked), or
    "interrupted" (status says running but no process holds the lock: killed; start again to
    resume). Never writes."""
    d = _dir(run_dir, name)
    st = read_json(d / STATUS)
    out: dict[str, Any] = {"path": str(d), "pid": None, "updated_ts": None, "step": 0,
                           "total": int((read_json(d / CONFIG) or {}).get("steps") or 0)}
    if st is None or st.get("state") not in STATES:
        return dict(out, state="none", message="not trained yet")
    out.update(state=st["state"], pid=st.get("pid") if is_count(st.get("pid"), 1) else None,
               message=str(st.get("message", ""))[:2000],
               updated_ts=st.get("updated_ts") if is_number(st.get("updated_ts")) else None,
               step=st.get("step") if is_count(st.get("step")) else 0,
               total=st.get("total") if is_count(st.get("total")) else out["total"])
    if st["state"] == "running":
        held = lock_held(d)
        alive = held if held is not None else pid_alive(out["pid"])
        if not alive:
            return dict(out, state="interrupted", pid=None,
                        message=f"the SAE job ({out['pid']}) is gone (killed or crashed: see {LOG}) at step "
                                f"{out['step']}; start it again to resume")
        if (d / STOP_FILE).exists():
            return dict(out, state="stopping", message="stop requested")
    return out


def start_sae(run_dir: str | os.PathLike, hook: str, name: str | None = None, threads: int = 1,
              fresh: bool = False, **settings: Any) -> dict[str, Any]:
    """Launch (or resume) training the SAE <run>/sae/<name or hook> in the background and return
    its status. settings: trainers.train_sae.SAETrainConfig fields (steps, k, expansion, ...), as
    flags. ValueError when it cannot start (a bad name, already running, an unwritable folder)."""
    name = name or hook
    d = _dir(run_dir, name)
    try:
        d.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(d, wait_s=1.0)
    except RunBusy:
        raise ValueError(f"the SAE {name!r} is already training; stop it, or wait for it") from None
    except OSError as e:
        raise ValueError(f"cannot write {d} ({e.strerror or e}); copy the run to a folder you can write") from None
    try:
        (d / STOP_FILE).unlink(missing_ok=True)
        write_json_atomic(d / STATUS, {"state": "running", "pid": None, "step": 0,
                                       "total": int(settings.get("steps") or 0), "message": "starting",
                                       "updated_ts": time.time()})
        run_dir = Path(run_dir)
        argv = [sys.executable, "-m", "trainers.train_sae", "--run", run_dir.name, "--root", str(run_dir.parent),
                "--hook", hook, "--name", name, "--threads", str(threads)] + (["--fresh"] if fresh else [])
        for k, v in settings.items():
            argv += ["--" + k.replace("_", "-"), str(v)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), **{LOCK_ENV: str(lock.fd)})
        with open(d / LOG, "ab") as log:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    pass_fds=(lock.fd,))
        st = read_json(d / STATUS) or {}
        if st.get("pid") is None and st.get("message") == "starting":  # the child writes its own soon
            write_json_atomic(d / STATUS, dict(st, pid=proc.pid))
    finally:
        lock.close()  # the child holds it now
    return sae_status(run_dir, name)


def stop_sae(run_dir: str | os.PathLike, name: str, wait: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Ask a training SAE job to stop (STOP): it saves its state after its step and says
    "stopped". With wait, poll until it has (or `timeout` seconds pass)."""
    st = sae_status(run_dir, name)
    if st["state"] not in LIVE:
        return st
    (Path(st["path"]) / STOP_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    deadline = time.monotonic() + (timeout if wait else 0.0)
    while (st := sae_status(run_dir, name))["state"] in LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
    return st


__all__ = ["sae_status", "start_sae", "stop_sae", "STATES", "LIVE"]
