"""Timing a run's training step in a worker process of its own, for the Train page's estimate.

A run is a process of its own with its own thread count (trainers.runs starts it with
default_threads()). Timing its step inside the app would run on the app's threads, change
glibc's memory settings for the app (the Engine keeps freed memory on a CPU) and queue behind the
app's own work. So the app asks one long-lived worker, `python -m trainers.steptimer`, started
the way runs.start starts a run (OMP_NUM_THREADS = the run's threads). It answers one JSON line
on stdout for each JSON line of a request on stdin, and exits when stdin closes (the app went
away, or `close`). Its own start (Python, torch, the optimizer's imports) is what a run's process
pays before its first step: measured once when it starts, it is each StepCost's startup_s.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, Any

from gpt.config import GPTConfig
from trainers.estimate import StepCost, measure_step

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0  # Python and torch's imports on a loaded 2-core machine
MEASURE_TIMEOUT_S = 300.0


class StepTimer:
    """StepTimer().measure(model_cfg, batch_size, threads) -> StepCost, timed in the worker.
    Thread-safe (one request at a time); the worker starts on the first request and again when
    the thread count changes or it died. RuntimeError says why a measurement failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._threads = 0
        self._startup_s = 0.0
        self._err: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    def measure(self, model_cfg: GPTConfig, batch_size: int, threads: int, device: str = "cpu",
                cpu_shards: bool = True) -> StepCost:
        req = {"model": model_cfg.to_dict(), "batch_size": batch_size, "threads": threads,
               "device": device, "cpu_shards": cpu_shards}
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._threads != threads:
                self._start(threads)
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps(req) + "\n").encode())
                self._proc.stdin.flush()
            except OSError:
                self._fail("the step timer stopped")
            reply = self._reply(MEASURE_TIMEOUT_S)
        if "error" in reply:
            raise RuntimeError(f"timing the step failed: {reply['error']}")
        return replace(StepCost(**reply["cost"]), startup_s=self._startup_s)

    def _start(self, threads: int) -> None:
        self._stop()
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        self._proc = subprocess.Popen([sys.executable, "-m", "trainers.steptimer"], cwd=REPO_ROOT, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self._finalizer = weakref.finalize(self, _end, self._proc)  # also at interpreter exit
        self._reply(START_TIMEOUT_S)
        self._startup_s, self._threads = time.perf_counter() - t0, threads

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        """The worker's next line as a dict; RuntimeError when it died or took too long."""
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else b""
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._fail("the step timer did not answer" if ready else f"the step timer took over {timeout_s:.0f} s")
        return reply

    def _fail(self, what: str) -> None:
        tail = ""
        if self._err is not None:
            self._err.seek(0)
            tail = self._err.read().decode(errors="replace").strip().splitlines()[-1:]
            tail = f": {tail[0]}" if tail else ""
        self._stop()
        raise RuntimeError(what + tail)

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # ends the worker (once)
        self._proc = self._finalizer = None
        if self._err is not None:
            self._err.close()
            self._err = None

    def close(self) -> None:
        """End the worker (it also ends by itself when this process exits)."""
        with self._lock:
            self._stop()


def _end(proc: subprocess.Popen) -> None:
    """Close the worker's stdin (it exits on EOF) and reap it; kill it if it does not go."""
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def serve(inp: IO[str], out: IO[str]) -> None:
    """The worker's loop: warm up as a run's process does (torch, the Engine, an AdamW, whose
    first construction imports torch._dynamo), say ready, then answer each request line."""
    from gpt.model import GPT
    from trainers import engine, step  # noqa: F401  (what a run imports before its first step)

    GPT(GPTConfig.preset("tiny")).configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in inp:
        try:
            req = json.loads(line)
            cost = measure_step(GPTConfig.from_dict(req["model"]), int(req["batch_size"]),
                                threads=int(req["threads"]), device=str(req["device"]),
                                cpu_shards=bool(req["cpu_shards"]))
            reply: dict[str, Any] = {"cost": asdict(cost)}
        except Exception as e:  # a reply, not a dead worker: the page says what went wrong
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    protocol, sys.stdout = sys.stdout, sys.stderr  # a stray print must not garble the replies
    serve(sys.stdin, protocol)
