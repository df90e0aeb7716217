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
from pathlib import Path
from typing import Any

from gpt.sae_index import sae_path
from trainers.job_runs import LIVE, STATES, common_fields, count, launch, read_status, request_stop, running_update
from trainers.jobcli import STATUS, STOP_FILE
from trainers.runfolder import read_json

LOG, CONFIG = "train_sae.log", "config.json"  # as trainers.train_sae; STATUS, STOP_FILE: trainers.jobcli's


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
    st = read_status(d)
    out: dict[str, Any] = {"path": str(d), "pid": None, "updated_ts": None, "step": 0,
                           "total": int((read_json(d / CONFIG) or {}).get("steps") or 0)}
    if st is None:
        return dict(out, state="none", message="not trained yet")
    out.update(common_fields(st), step=count(st, "step"), total=count(st, "total", out["total"]))
    if st["state"] == "running":
        out.update(running_update(d, out["pid"], f"the SAE job ({out['pid']}) is gone (killed or crashed: see {LOG}) "
                                  f"at step {out['step']}; start it again to resume"))
    return out


def start_sae(run_dir: str | os.PathLike, hook: str, name: str | None = None, threads: int = 1,
              fresh: bool = False, **settings: Any) -> dict[str, Any]:
    """Launch (or resume) training the SAE <run>/sae/<name or hook> in the background and return
    its status. settings: trainers.train_sae.SAETrainConfig fields (steps, k, expansion, ...), as
    flags. ValueError when it cannot start (a bad name, already running, an unwritable folder)."""
    name = name or hook
    d = _dir(run_dir, name)
    run_dir = Path(run_dir)
    args = ["--run", run_dir.name, "--root", str(run_dir.parent), "--hook", hook, "--name", name]
    args += ["--fresh"] if fresh else []
    for k, v in settings.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    launch(d, "trainers.train_sae", args, LOG, threads,
           lambda prev: {"step": 0, "total": int(settings.get("steps") or 0)},
           busy=f"the SAE {name!r} is already training; stop it, or wait for it",
           unwritable="copy the run to a folder you can write")
    return sae_status(run_dir, name)


def stop_sae(run_dir: str | os.PathLike, name: str, wait: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Ask a training SAE job to stop (STOP): it saves its state after its step and says
    "stopped". With wait, poll until it has (or `timeout` seconds pass)."""
    return request_stop(lambda: sae_status(run_dir, name), lambda st: Path(st["path"]), wait, timeout)


__all__ = ["sae_status", "start_sae", "stop_sae", "STATES", "LIVE"]
