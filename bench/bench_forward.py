"""Goal 1: our forward with rec=None costs no more than nanoGPT's (ours/peer <= 1.03x).

Both models get the same config and the same weights (nanoGPT's GPT loads our state dict; the keys
are identical), run in eval mode under torch.no_grad, and are timed interleaved in one run.
Targets are given, so both compute logits for every position and the loss; `--last` adds the
inference case (no targets: both compute the last position's logits only).
The two models must agree to float rounding; the script checks that before it times anything.
A third variant times ours again (A/A control): its ratio to ours shows this run's noise floor, and
when that is off by more than the 3 % margin the goal is reported INCONCLUSIVE, not PASS or FAIL
(`--quick` on a busy machine often is: use the full run for the figure).

    .venv/bin/python -m bench.bench_forward [--quick] [--threads N] [--last]
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from bench import DEFAULT_THREADS, goal, interleaved, machine, ms, ratio, set_threads, table, verdict
from bench.peers import how_to_get, load_nanogpt, nanogpt_model, peer_description
from gpt.config import GPTConfig
from gpt.model import GPT

GOAL_RATIO = 1.03

# (name, config, B, T, reps, quick reps). nanoGPT uses exact GELU, so GPT-2's shape runs with it too.
CASES = [
    ("baby 6x384 B=4 T=256", GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384),
     4, 256, 40, 12),
    ("gpt2 12x768 B=1 T=128", GPTConfig.preset("gpt2", activation="gelu"), 1, 128, 20, 8),
]


def bench_case(name: str, cfg: GPTConfig, B: int, T: int, reps: int, with_targets: bool,
               seed: int = 0) -> dict[str, Any]:
    """Time ours against nanoGPT's on one shape; returns medians (ms), ratios and the max |logit diff|."""
    torch.manual_seed(seed)
    ours = GPT(cfg).eval()
    peer = nanogpt_model(cfg, ours.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(cfg.vocab_size, (B, T), generator=g)  # (B, T)
    tgt = torch.randint(cfg.vocab_size, (B, T), generator=g) if with_targets else None
    with torch.no_grad():
        lo, loss_o = ours(idx, tgt)
        lp, loss_p = peer(idx, tgt)
        diff = (lo - lp).abs().max().item()
        if lo.shape != lp.shape or diff > 1e-4:
            raise AssertionError(f"{name}: ours and nanoGPT disagree (shapes {tuple(lo.shape)} vs "
                                 f"{tuple(lp.shape)}, max |diff| {diff:.2e})")

        def run_ours() -> None:
            ours(idx, tgt)

        def run_peer() -> None:
            peer(idx, tgt)
        # "ours again" is an A/A control: its ratio to "ours" is the noise floor of this run
        t = interleaved({"ours": run_ours, "peer": run_peer, "ours again": run_ours}, reps=reps, warmup=2)
    r = ratio(t.primary["ours"], t.primary["peer"])
    aa = ratio(t.primary["ours again"], t.primary["ours"])
    rw = ratio(t.wall["ours"], t.wall["peer"])
    return {"case": name, "targets": with_targets, "B": B, "T": T, "reps": reps, "clock": t.clock,
            "ours_ms": ms(t.primary["ours"]), "peer_ms": ms(t.primary["peer"]),
            "ratio": r["median_of_ratios"], "ratio_of_medians": r["ratio_of_medians"],
            "ratio_q25": r["q25"], "ratio_q75": r["q75"],
            "wall_ours_ms": ms(t.wall["ours"]), "wall_peer_ms": ms(t.wall["peer"]),
            "wall_ratio": rw["median_of_ratios"], "wall_ratio_q25": rw["q25"], "wall_ratio_q75": rw["q75"],
            "aa_ratio": aa["median_of_ratios"], "aa_q25": aa["q25"], "aa_q75": aa["q75"],
            "max_abs_logit_diff": diff}


def decide(res: dict[str, Any]) -> tuple[bool | None, str | None, str]:
    """(passed, status, note) for one case. When the A/A control (ours against itself, which should
    be 1.000) is further from 1 than the goal's 3 % margin, this run cannot resolve the goal either
    way: it is reported INCONCLUSIVE (passed None) rather than PASS or FAIL."""
    if abs(res["aa_ratio"] - 1.0) > GOAL_RATIO - 1.0:
        return None, "INCONCLUSIVE", (f"; A/A control off by {abs(res['aa_ratio'] - 1):.1%}, more than the "
                                      f"{GOAL_RATIO - 1:.0%} margin: rerun without --quick or on a quieter machine")
    return res["ratio"] <= GOAL_RATIO, None, ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_forward", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (default 1)")
    ap.add_argument("--last", action="store_true", help="also time inference without targets (last position)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    out: dict[str, Any] = {"script": "bench_forward", "machine": machine(), "peer": peer_description(),
                           "cases": [], "goals": []}
    print(f"== bench_forward: ours (rec=None) vs nanoGPT forward; torch threads {args.threads}")
    if load_nanogpt() is None:
        print(how_to_get())
        out["goals"].append(goal("forward rec=None vs nanoGPT", None, None, None, f"<= {GOAL_RATIO}x",
                                 None, "peer not found: skipped"))
        return out
    print(f"peer: {out['peer']}")
    modes = [True, False] if args.last else [True]
    for name, cfg, B, T, reps, qreps in CASES:
        for with_targets in modes:
            res = bench_case(name, cfg, B, T, qreps if args.quick else reps, with_targets)
            out["cases"].append(res)
            mode = "full logits+loss" if with_targets else "last-position logits"
            ok, status, why = decide(res)
            out["goals"].append(goal(f"forward rec=None vs nanoGPT, {name}, {mode}",
                                     f"{res['ours_ms']:.1f} ms", f"{res['peer_ms']:.1f} ms",
                                     round(res["ratio"], 3), f"<= {GOAL_RATIO}x", ok,
                                     f"{res['clock']} time; median of {res['reps']} interleaved pair ratios, IQR "
                                     f"{res['ratio_q25']:.3f}-{res['ratio_q75']:.3f}; wall-clock ratio "
                                     f"{res['wall_ratio']:.3f}; A/A control (ours/ours) {res['aa_ratio']:.3f}{why}",
                                     status))
    rows = [[c["case"], "yes" if c["targets"] else "no", c["reps"], c["ours_ms"], c["peer_ms"], c["ratio"],
             f"{c['ratio_q25']:.3f}-{c['ratio_q75']:.3f}", c["ratio_of_medians"], c["wall_ratio"],
             f"{c['wall_ratio_q25']:.3f}-{c['wall_ratio_q75']:.3f}", c["aa_ratio"],
             f"{c['aa_q25']:.3f}-{c['aa_q75']:.3f}", f"{c['max_abs_logit_diff']:.1e}",
             decide(c)[1] or verdict(decide(c)[0])]
            for c in out["cases"]]
    clock = out["cases"][0]["clock"] if out["cases"] else "cpu"
    print(table(["case", "targets", "reps", f"ours ms ({clock})", f"nanoGPT ms ({clock})", "ratio", "ratio IQR",
                 "ratio of medians", "wall ratio", "wall IQR", "A/A ratio", "A/A IQR", "max|dlogit|", f"<= {GOAL_RATIO}x"], rows))
    return out


if __name__ == "__main__":
    main()
