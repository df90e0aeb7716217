"""The one-writer lock of a run folder: an exclusive flock on <run>/.lock, held by the one process
that writes the folder for its whole life (the trainer; runs.start and runs.resume take it before
they write anything and hand it to the child they launch).

Readers only probe it (`lock_held`), with a shared lock they drop at once, and never create the
file. The lock file is never deleted: a process could otherwise lock a file that another process
has just replaced. A folder with a lock file and no holder has no writer, whatever its
status.json says.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".lock"
LOCK_ENV = "NANOLENS_RUN_LOCK_FD"  # the fd of a run's lock that runs.start/resume hand their child


class RunBusy(ValueError):
    """Another process writes this run folder (it holds <run>/.lock)."""


class RunLock:
    """An exclusive flock on <run>/.lock, held until close() or the process ends.

    `RunLock.acquire(run_dir)` takes it (or adopts the one a parent handed over through
    $NANOLENS_RUN_LOCK_FD) and raises RunBusy when another process holds it. A reader's probe
    holds a shared lock for microseconds, so acquire retries for `wait_s` before giving up.
    close() never unlocks explicitly: a child that inherited the fd keeps the lock."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, wait_s: float = 2.0) -> "RunLock":
        path = Path(run_dir) / LOCK_FILE
        inherited = _adopt(path)
        if inherited is not None:
            return cls(path, inherited)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(path, fd)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunBusy(f"run {path.parent.name!r} is being written by another process "
                                  "(it holds the run's lock); wait for it to end, or stop it") from None
                time.sleep(0.01)

    def close(self) -> None:
        """Give up this process's hold (the lock ends with the last fd of it); safe twice."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _adopt(path: Path) -> int | None:
    """The fd named by $NANOLENS_RUN_LOCK_FD when it is this path's lock, already held (runs.start
    took it before launching us); the variable is consumed either way."""
    raw = os.environ.pop(LOCK_ENV, None)
    if raw is None or not raw.isdigit():
        return None
    fd = int(raw)
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
        if same:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: this only confirms it
            return fd
    except OSError:
        pass
    return None


def lock_held(run_dir: str | os.PathLike) -> bool | None:
    """Whether some process holds <run>/.lock: True, False, or None when the folder has no lock
    file (a run from before locks, or one never trained). Opens it read-only; never creates it."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing drops the probe's shared lock)
