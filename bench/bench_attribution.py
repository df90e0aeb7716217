"""Attribution: direct logit attribution for every position, and the information-flow contributions
and graph (gpt.attribution, gpt.flow), against the goals of issue 15 and against patching.

Goals, CPU, 1 torch thread, CPU clock, each timing including its own recorded forward:
  - dla_all (DLA of every position's top prediction) on the bundled model at T=256: <= 150 ms;
  - contributions + graph(0.04, last position) on the bundled model at T=256: <= 1 s;
  - a GPT-2-small-shaped random model at T=128: both reported (no goal).
The same question by patching (bundled model, T=256): which residual streams, attention outputs, MLP
outputs and heads at which positions carry the prediction at the last position, i.e. the four
gpt.patching sweeps resid_pre, attn_out, mlp_out and head_pos (every node the graph can draw, heads per
position), metric logit_diff of the clean and corrupted runs' answers, the corrupted prompt swapping
the middle token (a cell before it is the unpatched run and costs nothing). Patching also needs that
corrupted prompt; attribution needs none. Reported: the sweeps' time over contributions + graph,
beside LLM-TT's claim of about 100x, and the naive cost (one full forward per cell) over the same.
The DLA sums are checked against the logits (max |sum - logit| reported). dla_all and the flow are
timed interleaved (order rotating); the sweeps, much slower, once per repetition.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_attribution [--quick] [--only bundled|gpt2]
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench import DEFAULT_THREADS, case_args, goal, interleaved, machine, ms, set_threads, table, verdict
from gpt import attribution, flow, patching
from gpt.config import GPTConfig
from gpt.model import GPT

ROOT = Path(__file__).resolve().parent.parent
GOAL_DLA_MS, GOAL_FLOW_MS, LLMTT_CLAIM = 150.0, 1000.0, 100.0
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.\n")
PATCH_SITES = ("resid_pre", "attn_out", "mlp_out", "head_pos")


def case(name: str) -> tuple[GPT, list[int]]:
    """(model in eval mode, prompt ids) for "bundled" (T=256) or "gpt2" (random weights, T=128)."""
    if name == "bundled":
        from gpt.checkpoint import load

        model, tok, _ = load(ROOT / "checkpoints" / "shakespeare-char")
        ids = tok.encode(TEXT * 3)[:256]
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("gpt2"))
        ids = torch.randint(model.config.vocab_size, (128,), generator=torch.Generator().manual_seed(1)).tolist()
    return model.eval(), ids


def exactness(model: GPT, ids: list[int]) -> float:
    """max |sum of the DLA terms - the model's logit| over every position (plain forward's logits)."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        logits = model(idx, targets=idx)[0][0].double()  # (T, V)
    every = attribution.dla_all(model, ids)
    want = logits.gather(1, torch.tensor(every.tokens)[:, None])[:, 0]
    return float((every.values.sum(1) - want).abs().max())


def patch_all(model: GPT, ids: list[int]) -> dict[str, Any]:
    """The four sweeps on a corrupted prompt (middle token swapped): CPU seconds each, cells, and
    the cells that needed a forward."""
    corrupt = list(ids)
    mid = len(ids) // 2
    corrupt[mid] = (ids[mid] + 1) % model.config.vocab_size
    with torch.no_grad():
        lc, lx = model(torch.tensor([ids]))[0][0, -1], model(torch.tensor([corrupt]))[0][0, -1]
    a, b = int(lc.argmax()), int(lx.argmax())
    if a == b:
        b = int(lc.topk(2).indices[1])
    out: dict[str, Any] = {"cells": 0, "computed": 0, "s": 0.0, "per_site_s": {}}
    for site in PATCH_SITES:
        c0 = time.process_time()
        res = patching.sweep(model, ids, corrupt, site, patching.logit_diff(a, b))
        dt = time.process_time() - c0
        out["per_site_s"][site] = dt
        out["s"] += dt
        out["cells"] += res.values.numel()
        out["computed"] += res.computed
    return out


def one_forward_s(model: GPT, ids: list[int], reps: int = 3) -> float:
    idx = torch.tensor([ids])
    ts = []
    with torch.no_grad():
        for _ in range(reps):
            c0 = time.process_time()
            model(idx)
            ts.append(time.process_time() - c0)
    return statistics.median(ts)


