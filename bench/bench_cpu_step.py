"""One CPU training step, in one process, interleaved: nanoGPT's against ours, with and without shards.

The full-run comparison (bench_train --cpu) meets the machine's load over minutes; this one times
the step alone, in alternating blocks of --block steps, so slow spells hit every variant alike:
  nanoGPT  its model.py + configure_optimizers (unfused AdamW on CPU) + clip_grad_norm_ + loss.item(),
           on --threads torch threads splitting each op (its train.py loop, minus logging);
  ours     trainers.engine.Engine + DeferredStep, as `python -m trainers.train --preset cpu-small`
           runs it: batch shards on an even thread count (trainers/shards.py);
  ours-ops the same with --no-cpu-shards (torch's threads split each op).
All three train the cpu-small shape on the same random batches (a fixed token stream). nanoGPT's
model.py is read from $NANOGPT_DIR (default /tmp/nanogpt), never from this repository.

    .venv/bin/python -m bench.bench_cpu_step [--threads 2] [--rounds 10] [--block 20]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from gpt.model import GPT
from trainers.config import PRESETS
from trainers.engine import Engine
from trainers.step import DeferredStep


def nanogpt_step(peer: Path, cfg, batch: Callable) -> Callable[[], None]:
    spec = importlib.util.spec_from_file_location("nanogpt_model", peer / "model.py")
    ng = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ng)
    torch.manual_seed(0)
    model = ng.GPT(ng.GPTConfig(block_size=cfg.block_size, vocab_size=65, n_layer=cfg.n_layer,
                                n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=True))
    opt = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")

    def step() -> None:
        X, Y = batch()
        _, loss = model(X, Y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return step


def our_step(cfg, batch: Callable, threads: int) -> tuple[Callable[[], None], Engine]:
    torch.manual_seed(0)
    model = GPT(cfg.model_config(65)).train()
    opt = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")
    torch.set_num_threads(threads)
    engine = Engine(model, cfg, "cpu")
    stepper = DeferredStep(opt, engine.params, cfg.grad_clip, "cpu", 0)
    it = [0]
    nxt = [batch()]

    def step() -> None:
        if stepper.full(it[0]):
            stepper.read(it[0])
        X, Y = nxt[0]
        loss, nxt[0] = engine.micro_step(X, Y, 1, True, batch)
        stepper.step(loss, it[0])
        it[0] += 1
    return step, engine


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_cpu_step", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every variant (default 2)")
    ap.add_argument("--rounds", type=int, default=10, help="blocks of each variant (default 10)")
    ap.add_argument("--block", type=int, default=20, help="timed steps per block (default 20)")
    args = ap.parse_args(argv)
    peer = Path(os.environ.get("NANOGPT_DIR") or "/tmp/nanogpt").expanduser()
    cfg = PRESETS["cpu-small"]
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 65, (200_000,), generator=gen)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([data[i:i + cfg.block_size] for i in ix])  # (B, T)
        y = torch.stack([data[i + 1:i + 1 + cfg.block_size] for i in ix])  # (B, T)
        return x, y

    variants: dict[str, tuple[Callable[[], None], int]] = {}
    engines = []
    if (peer / "model.py").is_file():
        variants["nanoGPT"] = (nanogpt_step(peer, cfg, batch), args.threads)
    else:
        print(f"nanoGPT's model.py not in {peer} (set NANOGPT_DIR): comparing ours only")
    for name, shards in (("ours", True), ("ours-ops", False)):
        step, eng = our_step(replace(cfg, cpu_shards=shards), batch, args.threads)
        engines.append(eng)
        variants[name] = (step, torch.get_num_threads())  # the engine's own setting
        print(f"{name}: {eng.describe()}")
        torch.set_num_threads(eng.threads)
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(args.rounds):
            for name, (step, threads) in variants.items():
                torch.set_num_threads(threads)
                for _ in range(3):  # the other variant's threads and caches settle
                    step()
                for _ in range(args.block):
                    t = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - t)
    finally:
        for eng in engines:
            eng.close()
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:9s} {v:7.2f} ms/step (median of {len(times[k])})")
    if "nanoGPT" in med:
        print(f"nanoGPT / ours = {med['nanoGPT'] / med['ours']:.3f}x; "
              f"nanoGPT / ours-ops = {med['nanoGPT'] / med['ours-ops']:.3f}x")
    print(f"ours-ops / ours (what the shards win) = {med['ours-ops'] / med['ours']:.3f}x")
    return med


if __name__ == "__main__":
    main()
