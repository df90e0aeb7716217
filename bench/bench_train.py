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
Speed = median wall-clock per iteration over the windows between two host syncs (every nanoGPT
"iter" line, stamped on arrival; every one of our metrics rows, by its elapsed_s), leaving out
windows that hold an evaluation or checkpoint, the first --warmup iterations, and windows over 3x
the median (a SIGSTOP pause). nanoGPT's own "time" column is reported beside it. Val loss = each
trainer's own logged estimate, plus both final models re-scored on the whole validation split.

nanoGPT is never part of this repository: it is read from $NANOGPT_DIR (default /tmp/nanogpt), with
data/shakespeare_char prepared; if absent this prints how to get it and skips.

    .venv/bin/python -m bench.bench_train --cpu [--quick] [--ours-flags "--compile"] [--slice 15]
    python3 -m bench.bench_train --gpu
    NANOGPT_DIR=.peer python3 -m bench.bench_train --gpu-gpt2 [--gpt2-iters 300]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import goal, machine, table, verdict
from trainers.config import PRESETS, is_snapshot_iter

REPO = Path(__file__).resolve().parents[1]
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
ITER_RE = re.compile(r"^iter (\d+): loss ([-\d.naif]+), time ([\d.]+)ms")
EVAL_RE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def nanogpt_dir() -> Path:
    return Path(os.environ.get("NANOGPT_DIR") or "/tmp/nanogpt").expanduser()


def peer_ready(d: Path) -> bool:
    need = ["train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
            "data/shakespeare_char/train.bin", "data/shakespeare_char/val.bin", "data/shakespeare_char/meta.pkl"]
    return all((d / n).is_file() for n in need)


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


def parse_ours(run_dir: Path, eval_interval: int, warmup: int) -> dict[str, Any]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    logs = [(r["iter"], r["elapsed_s"]) for r in rows if "train_loss" in r]
    evals = {r["iter"]: r["val_loss"] for r in rows if "val_loss" in r}
    last = logs[-1][0] if logs else 0
    excl = {i for i in range(last + 2) if i % eval_interval == 0 or is_snapshot_iter(i)}
    s_iter, dropped = robust_median(windows(logs, excl, warmup))
    own, _ = robust_median([r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["iter"] >= warmup])
    return {"s_per_iter": s_iter, "dropped_windows": dropped, "own_tokens_per_s": own, "evals": evals,
            "last_iter": last}


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
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
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
    out.update(nanogpt_cmd=shlex.join(ng_cmd), ours_cmd=shlex.join(ours_cmd), slice_s=slice_s,
               threads=None if gpu else args.threads, omp_wait_policy=None if gpu else args.omp_wait_policy)
    how = f"time-sliced, {slice_s:g} s turns" if slice_s > 0 else "one after the other"
    if not gpu:
        how += f"; threads {args.threads}, OMP_WAIT_POLICY={args.omp_wait_policy or '(unset)'}"
    print(f"nanoGPT: (cd {peer} && {shlex.join(ng_cmd)})\nours:    {shlex.join(ours_cmd)}\n"
          f"{how}; logs in {tmp}", flush=True)
    procs = []
    try:
        procs.append(Proc("nanoGPT", ng_cmd, peer, env, tmp / "nanogpt.log"))
        procs.append(Proc("ours", ours_cmd, REPO, env, tmp / "ours.log"))
        run_turns(procs, slice_s, timeout_s=4 * 3600)
    finally:
        for p in procs:
            p.cleanup()
    for p in procs:
        if p.p.returncode != 0:
            tail = "\n".join(ln for _, ln in p.lines[-15:])
            raise RuntimeError(f"{p.name} exited with {p.p.returncode}; see {p.log.name}:\n{tail}")
    ng = parse_nanogpt(procs[0], ev, warmup)
    ours = parse_ours(tmp / "ours", ev, warmup)
    cfg = PRESETS[preset]
    tokens_per_iter = cfg.batch_size * cfg.block_size
    ng_ms, ours_ms = 1000 * ng["s_per_iter"], 1000 * ours["s_per_iter"]
    speedup = ng_ms / ours_ms
    device_line = next((ln for _, ln in procs[1].lines if ln.startswith("device:")), "")
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
    for g in out["goals"]:
        print(f"  {verdict(g['passed']):4s} {g['goal']}: {g['measured']} vs {g['peer']} ({g['target']})")
    if args.keep is None:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        (tmp / "result.json").write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
