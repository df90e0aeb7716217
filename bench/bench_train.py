"""Trainer goals: our trainer against nanoGPT's train.py, both full runs, in one invocation.

  --cpu  nanoGPT's CPU line (its README: --device=cpu --compile=False --eval_iters=20 --log_interval=1
         --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
         --lr_decay_iters=2000 --dropout=0.0) against `python -m trainers.train --preset cpu-small
         --data shakespeare --device cpu`; both with the same torch threads (--threads, default 2) and
         OpenMP settings (OMP_WAIT_POLICY unset, as in a user's shell, unless --omp-wait-policy).
         Goals: tokens/s >= 1.2x nanoGPT's; val loss at 2000 within 0.02 of its.
  --gpu  config/train_shakespeare_char.py (compile on) against `--preset baby --compile --device cuda`.
         Goals: ms/iter 1.5x faster than nanoGPT's; best val loss <= nanoGPT's + 0.02.
  --gpu-gpt2  GPT-2 124M: config/train_gpt2.py against `--preset gpt2` on one GPU (bench/train_gpt2.py).

Runs never overlap. On the CPU they are time-sliced by default (--slice S: one runs S seconds while
the other is stopped with SIGSTOP, then they swap), so both meet the same load on a shared machine.
Speed is bench/train_common.py's: the median wall-clock per iteration over the windows between two
host syncs, after the first --warmup iterations. nanoGPT's own "time" column is reported beside it.
Val loss = each trainer's own logged estimate, plus both final models re-scored on the whole
validation split.

nanoGPT is never part of this repository: it is read from $NANOGPT_DIR (default /tmp/nanogpt), with
data/shakespeare_char prepared; if absent this prints how to get it and skips.

    .venv/bin/python -m bench.bench_train --cpu [--quick] [--ours-flags="--compile"] [--slice 15]
    python3 -m bench.bench_train --gpu
    NANOGPT_DIR=.peer python3 -m bench.bench_train --gpu-gpt2 [--gpt2-iters 300]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import goal, machine, table
from bench.train_common import finish, nanogpt_dir, parse_nanogpt, parse_ours, run_pair, work_dir
from trainers.config import PRESETS

CPU_RATIO, GPU_RATIO, LOSS_TOL = 1.2, 1.5, 0.02
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
               "--lr_decay_iters=2000", "--dropout=0.0"]
HOW_TO_GET = (
    "nanoGPT's train.py and prepared data not found in {d}. Prepare them (offline) with:\n"
    "    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt   # or copy it there\n"
    "    cp ../shared/data/tinyshakespeare.txt /tmp/nanogpt/data/shakespeare_char/input.txt\n"
    "    (cd /tmp/nanogpt/data/shakespeare_char && python prepare.py)\n"
    "or point NANOGPT_DIR at such a folder. The trainer comparison is skipped.")


def peer_ready(d: Path) -> bool:
    need = ["train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
            "data/shakespeare_char/train.bin", "data/shakespeare_char/val.bin", "data/shakespeare_char/meta.pkl"]
    return all((d / n).is_file() for n in need)


@torch.no_grad()
def full_val_loss(model: torch.nn.Module, val: torch.Tensor, block: int, device: str) -> float:
    """Mean cross-entropy over the whole validation split, as non-overlapping windows of `block`."""
    model = model.to(device).eval()
    n = (len(val) - 1) // block
    x = val[:n * block].long().view(n, block)  # (N, T)
    y = val[1:n * block + 1].long().view(n, block)  # (N, T)
    total = 0.0
    for i in range(0, n, 64):
        _, loss = model(x[i:i + 64].to(device), y[i:i + 64].to(device))
        total += loss.item() * len(x[i:i + 64])
    return total / n


def rescore(ours_dir: Path, ng_out: Path, peer: Path, device: str) -> dict[str, Any]:
    """Both models' val loss on the whole validation split (ours: final and best; nanoGPT: its ckpt.pt,
    which it saves at its best logged val loss)."""
    import shutil

    from gpt import checkpoint as ckpt
    from trainers.data import Corpus
    corpus = Corpus.load("shakespeare", "char")
    peer_val = torch.from_numpy(np.fromfile(peer / "data/shakespeare_char/val.bin", dtype=np.uint16)
                                .astype(np.int32))
    out: dict[str, Any] = {"same_val_split": bool(torch.equal(peer_val, corpus.val))}
    for key, path in (("ours_final", ours_dir / "latest"), ("ours_best", ours_dir / "best")):
        model, _, meta = ckpt.load(path)
        out[key] = {"iter": meta.get("iter"), "loss": full_val_loss(model, corpus.val, model.config.block_size, device)}
    if (ng_out / "ckpt.pt").is_file():
        shutil.copy(peer / "data/shakespeare_char/meta.pkl", ng_out / "meta.pkl")  # its tokenizer
        model, _, meta = ckpt.load(ng_out / "ckpt.pt")
        out["nanogpt_ckpt"] = {"iter": meta.get("iter"),
                               "loss": full_val_loss(model, corpus.val, model.config.block_size, device)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="cpu-small vs nanoGPT's CPU line (default without CUDA)")
    mode.add_argument("--gpu", action="store_true", help="baby vs nanoGPT's shakespeare_char, compile on")
    mode.add_argument("--gpu-gpt2", action="store_true", help="gpt2 (124M) vs nanoGPT's train_gpt2 on one GPU")
    ap.add_argument("--gpt2-iters", type=int, default=300, help="iterations of each --gpu-gpt2 run")
    ap.add_argument("--quick", action="store_true", help="300 iterations and 20 eval batches: speed only")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    ap.add_argument("--omp-wait-policy", default="",
                    help="OMP_WAIT_POLICY for both CPU runs (default: unset, as in a user's shell; "
                         "PASSIVE puts idle OpenMP workers to sleep, which makes torch's intra-op "
                         "threads, and so nanoGPT, much slower: 111 against 68 ms/iter here)")
    ap.add_argument("--slice", type=float, default=None, help="seconds per turn when time-slicing the "
                    "two runs (default 15 on CPU, 0 = one after the other on GPU)")
    ap.add_argument("--ours-flags", default="", help="extra flags for our trainer, e.g. '--compile'")
    ap.add_argument("--warmup", type=int, default=None, help="iterations left out of the speed (default "
                    "10 CPU, 100 GPU)")
    ap.add_argument("--keep", type=Path, help="write the runs here (default: a temp folder, deleted)")
    args = ap.parse_args(argv)
    if args.gpu_gpt2:
        from bench.train_gpt2 import run
        return run(args, {"script": "bench_train", "machine": machine(), "goals": []})
    gpu = args.gpu or (not args.cpu and torch.cuda.is_available())
    out: dict[str, Any] = {"script": "bench_train", "mode": "gpu" if gpu else "cpu", "machine": machine(),
                           "goals": []}
    peer = nanogpt_dir()
    print(f"== bench_train --{out['mode']}: our trainer vs nanoGPT's train.py ({peer})")
    if not peer_ready(peer):
        print(HOW_TO_GET.format(d=peer))
        out["goals"].append(goal("trainer vs nanoGPT", None, None, None, "-", None, "peer not found: skipped"))
        return out
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    iters = 300 if args.quick else (5000 if gpu else 2000)
    preset = "baby" if gpu else "cpu-small"
    ev = PRESETS[preset].eval_interval
    warmup = args.warmup if args.warmup is not None else (100 if gpu else 10)
    slice_s = args.slice if args.slice is not None else (0.0 if gpu else 15.0)
    tmp = work_dir(args.keep, "bench_train_")
    py = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not gpu:
        env["OMP_NUM_THREADS"] = str(args.threads)
        if args.omp_wait_policy:
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    ng_cmd = [py, "train.py", "config/train_shakespeare_char.py", *(NANOGPT_CPU if not gpu else []),
              f"--out_dir={tmp / 'nanogpt'}"]
    ours_cmd = [py, "-m", "trainers.train", "--preset", preset, "--data", "shakespeare", "--device",
                "cuda" if gpu else "cpu", *(["--compile"] if gpu else ["--threads", str(args.threads)]),
                *shlex.split(args.ours_flags), "--root", str(tmp), "--name", "ours"]
    if args.quick:  # same schedule shape, fewer steps and eval batches: a speed check only
        ng_cmd += [f"--max_iters={iters}", "--eval_iters=20"]
        ours_cmd += ["--max-iters", str(iters), "--lr-decay-iters", str(PRESETS[preset].max_iters),
                     "--eval-iters", "20"]
    out.update(slice_s=slice_s, threads=None if gpu else args.threads,
               omp_wait_policy=None if gpu else args.omp_wait_policy)
    how = f"time-sliced, {slice_s:g} s turns" if slice_s > 0 else "one after the other"
    if not gpu:
        how += f"; threads {args.threads}, OMP_WAIT_POLICY={args.omp_wait_policy or '(unset)'}"
    procs = run_pair(out, ng_cmd, ours_cmd, peer, tmp, env, slice_s, 4 * 3600, f"{how}; logs in {tmp}")
    ng = parse_nanogpt(procs[0], ev, warmup)
    ours = parse_ours(tmp / "ours", ev, warmup)
    cfg = PRESETS[preset]
    tokens_per_iter = cfg.batch_size * cfg.block_size
    ng_ms, ours_ms = 1000 * ng["s_per_iter"], 1000 * ours["s_per_iter"]
    speedup = ng_ms / ours_ms
    device_line = procs[1].first_line("device:")
    out.update(nanogpt=dict(ng, active_s=round(procs[0].active_s, 1)),
               ours=dict(ours, active_s=round(procs[1].active_s, 1)), ours_device_line=device_line,
               speedup=speedup, tokens_per_iter=tokens_per_iter)
    at = min(iters, max(ng["evals"]) if ng["evals"] else iters)
    ng_val, ours_val = ng["evals"].get(at), ours["evals"].get(at)
    ng_best = min(ng["evals"].values()) if ng["evals"] else None
    ours_best = min(ours["evals"].values()) if ours["evals"] else None
    rs = rescore(tmp / "ours", tmp / "nanogpt", peer, "cuda" if gpu else "cpu")
    out["rescore_full_val"] = rs
    rows = [["nanoGPT train.py", f"{ng_ms:.2f}", f"{tokens_per_iter / ng['s_per_iter']:,.0f}",
             f"{ng['own_time_col_ms']:.2f} (its time col)", ng_val, ng_best,
             f"{rs.get('nanogpt_ckpt', {}).get('loss', float('nan')):.4f} @{rs.get('nanogpt_ckpt', {}).get('iter')}",
             f"{procs[0].active_s:.0f}"],
            ["ours trainers.train", f"{ours_ms:.2f}", f"{tokens_per_iter / ours['s_per_iter']:,.0f}",
             f"{ours['own_tokens_per_s']:,.0f} tok/s (its log)", ours_val, ours_best,
             f"{rs['ours_final']['loss']:.4f} @{rs['ours_final']['iter']} (best/ {rs['ours_best']['loss']:.4f})",
             f"{procs[1].active_s:.0f}"]]
    print(table(["trainer", "ms/iter", "tokens/s", "own log", f"val@{at}", "best val",
                 "full-val rescore", "run s (active)"], rows))
    out["loadavg_after"] = machine()["loadavg_1m"]
    print(f"speedup (nanoGPT ms/iter / ours): {speedup:.3f}x; load avg {out['machine']['loadavg_1m']} -> "
          f"{out['loadavg_after']}; windows dropped as paused: nanoGPT "
          f"{ng['dropped_windows']}, ours {ours['dropped_windows']}; {device_line}")
    note = (f"median wall ms/iter over sync windows after iter {warmup}, evals excluded; "
            f"{'time-sliced ' + str(slice_s) + ' s' if slice_s > 0 else 'sequential'}")
    if gpu:
        out["goals"].append(goal("GPU baby ms/iter vs nanoGPT (compile on both)", f"{ours_ms:.2f} ms",
                                 f"{ng_ms:.2f} ms", round(speedup, 3), f">= {GPU_RATIO}x",
                                 speedup >= GPU_RATIO, note))
        ok = None if args.quick or ng_best is None or ours_best is None else ours_best <= ng_best + LOSS_TOL
        out["goals"].append(goal("GPU baby best val loss vs nanoGPT", ours_best, ng_best,
                                 None if ok is None else round(ours_best - ng_best, 4),
                                 f"<= nanoGPT + {LOSS_TOL}", ok, "quick run: not judged" if args.quick else
                                 "each trainer's own eval (200 batches per split)"))
    else:
        out["goals"].append(goal(f"CPU cpu-small tokens/s vs nanoGPT ({args.threads} threads each)",
                                 f"{tokens_per_iter / ours['s_per_iter']:,.0f}",
                                 f"{tokens_per_iter / ng['s_per_iter']:,.0f}", round(speedup, 3),
                                 f">= {CPU_RATIO}x", speedup >= CPU_RATIO, note))
        ok = None if args.quick or ng_val is None or ours_val is None else ours_val <= ng_val + LOSS_TOL
        out["goals"].append(goal(f"CPU cpu-small val loss at {at} vs nanoGPT", ours_val, ng_val,
                                 None if ng_val is None or ours_val is None else round(ours_val - ng_val, 4),
                                 f"<= nanoGPT + {LOSS_TOL}", ok, "quick run: not judged" if args.quick else
                                 "each trainer's own eval (20 batches per split)"))
    return finish(out, tmp, args.keep)


if __name__ == "__main__":
    main()
