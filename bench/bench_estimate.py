"""The Train page's time estimate against real runs: each estimate within 1.5x of the run's time.

For each case, in this order, on this machine:
  1. the new estimate: a fresh trainers.steptimer.StepTimer (a worker process started as a run's
     process is, so its own start is timed too) times the case's step; trainers.estimate adds up
     the run (app.resources.train_estimate does the same on the page);
  2. the previous estimate (issue 12's "4-18x too pessimistic"), measured here the way the old
     code did: the tiny preset's tokens/s on this process's threads, scaled by FLOPs per token,
     plus evaluations at a third of a training token each;
  3. the real run, started as the Train page starts it (trainers.runs.start: a detached
     `python -m trainers.train` on default_threads()), timed from start() until its status says
     finished.
Goal: 1/1.5 <= new estimate / real <= 1.5 for every case. The machine is shared, so both sides
are measured back to back, and the ratio is what counts, not the seconds.

    .venv/bin/python -m bench.bench_estimate [--quick] [--cases tiny:200 cpu-small:60 ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import goal, machine, table, verdict
from gpt.config import GPTConfig
from gpt.model import GPT
from trainers import estimate as te
from trainers import runs
from trainers.config import TrainConfig
from trainers.machine import default_threads
from trainers.steptimer import StepTimer

TARGET = 1.5
# (preset, max_iters, overrides): the cases, shortened to fit a bench run on 2 cores; the
# baby shape at a batch of 8 with 2 eval batches (at its own batch of 64 a step takes over a
# minute on one thread here: hours for any real run), timed at fewer rows and scaled
CASES = {"tiny:200": ("tiny", 200, {}), "tiny:2000": ("tiny", 2000, {}),
         "cpu-small:60": ("cpu-small", 60, {}), "cpu-small:300": ("cpu-small", 300, {}),
         "baby-b8:10": ("baby", 10, {"batch_size": 8, "eval_iters": 2})}
QUICK = ["tiny:200", "cpu-small:60"]


def previous_estimate(cfg: TrainConfig) -> float:
    """The code this replaced (trainers/estimate.py before issue 12): tiny's fastest of 3 AdamW
    steps at batch 8 on this process's threads (torch's default, as in the app's server), scaled
    by FLOPs per token to the run's model."""
    tiny = GPTConfig.preset("tiny")
    model = GPT(tiny)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x = torch.randint(tiny.vocab_size, (8, tiny.block_size), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    ref_tps = 8 * tiny.block_size / min(times)
    mc = te.run_model_config(cfg)
    tps = ref_tps * te.flops_per_token(tiny) / te.flops_per_token(mc)
    evals = cfg.max_iters // cfg.eval_interval + 1
    eval_tokens = evals * 2 * cfg.eval_iters * cfg.batch_size * mc.block_size / 3
    return (cfg.max_iters * cfg.batch_size * cfg.grad_accum * mc.block_size + eval_tokens) / tps


def real_seconds(cfg: TrainConfig, root: Path) -> float:
    t0 = time.perf_counter()
    name = runs.start(cfg, root)
    while (st := runs.status(name, root))["state"] in runs.LIVE_STATES:
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    if st["state"] != "finished":
        raise RuntimeError(f"{name}: {st}")
    while st.get("pid") and runs.pid_alive(st["pid"]):
        time.sleep(0.05)
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only {' '.join(QUICK)}")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), help="which cases (default: all)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    names = args.cases or (QUICK if args.quick else list(CASES))
    rows, goals, out = [], [], {"machine": machine(), "threads": default_threads(), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        for i, name in enumerate(names):
            preset, iters, over = CASES[name]
            cfg = TrainConfig.from_preset(preset, data="python-docs", max_iters=iters, **over)
            timer = StepTimer()
            try:
                t0 = time.perf_counter()
                cost = timer.measure(te.run_model_config(cfg), cfg.batch_size, default_threads())
                measuring = time.perf_counter() - t0
            finally:
                timer.close()
            est = te.estimate_run(cfg, cost)
            old = previous_estimate(cfg)
            real = real_seconds(cfg, Path(tmp) / str(i))
            ratio, old_ratio = est.seconds / real, old / real
            ok = 1 / TARGET <= ratio <= TARGET
            out["cases"][name] = {"estimate_s": round(est.seconds, 1), "real_s": round(real, 1),
                                  "ratio": round(ratio, 3), "previous_estimate_s": round(old, 1),
                                  "previous_ratio": round(old_ratio, 2), "measuring_s": round(measuring, 1),
                                  "startup_s": round(cost.startup_s, 1), "step_ms": round(1000 * cost.iter_s(), 1),
                                  "rows": cost.rows, "batch_size": cost.batch_size, "steps": cost.steps}
            rows.append([name, est.seconds, real, ratio, old, old_ratio, measuring, cost.startup_s,
                         f"{cost.rows}/{cost.batch_size}", verdict(ok)])
            goals.append(goal(f"estimate of {name} within {TARGET}x of the real run", round(est.seconds, 1),
                              round(real, 1), round(ratio, 3), f"1/{TARGET}..{TARGET}", ok,
                              f"previous estimate {old:.0f} s ({old_ratio:.1f}x)"))
    print(table(["case", "estimate s", "real s", "ratio", "previous s", "prev ratio", "timing s",
                 "start s", "rows", "goal"], rows))
    out["goals"] = goals
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
