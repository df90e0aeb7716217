"""The fast training step: torch.compile settings, and an optimizer step that never waits.

On a GPU, reading a loss with .item() after every step stalls the host until the step is done, and
a model of this size is then bound by kernel launches rather than by math. So the step is queued
and nothing comes back: the losses of the last steps stay on the device in a window and are read
once, when the trainer has to report or save (`DeferredStep.read`).

Divergence is still caught at the iteration it happens, and no bad step ever reaches the weights:
the fused AdamW (CUDA, and CPU where torch has it) takes the clipping factor (`grad_scale`) and a
sticky "non-finite seen" flag (`found_inf`) as device tensors, as it does for AMP's GradScaler. A
step whose loss or gradient norm is not finite sets the flag, and the kernel skips that step and
every later one, so the weights stay those of the last good iteration until the next read names it.
An unfused AdamW cannot skip on the device; there the flag is read every step (a sync, as before).
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

WINDOW = 64  # at most this many steps between two reads of the on-device losses
# torch.compile mode per device type; NANOLENS_COMPILE_MODE overrides it (e.g. "default").
# On CUDA the compiled forward+backward is replayed as CUDA graphs: a host that launches a few
# hundred kernels per step is otherwise the bottleneck of a model this small (DDP: not used)
COMPILE_MODES: dict[str, str | None] = {"cuda": "reduce-overhead", "cpu": None}


def compile_model(model: torch.nn.Module, compile: bool, device_type: str, ddp: bool
                  ) -> tuple[torch.nn.Module, bool]:
    """(the model to train, whether it replays as CUDA graphs). Callers of a CUDA-graph model call
    torch.compiler.cudagraph_mark_step_begin() before each forward whose outputs they drop."""
    if not compile:
        return model, False
    mode = os.environ.get("NANOLENS_COMPILE_MODE") or COMPILE_MODES.get(device_type)
    cudagraphs = mode in ("reduce-overhead", "max-autotune")
    if cudagraphs and ddp:  # DDP's hooks and CUDA graphs do not mix
        mode, cudagraphs = ("max-autotune-no-cudagraphs" if mode == "max-autotune" else None), False
    return torch.compile(model, mode=mode), cudagraphs


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse rather than hand it back to the OS; True if done.

    A CPU step frees and re-allocates the same few MB of activations and gradients every time.
    glibc's defaults serve blocks that large with mmap, or trim them off the heap when freed, so
    each step faults every page back in and the kernel zeroes it: about 1,000 page faults and 2 ms
    of a 50 ms cpu-small step (BENCHMARKS.md, "Trainer"). The cost is that the process keeps its
    peak memory, which a training process does anyway. Linux with glibc only; a no-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False


def attention_context(compile: bool, device_type: str) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of the context the step's forward and backward run in. A compiled CPU step is
    faster with SDPA's math form, which inductor fuses, than with the CPU flash kernel it would
    call as is (small blocks: -4% step time at cpu-small's T=64)."""
    if compile and device_type == "cpu":
        return lambda: sdpa_kernel(SDPBackend.MATH)
    return nullcontext


def total_grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients together (clip_grad_norm_'s), without a host sync; one
    multi-tensor kernel where torch has it, also on CPU where clip_grad_norm_ loops in Python."""
    grads = [p.grad for p in params if p.grad is not None]
    try:
        norms = torch._foreach_norm(grads)
    except (RuntimeError, AttributeError):
        norms = [torch.linalg.vector_norm(g) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


class DeferredStep:
    """Clip, step and zero the gradients of `params` with `optimizer` (GPT.configure_optimizers'),
    keeping each step's loss on `device` until `read`. `start` is the first iteration of the current
    window."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                 grad_clip: float, device: str, start: int) -> None:
        self.optimizer, self.params, self.grad_clip = optimizer, params, grad_clip
        self.fused = bool(optimizer.defaults.get("fused"))
        self.window = torch.zeros(WINDOW, device=device)  # losses of iterations [start, start+WINDOW)
        self.found_inf = torch.zeros((), device=device)  # sticky: 1 once a step was not finite
        self.start, self.halted = start, False

    def full(self, it: int) -> bool:
        """True when the window holds WINDOW steps and must be read before step `it`."""
        return it - self.start >= WINDOW

    def step(self, loss: torch.Tensor, it: int) -> None:
        """Queue iteration `it`'s update. Its tracked loss is NaN when the gradient norm is not
        finite, so `read` reports either kind of divergence."""
        norm = total_grad_norm(self.params)
        tracked = loss + norm * 0  # not finite if either is (inf * 0 = nan)
        self.window[it - self.start] = tracked
        if self.fused:
            if self.grad_clip > 0:  # clip_grad_norm_'s factor, applied inside the kernel as 1/scale
                self.optimizer.grad_scale = torch.clamp((norm + 1e-6) / self.grad_clip, min=1.0)
            self.found_inf = torch.where(torch.isfinite(tracked), self.found_inf, 1.0)
            self.optimizer.found_inf = self.found_inf  # the kernel skips (and un-counts) the step
            self.optimizer.step()
        else:  # an unfused AdamW cannot skip on the device: read the flag now (synchronizes)
            self.halted = self.halted or not math.isfinite(tracked.item())
            if not self.halted:
                if self.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def read(self, it: int) -> tuple[list[float], int | None]:
        """Read the losses of iterations [start, it) in one sync and start a new window at `it`.
        Returns (the losses, the first non-finite iteration or None)."""
        start = self.start
        vals = self.window[:it - start].tolist()
        self.start = it
        bad = next((start + i for i, v in enumerate(vals) if not math.isfinite(v)), None)
        return vals, bad
