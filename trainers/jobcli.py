"""The skeleton the background jobs share (trainers/analyze.py, trainers/fit_lens.py,
trainers/train_sae.py): the folder a job writes under its own lock, its status.json, how a stop is
asked for and seen, a failure recorded where the app reads it, the common flags, and main()'s shape.

A job folder (<run>/analysis, <home>/lens, <run>/sae/<name>) holds, besides the job's results:
    .lock        an exclusive flock held by the one process that writes the folder (trainers.runlock)
    status.json  {"state", "pid", <the job's counters>, "message", ..., "updated_ts"}, replaced atomically
    STOP         asks the job to stop after its current step (the app's Stop button writes it)
The detached launchers (trainers/analysis_runs.py, lens_runs.py, sae_runs.py) take the lock first,
write status.json with the message "starting" and hand the lock to the child: a STOP written in
that window is meant for this job, any other STOP is stale. Nothing here imports torch at module
level (run_job sets torch's threads), so the launchers' imports stay light.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainers.machine import default_threads
from trainers.runfolder import read_json, write_json_atomic
from trainers.runlock import RunBusy, RunLock

STATUS, STOP_FILE = "status.json", "STOP"
STARTING = "starting"  # the message a launcher writes before its child takes over
MESSAGE_MAX = 2000  # characters of a failure kept in status.json

RUN_HELP = "the run's name (a folder under the checkpoints root)"
ROOT_HELP = "the checkpoints root (default: $NANOLENS_CHECKPOINTS, else ./checkpoints)"
THREADS_HELP = "torch CPU threads (default: all cores but one)"

# what a job gets from run_job: (torch threads, should_stop, log) -> the final status
Job = Callable[[int, Callable[[], bool], Callable[[str], None]], dict[str, Any]]


class StopRequested(Exception):
    """Raised inside a job's loop when a stop was asked for (a signal, or the STOP file)."""


class BadSettings(ValueError):
    """Settings that only turn out wrong once merged with a saved config: exit 2, as bad flags."""


# -- the job folder ---------------------------------------------------------------------------------
def write_status(d: Path, state: str, message: str, **fields: Any) -> None:
    """d/status.json = {"state", "pid" (ours while running, else None), **fields, "message",
    "updated_ts"}, replaced atomically. fields: the job's counters (done/total, step/total) and
    anything else it reports (the checkpoint, the final eval)."""
    write_json_atomic(d / STATUS, {"state": state, "pid": os.getpid() if state == "running" else None,
                                   **fields, "message": message, "updated_ts": time.time()})


def last_status(d: Path, state: str, message: str, **fields: Any) -> dict[str, Any]:
    """Write the status a job ends with ("finished" or "stopped") and return it as the job's
    result: {"state", **fields, "message"}."""
    write_status(d, state, message, **fields)
    return {"state": state, **fields, "message": message}


@contextmanager
def job_lock(d: Path, error: Callable[[str], Exception], busy: str, unwritable: str) -> Iterator[None]:
    """Hold the exclusive lock on the job folder `d` (created if needed) for the with-block.
    error(busy) is raised when another process holds it; error("cannot write d (why); " +
    unwritable) when d cannot be made or locked. Inside the lock, temp files of writes a kill
    interrupted are deleted, and so is a stale STOP (one not left for a job a launcher started)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(d)
    except RunBusy:
        raise error(busy) from None
    except OSError as e:
        raise error(f"cannot write {d} ({e.strerror or e}); {unwritable}") from None
    try:
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        if (read_json(d / STATUS) or {}).get("message") != STARTING:
            (d / STOP_FILE).unlink(missing_ok=True)
        yield
    finally:
        lock.close()


def check_stop(d: Path, should_stop: Callable[[], bool]) -> None:
    """Raise StopRequested when the caller asks (should_stop(), e.g. a signal) or d/STOP exists."""
    if should_stop() or (d / STOP_FILE).exists():
        raise StopRequested


def clear_stop(d: Path) -> None:
    """Delete d/STOP: the stop it asked for has been seen (or the job ended anyway)."""
    (d / STOP_FILE).unlink(missing_ok=True)


@contextmanager
def failure_recorded(error: type[Exception], write: Callable[[str], None],
                     keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Anything raised in the with-block is re-raised after write(message) has put it where the
    app reads it: the job's own `error` by its message, anything else (a bug, Ctrl-C twice) as
    "Type: message"; at most MESSAGE_MAX characters. Exceptions of a `keep` type (a refusal that
    leaves status.json as it was) are only re-raised."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, keep):
            msg = str(e) if isinstance(e, error) else f"{type(e).__name__}: {e}"
            write(msg[:MESSAGE_MAX])
        raise


# -- the CLI ---------------------------------------------------------------------------------------
def job_parser(prog: str, description: str, path_help: str | None = None) -> argparse.ArgumentParser:
    """A parser with --run (required) and --root; with path_help, --run or --path (one of them)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    if path_help is None:
        p.add_argument("--run", required=True, help=RUN_HELP)
    else:
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument("--run", help=RUN_HELP)
        what.add_argument("--path", help=path_help)
    p.add_argument("--root", help=ROOT_HELP)
    return p


def parse_job_args(p: argparse.ArgumentParser, argv: Sequence[str] | None, fresh_help: str,
                   at_least_one: Sequence[str] = ()) -> argparse.Namespace:
    """Add --threads and --fresh to `p` (last, after the job's own flags) and parse argv. --threads
    and the flags named in at_least_one (dest names) must be at least 1, else exit 2 saying so."""
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--fresh", action="store_true", help=fresh_help)
    args = p.parse_args(argv)
    for k in (*at_least_one, "threads"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be at least 1")
    return args


def run_job(threads: int | None, stops_after: str, job: Job,
            report: Callable[[dict[str, Any]], None] | None = None) -> int:
    """main()'s shape. SIGTERM and SIGINT ask the job to stop ("SIGTERM: stopping after
    <stops_after>" on stderr) until it returns; torch runs on `threads` (None: all cores but one);
    job(threads, should_stop, log) runs with log printing each line at once. Prints
    "<state>: <message>" (then report(status), if given) and returns 0 (finished or stopped);
    1 with "error: ..." for a ValueError (refused or failed: the message says why); 2 for
    BadSettings."""
    import torch

    asked = [False]

    def on_signal(signum: int, _frame: Any) -> None:
        print(f"{signal.Signals(signum).name}: stopping after {stops_after}", file=sys.stderr, flush=True)
        asked[0] = True

    before = signal.signal(signal.SIGTERM, on_signal), signal.signal(signal.SIGINT, on_signal)
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    try:
        st = job(threads, lambda: asked[0], lambda m: print(m, flush=True))
    except BadSettings as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    print(f"{st['state']}: {st['message']}", flush=True)
    if report is not None:
        report(st)
    return 0
