"""How a run executes on its device: one object that owns those choices and runs a micro step.

The Trainer decides *what* to compute (nanoGPT's recipe); the Engine decides *how* on this machine:
bf16 autocast and TF32 on CUDA, torch.compile (CUDA graphs on CUDA, see trainers/step.py), the
DDP wrapper and the process group's life, and on a CPU the thread plan: batch shards on threads
(trainers/shards.py) or torch's own threads splitting each op, plus glibc's memory reuse.
`describe()` is the "device: ..." line that tells the user what was decided.
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt.model import GPT
from trainers.config import TrainConfig
from trainers.shards import ThreadShards
from trainers.shards import plan as plan_shards
from trainers.step import attention_context, compile_model, keep_freed_memory

Batch = tuple[torch.Tensor, torch.Tensor]


def start_process_group(device_type: str) -> None:
    """Join torchrun's process group (NCCL on CUDA, else gloo). End it with end_process_group."""
    # This module's functions take `group=group.WORLD` as a default argument, evaluated when it is
    # first imported; DDP imports it (through torch._dynamo), and after init the defaults would
    # hold the group for good: destroying it could then never free it nor stop gloo's threads.
    import torch.distributed.nn.functional  # noqa: F401
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def end_process_group(barrier: bool) -> None:
    """Destroy the process group, if any, so that it is freed now: gloo's worker threads are
    joined while the interpreter is alive. Left running into interpreter shutdown, a worker that
    drops the last reference to a tensor made in Python needs the GIL there, and the process
    aborts ("terminate called without an active exception", issue 13). Call it after
    Engine.close(), which lets go of the DDP wrapper (it holds the group too).

    barrier: True when every rank left the training loop at the same step; each then waits for
    the others' last collectives first. Not on an error path: a peer may be inside a collective
    whose partner never comes, and a barrier would hang until gloo's timeout."""
    if not dist.is_initialized():
        return
    gc.collect()  # a released wrapper left in a reference cycle would still hold the group
    if barrier:
        try:
            dist.barrier()
        except RuntimeError:  # a peer failed after the loop and exited: nobody left to wait for
            pass
    dist.destroy_process_group()


class Engine:
    """Engine(model, cfg, device, ddp, world_size) for a model already on `device`, in train mode.

    Takes torch's thread count as it finds it (the CLI sets --threads); while batch shards run,
    torch's own threads are 1 and `close()` gives them back. Call `close()` when the run ends.
    With ddp the process group must exist (start_process_group); after `close()`, end it
    (end_process_group).
    """

    def __init__(self, model: GPT, cfg: TrainConfig, device: str, ddp: bool = False,
                 world_size: int = 1) -> None:
        self.raw_model, self.cfg, self.device, self.ddp = model, cfg, device, ddp
        self.device_type, self.world_size = device.split(":")[0], world_size
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.bf16 = self.device_type == "cuda" and torch.cuda.is_bf16_supported()
        self.ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        compiled, self.cudagraphs = compile_model(model, cfg.compile, self.device_type, ddp)
        # evals on CUDA use the compiled model (a second graph, for eval mode, as nanoGPT); on a
        # CPU that compile costs more than the few eval batches it would speed up
        self.eval_model = compiled if self.device_type == "cuda" else model
        self.attn_ctx = attention_context(cfg.compile, self.device_type)
        self.threads = torch.get_num_threads()
        self.kept_memory = self.device_type == "cpu" and keep_freed_memory()
        n, self.shard_threads, self.shard_note = plan_shards(
            self.threads, cfg.batch_size, self.device_type, ddp, cfg.compile, model.config.dropout,
            cfg.cpu_shards)
        self.shards = ThreadShards(n) if n > 1 else None
        if self.shards is not None:
            torch.set_num_threads(self.shard_threads)  # per shard thread (OpenMP's are per thread)
        self.model: torch.nn.Module = compiled
        # agree()'s flags: one tensor for the engine's life, which outlasts the process group, so
        # that a gloo worker never drops the last reference to it (see end_process_group)
        self.flags = torch.zeros(2, device=device) if ddp else None
        if ddp:
            ids = [torch.device(device).index] if self.device_type == "cuda" else None
            self.model = DDP(compiled, device_ids=ids)

    def micro_step(self, X: torch.Tensor, Y: torch.Tensor, micro_steps: int, last: bool,
                   next_batch: Callable[[], Batch]) -> tuple[torch.Tensor, Batch]:
        """Forward and backward of one micro batch, its gradients added to .grad; the next batch
        is fetched while the device works. `last`: the micro step after which DDP all-reduces.
        Returns (this batch's loss / micro_steps, detached; the next batch)."""
        if self.ddp:
            self.model.require_backward_grad_sync = last
        if self.shards is not None:  # forward and backward of every shard at once
            loss = self.shards.forward_backward(self.model, self.params, X, Y, 1 / micro_steps)
            return loss, next_batch()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.ctx, self.attn_ctx():
            _, loss = self.model(X, Y)
            loss = loss / micro_steps  # (mean over micro steps)
        nxt = next_batch()  # queued while the device works on the forward
        with self.attn_ctx():
            loss.backward()
        return loss.detach(), nxt

    def agree(self, stop: bool, bad: bool) -> tuple[bool, bool]:
        """(stop, bad), each True when it is True on any DDP rank (a MAX all-reduce)."""
        assert self.flags is not None, "agree() is for DDP engines"
        self.flags[0], self.flags[1] = float(stop), float(bad)
        dist.all_reduce(self.flags, op=dist.ReduceOp.MAX)
        return bool(self.flags[0] > 0), bool(self.flags[1] > 0)

    def eval_loss(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch, no gradients (call under torch.no_grad, model in eval mode)."""
        if self.shards is not None:
            return self.shards.loss(self.eval_model, X, Y)
        if self.cudagraphs:  # the previous batch's outputs are dead: replay over them
            torch.compiler.cudagraph_mark_step_begin()
        with self.ctx:
            return self.eval_model(X, Y)[1]

    def describe(self, fused_adamw: bool = False) -> str:
        """The "device: ..." line: every choice made here, in words."""
        t = self.threads
        name = f" ({torch.cuda.get_device_name(self.device)})" if self.device_type == "cuda" else ""
        parts = [f"device: {self.device}{name}", f"{t} thread{'s' if t != 1 else ''}",
                 f"bf16 {'on' if self.bf16 else 'off'}", f"compile {'on' if self.cfg.compile else 'off'}"]
        if self.device_type == "cuda":
            parts.append("tf32 on")
        if self.ddp:
            parts.append(f"ddp {self.world_size} process{'es' if self.world_size != 1 else ''}")
        if self.shards is not None:
            each = self.shard_threads
            parts.append(f"batch split in {self.shards.n} shards ({each} thread{'s' if each != 1 else ''} each)")
        elif t > 1 and self.shard_note:
            parts.append(f"threads split each op ({self.shard_note})")
        if self.kept_memory:
            parts.append("freed memory kept for reuse")
        if fused_adamw:
            parts.append("fused AdamW")
        if self.cudagraphs:
            parts.append("CUDA graphs")
        return ", ".join(parts)

    def close(self) -> None:
        """Stop the shard threads and give torch its thread count back, and let go of the DDP
        wrapper, which holds the process group; safe to call twice."""
        if self.shards is not None:
            self.shards.close()
            self.shards = None
            torch.set_num_threads(self.threads)
        if isinstance(self.model, DDP):
            self.model = self.model.module
