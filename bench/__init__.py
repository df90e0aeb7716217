"""nanolens benchmarks, and the timing helpers every bench script shares.

Contract for bench scripts (bench/bench_*.py, run by `python -m bench.run_all`):
    main(argv: list[str] | None = None) -> dict
  * accepts `--quick` (fewer repetitions; run_all passes it through) and prints its own table;
  * returns a JSON-able dict; goals go under "goals" as a list of dicts with the keys
    goal, measured, peer, ratio, target, passed (bool, or None when not decided), note, and
    optionally status (a word shown instead of PASS/FAIL/n/a, e.g. "INCONCLUSIVE");
    everything else in the dict is free-form figures.

The machine is shared (2 cores, other engineers running tests), so absolute times drift. Every
comparison is therefore measured *interleaved in the same run*: each repetition runs every variant
once, in an order that rotates from one repetition to the next, and a ratio is the median of the
per-repetition ratios (adjacent in time, so slow drift cancels), reported next to the ratio of medians.
Each call is timed on the wall clock and on the process CPU clock; with one torch thread the CPU
clock leaves out the time other processes held the core, so the goals use CPU-time ratios and the
wall-clock ratios are reported beside them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch

DEFAULT_THREADS = 1  # one core each: the other core stays for whoever else is working


def set_threads(n: int) -> None:
    """Pin torch's intra-op threads (both variants of a comparison always share the setting)."""
    torch.set_num_threads(n)


def machine() -> dict[str, Any]:
    """What the figures were measured on, for BENCHMARKS.md."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_1m": round(load[0], 2),
    }


class Timings:
    """Per-variant seconds of every timed call, on two clocks: `wall` (perf_counter) and `cpu`
    (this process's CPU time, all threads). On a shared machine the CPU clock does not count the time
    other processes hold the core, so its ratios are the steadier ones; both are reported."""

    def __init__(self, names: list[str]) -> None:
        self.wall: dict[str, list[float]] = {n: [] for n in names}
        self.cpu: dict[str, list[float]] = {n: [] for n in names}

    @property
    def clock(self) -> str:
        """The clock the goals use: "cpu" with one torch thread; "wall" with more, where idle
        OpenMP workers spin and would bill CPU time that is not work."""
        return "cpu" if torch.get_num_threads() == 1 else "wall"

    @property
    def primary(self) -> dict[str, list[float]]:
        return self.cpu if self.clock == "cpu" else self.wall


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 2) -> Timings:
    """Time each of `fns` `reps` times, one call of each per repetition, order rotated every repetition
    (A B C, B C A, C A B, ... and reversed on odd repetitions, so no variant always runs first or
    right after the same neighbour). Returns seconds per call, per variant, in repetition order."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = Timings(names)
    for r in range(reps):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order = order[::-1]
        for n in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            t1, c1 = time.perf_counter(), time.process_time()
            times.wall[n].append(t1 - t0)
            times.cpu[n].append(c1 - c0)
    return times


def ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """num/den: the median of per-repetition ratios (primary), the ratio of medians, and the
    spread (25th and 75th percentile) of the per-repetition ratios."""
    per = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(per, n=4) if len(per) >= 2 else [per[0]] * 3
    return {"median_of_ratios": statistics.median(per),
            "ratio_of_medians": statistics.median(num) / statistics.median(den),
            "q25": q[0], "q75": q[2]}


def ms(ts: list[float]) -> float:
    """Median of `ts` seconds, in milliseconds."""
    return 1000.0 * statistics.median(ts)


def goal(goal: str, measured: Any, peer: Any, ratio_value: Any, target: str, passed: bool | None,
         note: str = "", status: str | None = None) -> dict[str, Any]:
    """One row of a script's "goals" list (see the contract above). `status` overrides the printed
    verdict when passed is None, e.g. "INCONCLUSIVE" when the run was too noisy to decide."""
    return {"goal": goal, "measured": measured, "peer": peer, "ratio": ratio_value,
            "target": target, "passed": passed, "note": note, "status": status}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned columns (numbers) and a rule under the header."""
    cells = [[_fmt(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def _fmt(c: Any) -> str:
    if isinstance(c, bool):
        return verdict(c)
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 100 else f"{c:.1f}"
    return "-" if c is None else str(c)


def page_args(doc: str, threads: int) -> argparse.ArgumentParser:
    """The arguments every page bench takes: model preset, prompt length, repetitions, threads."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--preset", default="baby")
    ap.add_argument("--T", type=int, default=256, help="prompt length (<= block_size)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="5 repetitions")
    ap.add_argument("--threads", type=int, default=threads)
    return ap


def case_args(prog: str, doc: str, threads: int) -> argparse.ArgumentParser:
    """The arguments of the benches that run a bundled-model and a GPT-2-shape case."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    ap.add_argument("--only", choices=["bundled", "gpt2"], help="run one case")
    return ap


def browser_missing(chromium: str) -> str | None:
    """Why a browser bench cannot run here (no Chromium, no Playwright), or None when it can."""
    if not os.access(chromium, os.X_OK):
        return f"{chromium} not found (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    return None
