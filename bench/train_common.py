"""What the two trainer comparisons share (bench/bench_train.py: shakespeare_char on the CPU and the
GPU; bench/train_gpt2.py: GPT-2 124M): nanoGPT's train.py and ours run as child processes, never at
once, and their speed and losses read back from their logs; then the goals printed and the work
folder kept or deleted.

Speed = median wall-clock seconds per iteration over the windows between two host syncs (every
nanoGPT "iter" line, stamped on arrival; every one of our metrics rows, by its elapsed_s), leaving
out windows that hold an evaluation or checkpoint, the first `warmup` iterations, and windows over
3x the median (a SIGSTOP pause while time-sliced).

nanoGPT is never part of this repository: it is read from $NANOGPT_DIR (default /tmp/nanogpt).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import verdict
from trainers.config import is_snapshot_iter

REPO = Path(__file__).resolve().parents[1]
ITER_RE = re.compile(r"^iter (\d+): loss ([-\d.naif]+), time ([\d.]+)ms")
EVAL_RE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
TAIL_LINES = 20  # of a failed run's output, in the error


def nanogpt_dir() -> Path:
    """Where nanoGPT's train.py is looked for: $NANOGPT_DIR, else /tmp/nanogpt (not checked here)."""
    return Path(os.environ.get("NANOGPT_DIR") or "/tmp/nanogpt").expanduser()


