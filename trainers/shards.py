"""CPU data parallelism over threads: each batch is split by rows, one shard per thread.

Why: a model the size of nanoGPT's CPU line does a few hundred small ops per step. torch's own
(intra-op) threads split every one of those ops across the cores, and on ops this small the
splitting and the waiting for the slowest thread eat much of the second core. Giving each core
whole ops instead (a share of the batch each, one intra-op thread per shard) keeps every core busy
with real work: see BENCHMARKS.md, "Trainer", for the measured step times.

Same math as the unsplit batch: shard i's mean loss is weighted by its share of the rows, so the
summed gradient is the gradient of the whole batch's mean loss (every target counts, as in
training; rows are never padded). The gradients of the shards are
summed on the calling thread in shard order, so a seeded run gives the same losses every time.
torch's ops release the GIL, so the shards really do run at once; only the Python between ops is
serialized.

When it is not used (`plan`): off the CPU, with one thread, under DDP (each process is already a
shard), with --compile (compiled code is not run from several threads here) and with dropout > 0
(dropout draws from torch's one shared generator, in whatever order the threads reach it, which
would make a seeded run irreproducible).
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch


def plan(threads: int, batch_size: int, device_type: str, ddp: bool, compile: bool,
         dropout: float, enabled: bool = True) -> tuple[int, str]:
    """(number of shards, why). 1 shard means: no splitting, `threads` intra-op threads."""
    reasons = [(not enabled, "--no-cpu-shards"), (device_type != "cpu", ""), (threads < 2, ""),
               (ddp, "DDP processes split the batch already"),
               (compile, "--compile runs the batch whole"),
               (dropout > 0, "dropout > 0 needs one random stream to stay reproducible"),
               (batch_size < 2, "a batch of one row cannot be split")]
    for off, why in reasons:
        if off:
            return 1, why
    return min(threads, batch_size), ""


class ThreadShards:
    """Run a model's forward (and backward) on `n` row-shards of a batch at once, one per thread.

    The caller sets torch's intra-op threads to 1 while shards are in use (`Trainer` does, and
    restores them) and calls `close` when done; shard 0 runs on the calling thread.
    """

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"ThreadShards needs n >= 2, got {n}")
        self.n = n
        self.pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="nanolens-shard")

    def _run(self, fn, X: torch.Tensor, Y: torch.Tensor) -> list:
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
        total = out[0][0]
        for loss, _ in out[1:]:
            total = total + loss
        return total

    @torch.no_grad()
    def loss(self, model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, `model(X, Y)[1]`, computed shard by shard without gradients."""
        def shard(i: int, x: torch.Tensor, y: torch.Tensor, w: float):
            with torch.no_grad():  # grad mode is per thread
                return model(x, y)[1] * w

        parts = self._run(shard, X, Y)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def close(self) -> None:
        self.pool.shutdown(wait=True)
