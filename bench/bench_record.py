"""Goals 2 and 3: what recording costs.

Goal 2 (time): a full recording (Recorder() with its default names: every site but hook_result;
compact; fp32 and fp16) against the same forward with rec=None: <= 2x. Targets are given to both,
so both compute every position's logits (a recorded forward always does), and the four variants
(none, fp32, fp16, and compact=False fp32 for reference) are timed interleaved in one run.

Goal 3 (memory): a full fp16 compact trace of GPT-2 small (random weights) at T=1024 takes <= 0.5 GiB:
the bytes the Recorder holds (rec.stored_bytes()), and the peak RSS the recorded forward adds over
a plain forward, measured in a fresh subprocess (torch's allocations are invisible to tracemalloc):
it builds the model, runs a plain forward, then the recorded one, and reads VmHWM (peak RSS) from
/proc/self/status, resetting it between the two by writing 5 to /proc/self/clear_refs where the
kernel allows it. TransformerLens keeps every activation in fp32: Recorder.estimate_bytes(compact=False,
dtype=fp32) is that figure (~2 GiB), the peer column.

    .venv/bin/python -m bench.bench_record [--quick] [--threads N] [--no-memory] [--memory-full]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bench import DEFAULT_THREADS, goal, interleaved, machine, ms, ratio, set_threads, table, verdict
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder

GOAL_TIME = 2.0
GOAL_BYTES = 0.5 * 2**30
GIB = 2**30
REPO = Path(__file__).resolve().parent.parent

# (name, config, B, T, reps, quick reps)
CASES = [
    ("baby 6x384 B=4 T=256", GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384),
     4, 256, 20, 6),
    ("gpt2 12x768 B=1 T=128", GPTConfig.preset("gpt2"), 1, 128, 12, 4),
    ("gpt2 12x768 B=1 T=1024", GPTConfig.preset("gpt2"), 1, 1024, 5, 2),
]
VARIANTS = {  # name -> Recorder kwargs (None: rec=None)
    "rec=None": None,
    "compact fp32": {"dtype": torch.float32},
    "compact fp16": {"dtype": torch.float16},
    "full fp32 (compact=False)": {"dtype": torch.float32, "compact": False},
}
GOAL_VARIANTS = ("compact fp32", "compact fp16")


def bench_time(name: str, cfg: GPTConfig, B: int, T: int, reps: int, seed: int = 0) -> dict[str, Any]:
    """Interleaved timing of every VARIANTS entry on one shape. A fresh Recorder per call, freed
    after the clock stops, so each call pays for allocating its trace as a real first recording does."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(cfg.vocab_size, (B, T), generator=g)  # (B, T)
    tgt = torch.randint(cfg.vocab_size, (B, T), generator=g)
    stored: dict[str, int] = {}

    def make(vname: str, kw: dict[str, Any] | None):
        def run() -> None:
            rec = None if kw is None else Recorder(**kw)
            model(idx, tgt, rec=rec)
            if rec is not None:
                stored[vname] = rec.stored_bytes()
        return run
    with torch.no_grad():
        t = interleaved({v: make(v, kw) for v, kw in VARIANTS.items()}, reps=reps, warmup=1)
    base = t.primary["rec=None"]
    res: dict[str, Any] = {"case": name, "B": B, "T": T, "reps": reps, "clock": t.clock, "variants": {}}
    for v in VARIANTS:
        r, rw = ratio(t.primary[v], base), ratio(t.wall[v], t.wall["rec=None"])
        res["variants"][v] = {"ms": ms(t.primary[v]), "wall_ms": ms(t.wall[v]), "ratio": r["median_of_ratios"],
                              "ratio_q25": r["q25"], "ratio_q75": r["q75"], "wall_ratio": rw["median_of_ratios"],
                              "stored_MiB": stored.get(v, 0) / 2**20}
    return res


# -- memory: a fresh subprocess per measurement ------------------------------------------------------

def _status() -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of this process, in bytes."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmHWM", "VmRSS")}


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(dtype: str, compact: bool, T: int) -> dict[str, Any]:
    """Run in a fresh process: GPT-2 small, random weights, a plain forward then a recorded one
    (both with targets: full logits), and what each did to the peak RSS."""
    torch.set_num_threads(1)
    cfg = GPTConfig.preset("gpt2")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.randint(cfg.vocab_size, (1, T))  # (1, T)
    tgt = torch.randint(cfg.vocab_size, (1, T))
    rec = Recorder(dtype=getattr(torch, dtype), compact=compact)
    with torch.no_grad():
        model(idx, tgt)  # warm-up: the allocator's pools and torch's lazy state exist before measuring
        can_reset = _reset_peak()
        before_plain = _status()
        model(idx, tgt)
        after_plain = _status()
        if can_reset:
            _reset_peak()
        before_rec = _status()
        model(idx, tgt, rec=rec)
        after_rec = _status()
    out = {"dtype": dtype, "compact": compact, "T": T, "hwm_reset": can_reset,
           "stored_bytes": rec.stored_bytes(),
           "estimate_bytes": Recorder.estimate_bytes(cfg, T, dtype=getattr(torch, dtype), compact=compact),
           "rss_model_bytes": before_plain["VmRSS"],
           "retained_bytes": after_rec["VmRSS"] - before_rec["VmRSS"]}
    if can_reset:  # each forward's own peak above the RSS it started from
        out["peak_plain_bytes"] = after_plain["VmHWM"] - before_plain["VmRSS"]
        out["peak_rec_bytes"] = after_rec["VmHWM"] - before_rec["VmRSS"]
    else:  # no reset: the recorded forward's peak over the highest peak before it
        out["peak_plain_bytes"] = after_plain["VmHWM"] - before_plain["VmRSS"]
        out["peak_rec_bytes"] = after_rec["VmHWM"] - before_rec["VmRSS"] if after_rec["VmHWM"] > before_rec["VmHWM"] \
            else None
    out["peak_extra_bytes"] = None if out["peak_rec_bytes"] is None else \
        out["peak_rec_bytes"] - out["peak_plain_bytes"]
    return out


