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
from pathlib import Path
from typing import Any

from gpt.tuned_lens import lens_dir, lens_home
from trainers.fit_lens import LOG, STATE_FILE, STATUS, STOP_FILE
from trainers.job_runs import LIVE, STATES, common_fields, count, launch, read_status, request_stop, running_update


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
    st = read_status(ldir)
    out: dict[str, Any] = {"home": str(home), "pid": None, "updated_ts": None,
                           "resumable": (ldir / STATE_FILE).is_file()}
    if st is None:
        return dict(out, state="none", done=0, total=0, checkpoint="",
                    message="no tuned lens fitted yet" if not out["resumable"] else "a saved fit waits; start it to resume")
    done, total = count(st, "done"), count(st, "total")
    out.update(common_fields(st), done=done, total=total, checkpoint=str(st.get("checkpoint") or ""))
    if st["state"] == "running":
        out.update(running_update(ldir, out["pid"], f"the fit ({out['pid']}) is gone (killed or crashed: see "
                                  f"lens/{LOG}) at step {done}/{total}; start it again to resume from its last save"))
    return out


def start_lens(checkpoint: str | os.PathLike, data: str | None = None, threads: int = 1,
               steps: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """Launch the tuned-lens fit of the checkpoint at `checkpoint` in the background (resuming a
    saved fit of the same checkpoint) and return its status. data: the corpus (default: the run's
    own; a checkpoint in no run needs one). ValueError when it cannot start: already running, or a
    folder that cannot be written. threads: the fit's torch threads (1 leaves a core to the app)."""
    home = _home(checkpoint)
    launch(lens_dir(home), "trainers.fit_lens",
           ["--path", str(Path(checkpoint).expanduser())] + (["--data", data] if data else [])
           + (["--steps", str(steps)] if steps else []) + (["--fresh"] if fresh else []),
           LOG, threads,
           lambda prev: {"done": count(prev, "done"), "total": count(prev, "total"),
                         "checkpoint": prev.get("checkpoint") or ""},
           busy=f"a tuned-lens fit of {home.name!r} is already running; stop it, or wait for it",
           unwritable="copy the checkpoint to a folder you can write")
    return lens_status(checkpoint)


def stop_lens(checkpoint: str | os.PathLike, wait: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    """Ask a running fit to stop (lens/STOP): it saves its state after the current step and says
    "stopped". With wait, poll until it has (or `timeout` seconds pass). Returns its status; a fit
    that is not running is left as it is."""
    return request_stop(lambda: lens_status(checkpoint), lambda st: lens_dir(st["home"]), wait, timeout)


__all__ = ["lens_status", "start_lens", "stop_lens", "STATES", "LIVE"]
