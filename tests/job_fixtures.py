"""What the background-job tests share (test_analyze, test_fit_lens, test_sae_runs): the detached
job processes they start, killed and reaped at teardown, and polling for a state.

tests/conftest.py turns these into two fixtures:
- `started`  a list a test appends the pids of the jobs it launches to; each is killed (its whole
             process group: the jobs run in their own session) and reaped at teardown.
- `job_run`  a private copy of the tiny run, tmp_path/ckpts/tiny-run (tests may write to it); at
             teardown the job that its analysis/, lens/ or sae/<name>/ status.json names as
             running is killed and reaped too (one launched through the app, say).
A job left running past pytest's end would hold a core and fail the session (conftest checks).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from gpt.layout import analysis_dir
from gpt.sae_index import sae_root
from gpt.tuned_lens import lens_dir

T = TypeVar("T")


def reap(pids: Iterable[int | None]) -> None:
    """Kill each pid's process group (SIGKILL) and reap it; gone or foreign ones are skipped."""
    for pid in set(pids) - {None}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # (each job runs in its own session: start_new_session)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def status_pids(run_dir: Path) -> list[int]:
    """The pids that the run's job folders' status.json files name (a job says its pid only while
    it runs): analysis/, lens/ and every sae/<name>/."""
    files = [analysis_dir(run_dir) / "status.json", lens_dir(run_dir) / "status.json",
             *sae_root(run_dir).glob("*/status.json")]
    pids = []
    for f in files:
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(f.read_text()).get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool):
                pids.append(pid)
    return pids


def wait_for(pred: Callable[[], T], timeout: float = 180.0, what: str = "") -> T:
    """Poll pred until it returns something truthy and return that; AssertionError after
    `timeout` seconds, naming `what` (or pred). The bound only stops a hung test: nothing is timed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
