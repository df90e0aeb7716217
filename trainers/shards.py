"""CPU data parallelism over threads: each batch is split by rows into two shards, one per thread.

Why: a model the size of nanoGPT's CPU line does a few hundred small ops per step. torch's own
(intra-op) threads split every one of those ops across the cores, and on ops this small the
splitting and the waiting for the slowest thread eat much of the second core. Giving each core
whole ops instead (half the batch each) keeps both busy with real work. On this project's 2-core
machine that made a cpu-small step ~1.1x faster; on a 16-core machine it neither gained nor lost
at 4 and 8 threads. BENCHMARKS.md, "Trainer", has the figures.

Same math as the unsplit batch: shard i's mean loss is weighted by its share of the rows, so the
summed gradient is the gradient of the whole batch's mean loss (every target counts, as in
training; rows are never padded). The gradients of the shards are summed on the calling thread
in shard order, so a seeded run gives the same losses every time. torch's ops release the GIL,
so the shards really do run at once; only the Python between ops is serialized.

How many (`plan`): two shards on an even number of threads, each shard's ops split over half of
them. None off the CPU, with one thread or an odd count, under DDP (each process is already a
shard), with --compile (compiled code is not run from several threads here) and with dropout > 0
(dropout draws from torch's one shared generator, in whatever order the threads reach it, which
would make a seeded run irreproducible).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import reduce
from operator import add
from typing import Any

import torch

SHARDS = 2  # more lose: each shard's forward holds the GIL for its Python (~3 ms at cpu-small)


def plan(threads: int, batch_size: int, device_type: str, ddp: bool, compile: bool,
         dropout: float, enabled: bool = True) -> tuple[int, int, str]:
    """(shards, torch threads per shard, why not). 1 shard: no splitting, all `threads` split ops.

    Two shards, on an even number of threads, each shard's ops split over half of them. Not more:
    the Python of each shard's forward runs under the GIL, one shard at a time, so many shards
    queue for it (8 shards of 1 thread ran at 0.56x of 8 threads splitting ops). Not on an odd
    count: 3 threads as 2 shards leave a core idle (0.76x of nanoGPT on 3 threads splitting ops).
    Measured in BENCHMARKS.md, "Trainer"."""
    reasons = [(not enabled, "--no-cpu-shards"), (device_type != "cpu", ""), (threads < 2, ""),
               (ddp, "DDP processes split the batch already"),
               (compile, "--compile runs the batch whole"),
               (dropout > 0, "dropout > 0 needs one random stream to stay reproducible"),
               (batch_size < 2, "a batch of one row cannot be split"),
               (threads % 2 == 1, "an odd thread count")]
    for off, why in reasons:
        if off:
            return 1, threads, why
    return SHARDS, threads // SHARDS, ""


class ThreadShards:
    """Run a model's forward (and backward) on `n` row-shards of a batch at once, one per thread.

    The caller sets torch's threads to plan()'s threads per shard while shards are in use (the
    Engine does, and restores them) and calls `close` when done; shard 0 runs on the calling thread.
    """

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"ThreadShards needs n >= 2, got {n}")
        self.n = n
        self.pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="nanolens-shard")

    def _run(self, fn: Callable[..., Any], X: torch.Tensor, Y: torch.Tensor) -> list[Any]:
        """fn(i, X_i, Y_i, weight_i) for every shard, shard 0 here; results in shard order. Waits
        for every shard before raising, so no thread is left working on a batch that failed."""
        B = X.size(0)
        xs, ys = torch.tensor_split(X, self.n), torch.tensor_split(Y, self.n)  # rows, not copies
        futs: list[Future] = [self.pool.submit(fn, i, xs[i], ys[i], xs[i].size(0) / B)
                              for i in range(1, self.n)]
        try:
            first = fn(0, xs[0], ys[0], xs[0].size(0) / B)
        finally:
            wait(futs)
        return [first] + [f.result() for f in futs]

    def forward_backward(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter],
                         X: torch.Tensor, Y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Add the gradient of `scale` * (the batch's mean loss) to each param's .grad, as
        `(model(X, Y)[1] * scale).backward()` would; return that scaled loss, detached."""
        def shard(i: int, x: torch.Tensor, y: torch.Tensor, w: float):
            _, loss = model(x, y)
            loss = loss * (w * scale)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return loss.detach(), grads

        out = self._run(shard, X, Y)
        for _, grads in out:  # in shard order: the same sums on every run
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        return reduce(add, [loss for loss, _ in out])  # shard order, as the gradients

    def loss(self, model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, `model(X, Y)[1]`, computed shard by shard without gradients."""
        def shard(i: int, x: torch.Tensor, y: torch.Tensor, w: float):
            with torch.no_grad():  # grad mode is per thread: set on each shard's own
                return model(x, y)[1] * w

        return reduce(add, self._run(shard, X, Y))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
