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
from pathlib import Path
from typing import Any

from gpt.layout import analysis_dir, list_snapshots
from trainers.job_runs import LIVE, STATES, common_fields, count, launch, read_status, request_stop, running_update
from trainers.jobcli import STATUS, STOP_FILE
from trainers.runs import run_path

LOG = "analyze.log"  # trainers.analyze's log; STATUS and STOP_FILE (trainers.jobcli's) stay importable from here


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
    st = read_status(adir)
    out: dict[str, Any] = {"path": str(d), "pid": None, "updated_ts": None}
    if st is None:
        done = _done(d, iters)
        word = "not analysed yet" if not done else f"{done} of {len(iters)} snapshots analysed"
        return dict(out, state="none", done=done, total=len(iters),
                    message=f"{word}: {len(iters)} snapshot{'s' * (len(iters) != 1)} to score" if iters
                    else "no snapshots to analyse")
    out.update(common_fields(st))
    if st["state"] == "running":
        files = _done(d, iters)  # what is written: the progress of a job that is gone
        now = running_update(adir, out["pid"], f"the analysis process ({out['pid']}) is gone (killed or crashed: "
                             f"see analysis/{LOG}) at {files}/{len(iters)} snapshots; start it again to resume")
        if now.get("state") == "interrupted":
            return dict(out, done=files, total=len(iters), **now)
        return dict(out, done=count(st, "done", files), total=count(st, "total", len(iters)), **now)
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
    total = len(list_snapshots(d))
    if not total:
        raise ValueError(f"run {run!r} has no snapshots to analyse; train it with snapshots on (the default)")
    launch(analysis_dir(d), "trainers.analyze",
           ["--run", d.name, "--root", str(d.parent)] + (["--windows", str(windows)] if windows else []),
           LOG, threads, lambda prev: {"done": count(prev, "done"), "total": total},
           busy=f"the analysis of run {run!r} is already running; stop it, or wait for it",
           unwritable="copy the run to a folder you can write")
    return analysis_status(run, root)


def stop_analysis(run: str, root: str | os.PathLike | None = None, wait: bool = False,
                  timeout: float = 60.0) -> dict[str, Any]:
    """Ask a running analysis to stop (analysis/STOP): it finishes its chunk of windows, keeps every
    snapshot already written and says "stopped". With wait, poll until it has (or `timeout`
    seconds pass). Returns its status; a job that is not running is left as it is."""
    return request_stop(lambda: analysis_status(run, root), lambda st: analysis_dir(st["path"]), wait, timeout)


__all__ = ["analysis_status", "start_analysis", "stop_analysis", "STATES", "LIVE"]
