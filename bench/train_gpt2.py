"""`bench.bench_train --gpu-gpt2`: GPT-2 124M on one GPU, our trainer against nanoGPT's train.py.

The same model (12 layers, 12 heads, n_embd 768, block 1024, no biases, dropout 0, vocabulary
padded to 50304), batch 12, grad accumulation 1, bf16, compile on both, the same hyperparameters
(config/train_gpt2.py: lr 6e-4 with 2000 warmup steps, beta2 0.95, weight decay 0.1, clip 1.0) and
the same data: Tiny Shakespeare in GPT-2 BPE, which nanoGPT reads as data/shakespeare/train.bin and
val.bin. Those two files must hold our corpus's split (`write_peer_data` writes them from
`Corpus.load("shakespeare", "gpt2")`; nanoGPT's own prepare.py downloads, so it is not used).

  nanoGPT: python train.py config/train_gpt2.py --dataset=shakespeare --gradient_accumulation_steps=1
           --max_iters=N --eval_interval=1000 --eval_iters=20 --wandb_log=False --out_dir=...
  ours:    python -m trainers.train --preset gpt2 --data shakespeare --grad-accum 1 --max-iters N
           --eval-interval 1000 --eval-iters 20 --device cuda --compile --no-snapshots

Goals: ms/iter >= 1.2x faster than nanoGPT's (median over the sync windows after --warmup); train
loss within 0.05 of nanoGPT's, as the mean of the logged losses (every 10th iteration, both seeded
1337) over each 100 iterations from 100 to N. Both runs init the same weights (same seed, same
module order); their batches are each trainer's own random draws, hence the means over windows.
MFU = nanoGPT's FLOPs per token (6N + 12 L H Q T) x tokens/s over the H200's 989 TFLOP/s dense bf16
spec, and over the 790 TFLOP/s a bf16 matmul reaches there (the device docs' measurement).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import goal, table
from bench.train_common import (ITER_RE, finish, nanogpt_dir, parse_nanogpt, parse_ours, read_rows, run_pair,
                                work_dir)

RATIO, LOSS_TOL = 1.2, 0.05
PEAK_SPEC, PEAK_MEASURED = 989e12, 790e12  # H200 dense bf16: datasheet, and an 8192^3 matmul there
B, T, L, H, C, V = 12, 1024, 12, 12, 768, 50304


def flops_per_token() -> float:
    """nanoGPT's estimate_mfu numerator for one token: 6N + 12 L H Q T (N without wpe)."""
    n = V * C + L * (12 * C * C + 2 * C) + C  # no biases: 4C^2 attention + 8C^2 MLP, 2 LayerNorms
    return 6 * n + 12 * L * H * (C // H) * T


def write_peer_data(peer: Path) -> dict[str, int]:
    """data/shakespeare/{train,val}.bin in `peer`: our GPT-2 BPE split of Tiny Shakespeare."""
    from trainers.data import Corpus
    c = Corpus.load("shakespeare", "gpt2", T)
    d = peer / "data" / "shakespeare"
    d.mkdir(parents=True, exist_ok=True)
    c.train.numpy().astype(np.uint16).tofile(d / "train.bin")
    c.val.numpy().astype(np.uint16).tofile(d / "val.bin")
    return {"train": len(c.train), "val": len(c.val)}


def window_means(losses: dict[int, float], lo: int, hi: int, width: int = 100) -> dict[str, float]:
    """{"a-b": mean of the logged losses at iterations a <= it < b} for windows of `width`."""
    out = {}
    for a in range(lo, hi, width):
        xs = [v for it, v in losses.items() if a <= it < a + width]
        if xs:
            out[f"{a}-{a + width}"] = statistics.fmean(xs)
    return out


def run(args: argparse.Namespace, out: dict[str, Any]) -> dict[str, Any]:
    """Both trainers, one after the other; figures and goals into `out`. args: bench_train's
    (gpt2_iters, warmup, ours_flags, keep)."""
    peer = nanogpt_dir()
    out["mode"] = "gpu-gpt2"
    if not (peer / "train.py").is_file():
        print(f"nanoGPT's train.py not found in {peer}; set NANOGPT_DIR. Skipped.")
        out["goals"].append(goal("GPT-2 trainer vs nanoGPT", None, None, None, "-", None, "peer not found: skipped"))
        return out
    out["peer_data_tokens"] = write_peer_data(peer)
    iters = args.gpt2_iters
    warmup = args.warmup if args.warmup is not None else 50
    tmp = work_dir(args.keep, "bench_gpt2_")
    py, env = sys.executable, dict(os.environ, PYTHONUNBUFFERED="1")
    ng_cmd = [py, "train.py", "config/train_gpt2.py", "--dataset=shakespeare", "--gradient_accumulation_steps=1",
              f"--max_iters={iters}", "--eval_interval=1000", "--eval_iters=20", "--wandb_log=False",
              f"--out_dir={tmp / 'nanogpt'}"]
    ours_cmd = [py, "-m", "trainers.train", "--preset", "gpt2", "--data", "shakespeare", "--grad-accum", "1",
                "--max-iters", str(iters), "--eval-interval", "1000", "--eval-iters", "20", "--device", "cuda",
                "--compile", "--no-snapshots", *shlex.split(args.ours_flags), "--root", str(tmp), "--name", "ours"]
    procs = run_pair(out, ng_cmd, ours_cmd, peer, tmp, env, 0.0, 3600, f"logs in {tmp}")
    ng, ours = parse_nanogpt(procs[0], 1000, warmup), parse_ours(tmp / "ours", 1000, warmup)
    ng_loss = {int(m.group(1)): float(m.group(2)) for _, ln in procs[0].lines if (m := ITER_RE.match(ln))}
    ours_loss = {r["iter"]: r["train_loss"] for r in read_rows(tmp / "ours") if "train_loss" in r}
    ng_ms, ours_ms = 1000 * ng["s_per_iter"], 1000 * ours["s_per_iter"]
    speedup, tpi, fpt = ng_ms / ours_ms, B * T, flops_per_token()
    wn, wo = window_means(ng_loss, 100, iters), window_means(ours_loss, 100, iters)
    diffs = {k: round(wo[k] - wn[k], 4) for k in wn if k in wo}
    device_line = procs[1].first_line("device:")

    def mfu(ms: float) -> str:
        f = fpt * tpi / (ms / 1000)
        return f"{f / PEAK_SPEC:.1%} / {f / PEAK_MEASURED:.1%}"

    out.update(nanogpt=ng, ours=ours, speedup=speedup, loss_windows={"nanogpt": wn, "ours": wo, "diff": diffs},
               loss_at={"nanogpt": ng_loss, "ours": ours_loss}, ours_device_line=device_line,
               flops_per_token=fpt, mfu_spec={"nanogpt": fpt * tpi / ng["s_per_iter"] / PEAK_SPEC,
                                              "ours": fpt * tpi / ours["s_per_iter"] / PEAK_SPEC})
    print(table(["trainer", "ms/iter", "tokens/s", "MFU (989 spec / 790 measured)", "its own log",
                 "loss 0 / mean 100-" + str(iters)],
                [["nanoGPT train.py", f"{ng_ms:.2f}", f"{tpi / ng['s_per_iter']:,.0f}", mfu(ng_ms),
                  f"{ng['own_time_col_ms']:.2f} ms (time col)",
                  f"{ng_loss.get(0, float('nan')):.4f} / {statistics.fmean(wn.values()) if wn else float('nan'):.4f}"],
                 ["ours trainers.train", f"{ours_ms:.2f}", f"{tpi / ours['s_per_iter']:,.0f}", mfu(ours_ms),
                  f"{ours['own_tokens_per_s']:,.0f} tok/s",
                  f"{ours_loss.get(0, float('nan')):.4f} / {statistics.fmean(wo.values()) if wo else float('nan'):.4f}"]]))
    print(f"loss windows (mean of logged losses): nanoGPT {wn}\n  ours {wo}\n  ours - nanoGPT {diffs}\n{device_line}")
    note = f"median wall ms/iter over sync windows after iter {warmup}, evals excluded; sequential"
    out["goals"].append(goal("GPU GPT-2 124M ms/iter vs nanoGPT (bf16, compile on both)", f"{ours_ms:.2f} ms",
                             f"{ng_ms:.2f} ms", round(speedup, 3), f">= {RATIO}x", speedup >= RATIO, note))
    worst = max((abs(d) for d in diffs.values()), default=None)
    out["goals"].append(goal(f"GPU GPT-2 train loss vs nanoGPT, means over 100-iteration windows 100-{iters}",
                             wo, wn, worst, f"|diff| <= {LOSS_TOL}", None if worst is None else worst <= LOSS_TOL,
                             "seeded 1337; the same initial weights, each trainer's own batches"))
    return finish(out, tmp, args.keep)
