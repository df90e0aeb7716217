"""A Streamlit server for browser tests: app/main.py in its own process group, output to a log file.

Used by the `app_server` fixture in tests/conftest.py; tests do not need it directly.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """`python -m streamlit run app/main.py` on 127.0.0.1:<free port>, started on construction.

    The environment is hermetic: NANOLENS_CHECKPOINTS is `checkpoints_root`, NANOLENS_BUNDLED=""
    (no bundled model unless `env` names one), torch on one thread.
    """

    def __init__(self, checkpoints_root: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "streamlit", "run", "app/main.py",
               "--server.headless", "true", "--server.port", str(self.port),
               "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
        full_env = {**os.environ, "NANOLENS_CHECKPOINTS": str(checkpoints_root), "NANOLENS_BUNDLED": "",
                    "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, n: int = 4000) -> str:
        """The last `n` characters of the server's stdout and stderr."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError as e:
            return f"(no log: {e})"

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once GET /_stcore/health answers "ok"; raise RuntimeError with the log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"streamlit did not answer {self.url}/_stcore/health within {timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group and every process it started (a trainer may run in
        a session of its own), then SIGKILL whatever is left after 10 s."""
        family = descendants(self.proc.pid) if self.proc.poll() is None else []
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        kill_all(family)
        try:  # the leader is gone; its group may not be
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/<pid>/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name inside (...) may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def children(pid: int) -> list[tuple[int, int]]:
    """Live (not zombie) child processes of `pid` as (pid, start time); Linux /proc, [] elsewhere.

    The start time tells a process from a later one that reuses its pid."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    out = []
    for d in proc.iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) and st[1] == pid and st[0] != "Z":
            out.append((int(d.name), st[2]))
    return out


def descendants(pid: int) -> list[tuple[int, int]]:
    """Children, grandchildren, ... of `pid` as (pid, start time), parents before children."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += [k for k, _ in kids]
    return out


def alive(proc: tuple[int, int]) -> bool:
    st = _stat(proc[0])
    return st is not None and st[0] != "Z" and st[2] == proc[1]


def kill_all(procs: list[tuple[int, int]], grace_s: float = 5.0) -> None:
    """SIGTERM `procs` (pid, start time), wait up to `grace_s` for them to exit, SIGKILL the rest."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            if alive(proc):
                try:
                    os.kill(proc[0], sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in procs):
            time.sleep(0.1)
