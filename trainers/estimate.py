"""What a run will cost before it starts: parameters, FLOPs per token, memory, and time from
measured steps.

Time is measured, not modelled: `measure_step` times a few real training steps of the run's own
model on this machine, through the trainer's own step path (trainers.engine.Engine's micro step,
with the CPU shard plan and the thread count the run will use, and trainers.step.DeferredStep's
clipped AdamW step), plus forward-only eval batches and one checkpoint save. `estimate` adds those
up over the run's iterations, evaluations and snapshots, plus the start of a run's process. An
earlier version scaled a speed measured once on the tiny model by FLOPs per token; bigger models
use a CPU far better than the tiny one, and it overestimated real runs 4-18x (issue 12). The app
measures in a worker process of its own (trainers.steptimer), as a run is its own process.

`remaining_seconds` is the same sum for what is left of a running run, from its own measured
step and eval times: the trainer's ETA.

Nothing here imports trainers.config at module level (it imports this module for its memory
check): a TrainConfig is only read through its attributes.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gpt.config import GPTConfig
from gpt.model import GPT

if TYPE_CHECKING:
    from trainers.config import TrainConfig

# vocabulary sizes before the data is read (estimates only; the run uses the real one)
VOCAB_GUESS = {"shakespeare": 65, "shakespeare-repeats": 66, "python-docs": 103}  # repeats: + its "|" mark
CHAR_VOCAB_GUESS = 100  # an uploaded or unknown text
GPT2_VOCAB = 50257
MEASURE_BUDGET_S = 2.0  # timed steps per measurement, about (warm-ups and the eval come on top)
MIN_STEPS = 3  # timed steps at least; their median counts
MAX_STEPS = 100  # a fast step is timed many times: a burst of load on a shared machine hits few
MAX_EVALS = 20
PROBE_BATCH = 4  # rows of the first (warm-up) step, which sizes the rest


def guess_vocab(train: "TrainConfig") -> int:
    """The vocabulary size `train` will likely have: GPT-2's, or the corpus's character set."""
    if train.tokenizer == "gpt2":
        return GPT2_VOCAB
    return VOCAB_GUESS.get(train.data or "", CHAR_VOCAB_GUESS)


def n_params(c: GPTConfig) -> int:
    """Parameters of GPT(c), counting the tied lm_head once (= GPT.get_num_params(False))."""
    C, L = c.n_embd, c.n_layer
    ln = 2 * C if c.bias else C
    b = 1 if c.bias else 0
    attn = (3 * C * C + 3 * C * b) + (C * C + C * b)  # c_attn, c_proj
    mlp = (4 * C * C + 4 * C * b) + (4 * C * C + C * b)  # c_fc, c_proj
    return c.vocab_size * C + c.block_size * C + L * (2 * ln + attn + mlp) + ln


def flops_per_token(c: GPTConfig) -> float:
    """Training FLOPs per token: 6N (N without position embeddings, with the lm_head matmul)
    plus 6·L·T·C for attention scores (Kaplan et al. 2020)."""
    n = n_params(c) - c.block_size * c.n_embd
    return 6.0 * n + 6.0 * c.n_layer * c.block_size * c.n_embd


def estimate_memory(model_cfg: GPTConfig, batch_size: int) -> tuple[int, int]:
    """(parameter bytes, activation bytes) of one training micro step, in fp32.

    Parameters: weights + grads + AdamW m and v = 4 copies of 4 bytes. Activations: per layer
    about B*T*C*34 + 5*B*nh*T*T values (Korthikanti et al. 2022, 'Reducing activation
    recomputation'), plus the logits and their gradient; counted at 4 bytes each.
    """
    c = model_cfg
    B, T = batch_size, c.block_size
    per_layer = B * T * c.n_embd * 34 + 5 * B * c.n_head * T * T
    acts = (c.n_layer * per_layer + 3 * B * T * c.vocab_size) * 4
    return n_params(c) * 4 * 4, acts


# -- measuring ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepCost:
    """What the pieces of a run of one model shape and batch take on this machine, in seconds.
    Timed at `rows` rows a batch; when the run's batch is too slow to time within the budget,
    the batch-dependent parts are scaled from `rows` to the run's batch by rows."""

    micro_s: float  # forward and backward of one micro batch, the next batch fetched meanwhile
    opt_s: float  # clipping, the AdamW step, zeroing the gradients
    eval_s: float  # one forward-only eval batch
    save_s: float  # one checkpoint with optimizer state (latest/); weights alone are a third
    startup_s: float  # a run's process until its first step: Python, imports, model, optimizer
    steps: int  # training steps timed (their medians count)
    rows: int  # rows of each timed batch
    batch_size: int  # the run's batch, which micro_s and eval_s are for
    threads: int
    device: str

    def iter_s(self, grad_accum: int = 1) -> float:
        """One optimizer iteration: grad_accum micro steps and one AdamW step."""
        return grad_accum * self.micro_s + self.opt_s

    def eval_round_s(self, eval_iters: int) -> float:
        """One evaluation: eval_iters batches of each split, then latest/ and (mostly) best/."""
        return 2 * eval_iters * self.eval_s + self.save_s * (1 + 1 / 3)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure_step(model_cfg: GPTConfig, batch_size: int, threads: int | None = None, device: str = "cpu",
                 cpu_shards: bool = True, budget_s: float = MEASURE_BUDGET_S) -> StepCost:
    """Time real training steps of GPT(model_cfg) at `batch_size` rows on `threads` torch threads
    (None: as they are; restored after), through the trainer's own Engine (its CPU shard plan
    included) and DeferredStep, on random tokens; then forward-only eval batches and one save
    of the model with its optimizer state to a temporary folder. A first step of PROBE_BATCH
    rows warms up and sizes the rest: when the whole batch cannot be timed MIN_STEPS times
    within about `budget_s`, fewer rows are timed and scaled. startup_s is 0 here (the worker
    that runs this in its own process knows its own start: trainers.steptimer)."""
    from gpt import checkpoint as ckpt
    from gpt.tokenizer import CharTokenizer
    from trainers.config import TrainConfig
    from trainers.engine import Engine
    from trainers.step import DeferredStep

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    T, V = model_cfg.block_size, model_cfg.vocab_size
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(V, (max(8 * T, 4096),), generator=gen, dtype=torch.int32)  # as Corpus keeps them

    def batch(rows: int) -> tuple[torch.Tensor, torch.Tensor]:  # as Corpus.get_batch: a gather
        ix = torch.randint(len(tokens) - T, (rows,), generator=gen)  # (rows,)
        window = tokens[ix[:, None] + torch.arange(T + 1)]  # (rows, T+1)
        return window[:, :-1].long().to(device), window[:, 1:].long().to(device)

    model = GPT(model_cfg).to(device).train()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.split(":")[0])
    engine = Engine(model, TrainConfig(batch_size=batch_size, cpu_shards=cpu_shards, device=device), device)
    stepper, it = DeferredStep(opt, engine.params, 1.0, device, 0), 0
    try:
        def step(rows: int) -> tuple[float, float]:
            nonlocal it
            X, Y = batch(rows)
            _sync(device)
            t0 = time.perf_counter()
            loss, _ = engine.micro_step(X, Y, 1, True, lambda: batch(rows))
            _sync(device)
            t1 = time.perf_counter()
            stepper.step(loss, it)
            it += 1
            if stepper.full(it):
                stepper.read(it)
            _sync(device)
            return t1 - t0, time.perf_counter() - t1

        probe = max(1, min(batch_size, PROBE_BATCH))
        # a warm-up step is slower than the rest (about 2x): sized by it, the timed steps fit the budget
        per_row = max(sum(step(probe)) / probe / 2, 1e-9)
        rows = batch_size if per_row * batch_size * MIN_STEPS <= budget_s else \
            max(probe, min(batch_size, int(budget_s / (per_row * MIN_STEPS))))
        if rows != probe:
            step(rows)  # warm-up at the new shape
        micro, optim, t_end = [], [], time.perf_counter() + budget_s
        while len(micro) < MAX_STEPS and (len(micro) < MIN_STEPS or time.perf_counter() < t_end):
            m, o = step(rows)
            micro.append(m)
            optim.append(o)
        stepper.read(it)
        model.eval()
        evals = []
        with torch.no_grad():
            for _ in range(min(len(micro), MAX_EVALS) + 1):  # the first warms up
                X, Y = batch(rows)
                _sync(device)
                t0 = time.perf_counter()
                engine.eval_loss(X, Y).item()  # (the trainer reads each into a tensor too)
                evals.append(time.perf_counter() - t0)
        model.train()
        with tempfile.TemporaryDirectory(prefix="nanolens-estimate-") as d:
            t0 = time.perf_counter()
            ckpt.save(f"{d}/latest", model, CharTokenizer("ab"), meta={"iter": it}, optimizer=opt)
            save_s = time.perf_counter() - t0
    finally:
        engine.close()
        torch.set_num_threads(before)
    scale = batch_size / rows
    return StepCost(micro_s=statistics.median(micro) * scale, opt_s=statistics.median(optim),
                    eval_s=statistics.median(evals[1:]) * scale, save_s=save_s, startup_s=0.0,
                    steps=len(micro), rows=rows, batch_size=batch_size,
                    threads=threads if threads is not None else before, device=device)