class Proc:
    """A child in its own process group; stdout lines stamped with time.monotonic() on arrival."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.lines, self.active_s = name, cmd, [], 0.0
        self.log = open(log, "w", encoding="utf-8")
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.log.write(line)
        self.log.flush()

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)  # the group: compile workers stop and go on with it
            except ProcessLookupError:
                pass

    def done(self) -> bool:
        return self.p.poll() is not None

    def first_line(self, prefix: str) -> str:
        """The first output line starting with `prefix` (e.g. our trainer's "device:" line), or ""."""
        return next((ln for _, ln in self.lines if ln.startswith(prefix)), "")

    def cleanup(self) -> None:
        if self.p.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
        self.p.wait()
        self.reader.join(timeout=10)
        self.log.close()


def run_turns(procs: list[Proc], slice_s: float, timeout_s: float) -> None:
    """Run `procs` to completion, never two at once: round-robin slices of slice_s seconds
    (0: each to its end in turn). Counts each one's running (not stopped) wall time."""
    for p in procs[1:]:
        p.signal(signal.SIGSTOP)
    t_end = time.monotonic() + timeout_s
    queue = list(procs)
    while queue:
        p = queue.pop(0)
        p.signal(signal.SIGCONT)
        t0 = time.monotonic()
        while not p.done() and (slice_s <= 0 or time.monotonic() - t0 < slice_s):
            if time.monotonic() > t_end:
                raise TimeoutError(f"{p.name} still running after {timeout_s:.0f} s")
            time.sleep(0.02)
        p.active_s += time.monotonic() - t0
        if not p.done():
            p.signal(signal.SIGSTOP)
            queue.append(p)


def work_dir(keep: Path | None, prefix: str) -> Path:
    """The folder the runs write to: `keep` (created), else a new temp folder that finish() deletes."""
    d = Path(tempfile.mkdtemp(prefix=prefix)) if keep is None else keep
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_pair(out: dict[str, Any], ng_cmd: list[str], ours_cmd: list[str], peer: Path, tmp: Path,
             env: dict[str, str], slice_s: float, timeout_s: float, note: str) -> tuple[Proc, Proc]:
    """nanoGPT's command (in `peer`) and ours (in the repo) to their ends, never at once (run_turns),
    logging to tmp/nanogpt.log and tmp/ours.log; both commands go into `out` and are printed with
    `note`. Returns (nanoGPT, ours); RuntimeError with the tail of its output when one fails."""
    out.update(nanogpt_cmd=shlex.join(ng_cmd), ours_cmd=shlex.join(ours_cmd))
    print(f"nanoGPT: (cd {peer} && {shlex.join(ng_cmd)})\nours:    {shlex.join(ours_cmd)}\n{note}", flush=True)
    procs: list[Proc] = []
    try:
        procs.append(Proc("nanoGPT", ng_cmd, peer, env, tmp / "nanogpt.log"))
        procs.append(Proc("ours", ours_cmd, REPO, env, tmp / "ours.log"))
        run_turns(procs, slice_s, timeout_s)
    finally:
        for p in procs:
            p.cleanup()
    for p in procs:
        if p.p.returncode != 0:
            tail = "\n".join(ln for _, ln in p.lines[-TAIL_LINES:])
            raise RuntimeError(f"{p.name} exited with {p.p.returncode}; see {p.log.name}:\n{tail}")
    return procs[0], procs[1]


# -- reading the logs ----------------------------------------------------------------------------------
def windows(points: list[tuple[int, float]], excluded: set[int], warmup: int) -> list[float]:
    """Seconds per iteration between consecutive (iter, time) points, leaving out windows that
    contain an excluded iteration (eval/checkpoint at its top) or start before `warmup`."""
    out = []
    for (a, ta), (b, tb) in zip(points, points[1:]):
        if a < warmup or b <= a or any(e in excluded for e in range(a + 1, b + 1)):
            continue
        out.append((tb - ta) / (b - a))
    return out


def robust_median(xs: list[float]) -> tuple[float, int]:
    """Median after dropping values over 3x the first median (windows that hold a SIGSTOP pause)."""
    if not xs:
        return float("nan"), 0
    m = statistics.median(xs)
    kept = [x for x in xs if x <= 3 * m]
    return statistics.median(kept), len(xs) - len(kept)


def parse_nanogpt(p: Proc, eval_interval: int, warmup: int) -> dict[str, Any]:
    """nanoGPT's speed (s_per_iter, and its own "time" column in ms) and val losses {iter: loss}."""
    iters, evals, own = [], {}, []
    for t, line in p.lines:
        if m := ITER_RE.match(line):
            it = int(m.group(1))
            iters.append((it, t))
            if it >= warmup and it % eval_interval:
                own.append(float(m.group(3)) / 1000)
        elif m := EVAL_RE.match(line):
            evals[int(m.group(1))] = float(m.group(3))
    excl = {i for i in range(0, (iters[-1][0] if iters else 0) + 1, eval_interval)}
    s_iter, dropped = robust_median(windows(iters, excl, warmup))
    own_med, _ = robust_median(own)
    return {"s_per_iter": s_iter, "dropped_windows": dropped, "own_time_col_ms": 1000 * own_med,
            "evals": evals, "last_iter": iters[-1][0] if iters else None}


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Our run's metrics.jsonl, one dict per row."""
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def parse_ours(run_dir: Path, eval_interval: int, warmup: int) -> dict[str, Any]:
    """Our speed (s_per_iter, and the tokens/s our log reports) and val losses {iter: loss}; evals
    and snapshot saves are left out of the windows."""
    rows = read_rows(run_dir)
    logs = [(r["iter"], r["elapsed_s"]) for r in rows if "train_loss" in r]
    evals = {r["iter"]: r["val_loss"] for r in rows if "val_loss" in r}
    last = logs[-1][0] if logs else 0
    excl = {i for i in range(last + 2) if i % eval_interval == 0 or is_snapshot_iter(i)}
    s_iter, dropped = robust_median(windows(logs, excl, warmup))
    own, _ = robust_median([r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["iter"] >= warmup])
    return {"s_per_iter": s_iter, "dropped_windows": dropped, "own_tokens_per_s": own, "evals": evals,
            "last_iter": last}


def finish(out: dict[str, Any], tmp: Path, keep: Path | None) -> dict[str, Any]:
    """Print each goal's verdict; delete the temp folder, or write result.json into the kept one."""
    for g in out["goals"]:
        print(f"  {verdict(g['passed']):4s} {g['goal']}: {g['measured']} vs {g['peer']} ({g['target']})")
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        (tmp / "result.json").write_text(json.dumps(out, indent=1, default=str))
    return out