def bench_memory(dtype: str, compact: bool, T: int = 1024) -> dict[str, Any]:
    """memory_child in a fresh interpreter (one torch thread), its JSON result."""
    cmd = [sys.executable, "-m", "bench.bench_record", "--memory-child", dtype,
           "--compact" if compact else "--no-compact", "--T", str(T)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"memory child failed ({' '.join(cmd)}):\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_record", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (default 1)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses (goal 3)")
    ap.add_argument("--memory-full", action="store_true",
                    help="also measure an uncompacted fp32 trace (~2 GiB, as TransformerLens)")
    ap.add_argument("--memory-child", metavar="DTYPE", help=argparse.SUPPRESS)
    ap.add_argument("--compact", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        res = memory_child(args.memory_child, args.compact, args.T)
        print(json.dumps(res))
        return res
    set_threads(args.threads)
    out: dict[str, Any] = {"script": "bench_record", "machine": machine(), "cases": [], "memory": [], "goals": []}

    print(f"== bench_record: recording time vs rec=None; torch threads {args.threads}")
    cases = CASES[:2] if args.quick else CASES
    for name, cfg, B, T, reps, qreps in cases:
        res = bench_time(name, cfg, B, T, qreps if args.quick else reps)
        out["cases"].append(res)
        base = res["variants"]["rec=None"]
        for v in GOAL_VARIANTS:
            vr = res["variants"][v]
            out["goals"].append(goal(f"full recording ({v}) vs rec=None, {name}", f"{vr['ms']:.1f} ms",
                                     f"{base['ms']:.1f} ms (rec=None)", round(vr["ratio"], 3),
                                     f"<= {GOAL_TIME}x", vr["ratio"] <= GOAL_TIME,
                                     f"{res['clock']} time; median of {res['reps']} interleaved ratios; "
                                     f"wall-clock ratio {vr['wall_ratio']:.3f}"))
    rows = [[c["case"], v, c["reps"], d["ms"], d["ratio"], f"{d['ratio_q25']:.3f}-{d['ratio_q75']:.3f}",
             d["wall_ratio"], f"{d['stored_MiB']:.1f}", verdict(d["ratio"] <= GOAL_TIME) if v in GOAL_VARIANTS else "-"]
            for c in out["cases"] for v, d in c["variants"].items()]
    clock = out["cases"][0]["clock"]
    print(table(["case", "variant", "reps", f"ms ({clock})", "x rec=None", "IQR", "wall x", "stored MiB",
                 f"<= {GOAL_TIME}x"], rows))

    if args.no_memory:
        return out
    cfg = GPTConfig.preset("gpt2")
    tl = Recorder.estimate_bytes(cfg, 1024, dtype=torch.float32, compact=False)
    print("\n== bench_record: memory of a full trace, GPT-2 small, T=1024 (fresh subprocess each)")
    plans = [("float16", True), ("float32", True)] + ([("float32", False)] if args.memory_full else [])
    for dtype, compact in plans:
        out["memory"].append(bench_memory(dtype, compact))
    rows = []
    for m in out["memory"]:
        label = f"{'compact' if m['compact'] else 'full'} {m['dtype']}"
        peak = m["peak_rec_bytes"]
        extra = m["peak_extra_bytes"]
        rows.append([label, m["stored_bytes"] / GIB, m["estimate_bytes"] / GIB, m["retained_bytes"] / GIB,
                     m["peak_plain_bytes"] / GIB, None if peak is None else peak / GIB,
                     None if extra is None else extra / GIB, tl / GIB])
    print(table(["trace", "stored GiB", "estimate GiB", "RSS kept GiB", "peak plain fwd GiB",
                 "peak rec fwd GiB", "peak extra GiB", "TransformerLens GiB"], rows))
    m = out["memory"][0]  # the goal: compact fp16
    out["goals"].append(goal("full trace stored bytes, GPT-2 small T=1024, compact fp16",
                             f"{m['stored_bytes'] / GIB:.3f} GiB", f"{tl / GIB:.3f} GiB (TransformerLens, fp32)",
                             round(m["stored_bytes"] / tl, 3), "<= 0.5 GiB", m["stored_bytes"] <= GOAL_BYTES,
                             "rec.stored_bytes(); peer = Recorder.estimate_bytes(compact=False, fp32)"))
    extra = m["peak_extra_bytes"]
    out["goals"].append(goal("full trace peak RSS increase over a plain forward, GPT-2 small T=1024, compact fp16",
                             None if extra is None else f"{extra / GIB:.3f} GiB", f"{tl / GIB:.3f} GiB (TL stored)",
                             None if extra is None else round(extra / tl, 3), "<= 0.5 GiB",
                             None if extra is None else extra <= GOAL_BYTES,
                             f"VmHWM in a fresh process (reset={m['hwm_reset']}); recorded-forward peak "
                             f"{m['peak_rec_bytes'] / GIB:.3f} GiB minus plain-forward peak "
                             f"{m['peak_plain_bytes'] / GIB:.3f} GiB, both above the RSS they started from"
                             if extra is not None else "VmHWM could not be reset"))
    return out


if __name__ == "__main__":
    main()