# -- adding it up ------------------------------------------------------------------------------------
def _count_multiples(lo: int, hi: int, k: int) -> int:
    """How many multiples of k lie in [lo, hi] (0 counts)."""
    return max(0, hi // k - (lo - 1) // k) if hi >= lo else 0


def snapshot_iters(lo: int, hi: int) -> int:
    """How many snapshots a run writes at iterations lo..hi (is_snapshot_iter's, and the last)."""
    from trainers.config import is_snapshot_iter

    cands, e = {0, hi}, 1
    while 10 ** e <= hi:
        cands |= {10 ** e, 25 * 10 ** (e - 1), 5 * 10 ** e}
        e += 1
    return sum(1 for i in cands if lo <= i <= hi and (is_snapshot_iter(i) or i == hi))


def remaining_seconds(it: int, max_iters: int, eval_interval: int, iter_s: float, eval_round_s: float,
                      snapshot_s: float = 0.0) -> float:
    """Seconds from iteration `it` (its eval not yet done) to the end of a run: the iterations
    left at iter_s each, the evaluations left (every eval_interval and at the end) at
    eval_round_s each, the snapshots left at snapshot_s each. The trainer's ETA, and the sum
    `estimate` makes from iteration 0."""
    if it > max_iters:
        return 0.0
    evals = _count_multiples(it, max_iters, max(1, eval_interval))
    if max_iters % max(1, eval_interval):
        evals += 1  # the last iteration is always evaluated
    return ((max_iters - it) * iter_s + evals * eval_round_s
            + (snapshot_iters(it, max_iters) * snapshot_s if snapshot_s else 0.0))


@dataclass(frozen=True)
class Estimate:
    params: int
    memory_bytes: int  # weights + grads + AdamW state + activations of one step (fp32)
    tokens: int  # training tokens over the whole run (eval not counted)
    tokens_per_s: float | None  # while training steps (evaluations not counted)
    seconds: float | None  # start, training, evaluation and snapshots; None without a StepCost
    eval_seconds: float = 0.0  # of `seconds`: evaluations, checkpoints and snapshots
    startup_seconds: float = 0.0  # of `seconds`: the run's process start


def estimate(model_cfg: GPTConfig, train: "TrainConfig", cost: StepCost | None) -> Estimate:
    """Size, memory and duration of a run from its measured StepCost (None: size and memory only).
    Duration = a run's start + max_iters iterations + its evaluations (2·eval_iters forward
    batches, then latest/ and best/) + its snapshots (weights only: a third of a save)."""
    p_bytes, a_bytes = estimate_memory(model_cfg, train.batch_size)
    tokens_per_iter = train.batch_size * train.grad_accum * model_cfg.block_size
    tokens = train.max_iters * tokens_per_iter
    size = dict(params=n_params(model_cfg), memory_bytes=p_bytes + a_bytes, tokens=tokens)
    if cost is None:
        return Estimate(**size, tokens_per_s=None, seconds=None)
    iter_s = cost.iter_s(train.grad_accum)
    snap_s = cost.save_s / 3 if getattr(train, "snapshots", True) else 0.0
    total = remaining_seconds(0, train.max_iters, train.eval_interval, iter_s,
                              cost.eval_round_s(train.eval_iters), snap_s)
    return Estimate(**size, tokens_per_s=tokens_per_iter / max(iter_s, 1e-12), seconds=cost.startup_s + total,
                    eval_seconds=total - train.max_iters * iter_s, startup_seconds=cost.startup_s)


def run_model_config(train: "TrainConfig") -> GPTConfig:
    """`train`'s own model, with its vocabulary guessed (guess_vocab): what measure_step times."""
    return train.model_config(guess_vocab(train))


def estimate_run(train: "TrainConfig", cost: StepCost | None) -> Estimate:
    """`estimate` of `train`'s own model (run_model_config)."""
    return estimate(run_model_config(train), train, cost)
