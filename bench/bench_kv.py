"""Goal 4: one KV-cache step is at least 5x faster than a full re-forward, at context 1000, GPT-2
small shape (random weights), on the CPU.

The step: a cache prefilled with positions 0..998, then model(idx[:, 999:1000], kv_cache=cache) (the
cache is cropped back to 999 before every call, so each call is the same step). The re-forward:
model(idx[:, :1000]) with rec=None and no targets (nanoGPT's inference path: last-position logits).
Both give the next-token logits for position 999, and the script checks they agree before timing.

    .venv/bin/python -m bench.bench_kv [--quick] [--threads N] [--context N]
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from bench import DEFAULT_THREADS, goal, interleaved, machine, ms, ratio, set_threads, table, verdict
from gpt.config import GPTConfig
from gpt.kv_cache import KVCache
from gpt.model import GPT

GOAL_SPEEDUP = 5.0


def bench_kv(context: int, reps: int, seed: int = 0) -> dict[str, Any]:
    """Interleaved timing of the cached step and the full re-forward at `context` tokens."""
    cfg = GPTConfig.preset("gpt2")
    if not 1 < context <= cfg.block_size:
        raise ValueError(f"--context must be in 2..{cfg.block_size}, got {context}")
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    idx = torch.randint(cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(seed + 1))
    cache = KVCache.for_model(model)
    prefix, last = idx[:, :context - 1], idx[:, context - 1:]  # (1, context-1), (1, 1)
    with torch.no_grad():
        model(prefix, kv_cache=cache)  # prefill positions 0..context-2

        def step() -> torch.Tensor:
            cache.crop(context - 1)
            return model(last, kv_cache=cache)[0]  # (1, 1, V)

        def full() -> torch.Tensor:
            return model(idx)[0]  # (1, 1, V): last position only
        diff = (step() - full()).abs().max().item()
        if diff > 1e-3:
            raise AssertionError(f"KV-cache step and full forward disagree: max |dlogit| {diff:.2e}")
        t = interleaved({"kv step": step, "full re-forward": full}, reps=reps, warmup=1)
    r = ratio(t.primary["full re-forward"], t.primary["kv step"])
    rw = ratio(t.wall["full re-forward"], t.wall["kv step"])
    return {"context": context, "reps": reps, "clock": t.clock,
            "step_ms": ms(t.primary["kv step"]), "full_ms": ms(t.primary["full re-forward"]),
            "speedup": r["median_of_ratios"], "speedup_q25": r["q25"], "speedup_q75": r["q75"],
            "speedup_of_medians": r["ratio_of_medians"],
            "wall_step_ms": ms(t.wall["kv step"]), "wall_full_ms": ms(t.wall["full re-forward"]),
            "wall_speedup": rw["median_of_ratios"], "max_abs_logit_diff": diff}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_kv", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (default 1)")
    ap.add_argument("--context", type=int, default=1000, help="tokens of context (default 1000)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 7, quick 3)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    reps = args.reps or (3 if args.quick else 7)
    print(f"== bench_kv: KV-cache step vs full re-forward, GPT-2 small, context {args.context}; "
          f"torch threads {args.threads}")
    res = bench_kv(args.context, reps)
    ok = res["speedup"] >= GOAL_SPEEDUP
    print(table(["context", "reps", f"kv step ms ({res['clock']})", f"full ms ({res['clock']})", "speedup",
                 "IQR", "wall speedup", "max|dlogit|", f">= {GOAL_SPEEDUP}x"],
                [[res["context"], reps, res["step_ms"], res["full_ms"], res["speedup"],
                  f"{res['speedup_q25']:.1f}-{res['speedup_q75']:.1f}", res["wall_speedup"],
                  f"{res['max_abs_logit_diff']:.1e}", verdict(ok)]]))
    return {"script": "bench_kv", "machine": machine(), **res,
            "goals": [goal(f"KV-cache step vs full re-forward, GPT-2 small, context {args.context}, CPU",
                           f"{res['step_ms']:.1f} ms", f"{res['full_ms']:.1f} ms (full re-forward)",
                           round(res["speedup"], 1), f">= {GOAL_SPEEDUP}x faster", ok,
                           f"{res['clock']} time, {args.threads} thread(s); median of {reps} interleaved "
                           f"ratios; wall-clock speedup {res['wall_speedup']:.1f}x")]}


if __name__ == "__main__":
    main()