def bench_case(name: str, reps: int, patch_reps: int) -> dict[str, Any]:
    model, ids = case(name)
    runs = {"dla_all": lambda: attribution.dla_all(model, ids),
            "flow": lambda: flow.contributions(model, ids).graph(flow.DEFAULT_THRESHOLD, -1)}
    t = interleaved(runs, reps, warmup=1)
    row: dict[str, Any] = {"case": name, "T": len(ids), "reps": reps, "clock": t.clock,
                           "dla_ms": ms(t.primary["dla_all"]), "flow_ms": ms(t.primary["flow"]),
                           "dla_wall_ms": ms(t.wall["dla_all"]), "flow_wall_ms": ms(t.wall["flow"]),
                           "max_sum_error": exactness(model, ids),
                           "flow_floats": flow.cost(model.config.n_layer, model.config.n_head, model.config.n_embd, len(ids))}
    if patch_reps:
        sweeps = [patch_all(model, ids) for _ in range(patch_reps)]
        best = min(sweeps, key=lambda s: s["s"])
        fwd = one_forward_s(model, ids)
        row.update(patch_s=best["s"], patch_cells=best["cells"], patch_computed=best["computed"],
                   patch_per_site_s=best["per_site_s"], forward_ms=1000 * fwd,
                   patch_ratio=best["s"] / (row["flow_ms"] / 1000),
                   naive_ratio=best["cells"] * fwd / (row["flow_ms"] / 1000))
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = case_args("python -m bench.bench_attribution", __doc__, DEFAULT_THREADS).parse_args(argv)
    set_threads(args.threads)
    print(f"== bench_attribution: DLA, contributions + graph, and patching the same question; "
          f"torch threads {args.threads}")
    rows = []
    for name in [args.only] if args.only else ["bundled", "gpt2"]:
        reps = {"bundled": 5 if args.quick else 15, "gpt2": 2 if args.quick else 5}[name]
        rows.append(bench_case(name, reps, (1 if args.quick else 2) if name == "bundled" else 0))
    goals = []
    for r in rows:
        exact = f"max |DLA sum - logit| {r['max_sum_error']:.1e}"
        if r["case"] == "bundled":
            goals.append(goal(f"dla_all, bundled, T={r['T']}", f"{r['dla_ms']:.0f} ms", None, None,
                              f"<= {GOAL_DLA_MS:.0f} ms", r["dla_ms"] <= GOAL_DLA_MS,
                              f"{r['clock']} time, median of {r['reps']}; {exact}"))
            goals.append(goal(f"contributions + graph, bundled, T={r['T']}", f"{r['flow_ms']:.0f} ms", None, None,
                              f"<= {GOAL_FLOW_MS:.0f} ms", r["flow_ms"] <= GOAL_FLOW_MS,
                              f"{r['clock']} time, median of {r['reps']}"))
            goals.append(goal("patching the same question / contributions + graph", f"{r['flow_ms']:.0f} ms",
                              f"{r['patch_s'] * 1000:.0f} ms", round(r["patch_ratio"], 1),
                              f"report (LLM-TT claims ~{LLMTT_CLAIM:.0f}x)", None,
                              f"4 batched sweeps ({', '.join(PATCH_SITES)}), {r['patch_computed']} of "
                              f"{r['patch_cells']} cells needed a forward; one full forward per cell would take "
                              f"{r['naive_ratio']:.0f}x the attribution time", status="REPORTED"))
        else:
            goals.append(goal(f"dla_all and contributions + graph, GPT-2-small shape, T={r['T']}",
                              f"{r['dla_ms']:.0f} ms + {r['flow_ms']:.0f} ms", None, None, "report", None,
                              f"{r['clock']} time, median of {r['reps']}; {exact}", status="REPORTED"))
    print()
    print(table(["case", "T", "reps", "dla_all ms", "flow+graph ms", "wall ms (dla, flow)", "max|sum-logit|",
                 "patch sweeps ms", "patch / flow", "naive / flow"],
                [[r["case"], r["T"], r["reps"], r["dla_ms"], r["flow_ms"],
                  f"{r['dla_wall_ms']:.0f}, {r['flow_wall_ms']:.0f}", f"{r['max_sum_error']:.1e}",
                  r.get("patch_s", 0) * 1000 if "patch_s" in r else None,
                  round(r["patch_ratio"], 1) if "patch_ratio" in r else None,
                  round(r["naive_ratio"]) if "naive_ratio" in r else None] for r in rows]))
    print()
    print(table(["goal", "measured", "target", "verdict"],
                [[g["goal"], g["measured"], g["target"], g["status"] or verdict(g["passed"])] for g in goals]))
    for g in goals:
        print(f"- {g['goal']}: {g['note']}")
    return {"script": "bench_attribution", "machine": machine(), "rows": rows, "goals": goals}


if __name__ == "__main__":
    main()
