"""Where a GPT-2 124M training step spends its time on one GPU, and what each speed-up buys.

In one process, on the same data (Tiny Shakespeare in GPT-2 BPE, nanoGPT's train.bin): nanoGPT's
model.py stepped as its train.py steps it (compile on, bf16 autocast, fused AdamW, clip_grad_norm_,
a loss.item() every 10th iteration, as config/train_gpt2.py logs), then our trainer's step (trainers.engine.Engine +
trainers.step.DeferredStep, as trainers.trainer runs it) under each variant. Per variant: compile
and warm up, then the median ms/step of --reps timed blocks of --steps steps (CUDA events), and for
the first of each kind a torch.profiler breakdown of the GPU's time by kind of kernel (matmuls,
attention, layer norm, GELU, loss, optimizer, other) and the time the GPU sat idle between kernels.

    NANOGPT_DIR=.peer python3 -m bench.profile_gpt2 [--variants ours,ours-cudnn,...] [--budget-s 420]

Not a bench_*.py: it needs a CUDA GPU, and run_all does not run it. What it found is in
BENCHMARKS.md, "Trainer at GPT-2 scale".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
B, T, V = 12, 1024, 50304  # nanoGPT's GPT-2 batch, block and padded vocabulary
# kernel name fragments -> kind, first match wins (inductor names fused kernels after their aten ops)
KINDS = [("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
         ("loss", ("log_softmax", "nll", "cross_entropy", "logsumexp")),
         ("optimizer", ("adam", "multi_tensor", "foreach", "_amp_", "norm_stack")),
         ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90", "matmul", "mm_")),
         ("layer norm", ("layer_norm", "native_layer_norm")),
         ("gelu", ("gelu",)),
         ("embedding", ("embedding",))]


def kind_of(name: str) -> str:
    n = name.lower()
    return next((k for k, frags in KINDS if any(f in n for f in frags)), "other")


def batches(path: Path, device: str, seed: int = 1337) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Random (B, T) windows of the token file, on the device (what our trainer does)."""
    ids = torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int32)).to(device)
    gen = torch.Generator().manual_seed(seed)
    ar = torch.arange(T + 1, device=device)

    def get() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(ids) - T, (B,), generator=gen).pin_memory().to(device, non_blocking=True)
        w = ids[ix[:, None] + ar]  # (B, T+1)
        return w[:, :-1].long(), w[:, 1:].long()
    return get


def nanogpt_batches(path: Path, device: str) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """nanoGPT train.py's get_batch: a fresh memmap per call, stacked on the host, pinned, copied."""
    def get() -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return get


def nanogpt_step(data: Path, device: str) -> Callable[[int], None]:
    """nanoGPT's model and train.py's inner loop (grad accumulation 1)."""
    from bench.peers import load_nanogpt
    mod = load_nanogpt()
    if mod is None:
        raise SystemExit("set NANOGPT_DIR to a nanoGPT checkout (model.py)")
    torch.manual_seed(1337)
    cfg = mod.GPTConfig(block_size=T, vocab_size=V, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False)
    model = mod.GPT(cfg).to(device)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
    cmodel = torch.compile(model)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    get = nanogpt_batches(data, device)
    state = {"xy": get()}

    def step(it: int) -> None:
        X, Y = state["xy"]
        with ctx:
            _, loss = cmodel(X, Y)
        state["xy"] = get()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % 10 == 0:
            loss.item()  # train.py's log line (log_interval 10, as config/train_gpt2.py)
    return step


def ours_step(data: Path, device: str, variant: str) -> Callable[[int], None]:
    """Our trainer's step (Engine.micro_step + DeferredStep.step, a read every 10 steps as
    log_interval 10 does) under `variant`."""
    from gpt.model import GPT
    from trainers.config import TrainConfig, padded_vocab
    from trainers.engine import Engine
    from trainers.step import DeferredStep
    cfg = TrainConfig.from_preset("gpt2", grad_accum=1, compile=True, device=device, name="profile",
                                  bias="bias" in variant)
    vocab = 50257 if "unpadded" in variant else padded_vocab(50257, "gpt2")
    torch.manual_seed(1337)
    model = GPT(cfg.model_config(vocab)).to(device).train()
    opt = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cuda")
    engine = Engine(model, cfg, device)
    stepper = DeferredStep(opt, engine.params, cfg.grad_clip, device, 0)
    get = batches(data, device)
    state = {"xy": get()}

    def step(it: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 6e-4
        X, Y = state["xy"]
        loss, state["xy"] = engine.micro_step(X, Y, 1, True, get)
        stepper.step(loss, it)
        if (it + 1) % 10 == 0 or stepper.full(it + 1):
            stepper.read(it + 1)
    return step


def set_variant(variant: str) -> None:
    """Global switches a variant needs, set before its model is compiled."""
    import torch._inductor.config as ic
    torch._dynamo.reset()
    os.environ.pop("NANOLENS_COMPILE_MODE", None)
    ic.coordinate_descent_tuning = "coord" in variant
    for b in ("flash", "mem_efficient", "cudnn", "math"):
        getattr(torch.backends.cuda, f"enable_{b}_sdp")(True)
    if "cudnn" in variant:
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    if "flash" in variant:
        torch.backends.cuda.enable_cudnn_sdp(False)
    for mode in ("max-autotune-no-cudagraphs", "max-autotune", "default"):
        if variant.endswith("-" + mode):
            os.environ["NANOLENS_COMPILE_MODE"] = mode
            break


def time_steps(step: Callable[[int], None], start: int, steps: int, reps: int) -> tuple[list[float], int]:
    """(ms per step of each of `reps` blocks of `steps` steps, the next iteration)."""
    out, it = [], start
    for _ in range(reps):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        a.record()
        for _ in range(steps):
            step(it)
            it += 1
        b.record()
        torch.cuda.synchronize()
        out.append(max(a.elapsed_time(b), 1000 * (time.perf_counter() - t0)) / steps)
    return out, it


def profile(step: Callable[[int], None], start: int, steps: int, out_dir: Path | None, tag: str
            ) -> dict[str, Any]:
    """GPU time per step by kind of kernel, and the GPU's idle time between kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(start + i)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    by_kind: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    spans = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_resource_id is not None:
            us = e.time_range.elapsed_us()
            by_kind[kind_of(e.name)] += us
            top[e.name] += us
            spans.append((e.time_range.start, e.time_range.end))
    busy, end = 0.0, -1.0
    for s, e in sorted(spans):  # union of kernel intervals: the time the GPU was doing something
        if e > end:
            busy += e - max(s, end)
            end = e
    kernels_ms = sum(by_kind.values()) / 1000 / steps
    res = {"wall_ms_per_step": 1000 * wall / steps, "kernel_ms_per_step": kernels_ms,
           "gpu_busy_ms_per_step": busy / 1000 / steps,
           "by_kind_ms": {k: round(v / 1000 / steps, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
           "top_kernels_ms": {k[:120]: round(v / 1000 / steps, 3)
                              for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:25]}}
    if out_dir is not None:
        (out_dir / f"profile_{tag}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python3 -m bench.profile_gpt2", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / ".peer/data/shakespeare/train.bin",
                    help="nanoGPT-style uint16 token file (default: .peer/data/shakespeare/train.bin)")
    ap.add_argument("--variants", default="nanogpt,ours,ours-cudnn,ours-coord,ours-max-autotune,ours-default",
                    help="comma-separated: nanogpt, ours, ours-cudnn (cuDNN attention), ours-flash, "
                         "ours-coord (inductor coordinate-descent tuning), ours-default (no CUDA "
                         "graphs), ours-max-autotune, ours-max-autotune-no-cudagraphs, ours-unpadded (vocab "
                         "50257), ours-bias (biases on); combine, e.g. ours-cudnn-coord")
    ap.add_argument("--warmup", type=int, default=15, help="steps before timing (compile, CUDA graphs)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=5, help="timed blocks per variant")
    ap.add_argument("--profile", default="nanogpt,ours", help="variants to profile (5 steps)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip variants that start after this")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device, t_start = "cuda", time.perf_counter()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    profiled = set(args.profile.split(","))
    for v in args.variants.split(","):
        if time.perf_counter() - t_start > args.budget_s:
            results[v] = {"skipped": "over --budget-s"}
            print(f"{v}: skipped (budget)", flush=True)
            continue
        set_variant(v)
        t0, step, r = time.perf_counter(), None, {}
        try:
            step = nanogpt_step(args.data, device) if v == "nanogpt" else ours_step(args.data, device, v)
            for i in range(args.warmup):
                step(i)
            torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            ms, it = time_steps(step, args.warmup, args.steps, args.reps)
            r = {"ms_per_step": statistics.median(ms), "blocks_ms": [round(x, 3) for x in ms],
                                 "compile_and_warmup_s": round(warm_s, 1)}
            if v in profiled:
                r["profile"] = profile(step, it, 5, args.out, v)
        except Exception as e:  # one variant failing must not lose the others' figures
            r["error"] = f"{type(e).__name__}: {e}"[:500]
        results[v] = r
        print(f"{v}: {json.dumps(r)[:700]}", flush=True)
        del step
        torch.cuda.empty_cache()
    base = results.get("nanogpt", {}).get("ms_per_step")
    print("\nvariant | ms/step | vs nanoGPT | compile+warmup s")
    for v, r in results.items():
        if isinstance(r, dict) and "ms_per_step" in r:
            rel = f"{base / r['ms_per_step']:.3f}x" if base else "-"
            print(f"{v} | {r['ms_per_step']:.2f} | {rel} | {r['compile_and_warmup_s']}")
    if args.out is not None:
        (args.out / "profile_gpt2.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
