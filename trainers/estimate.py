"""What a run will cost before it starts: parameters, FLOPs per token, memory, and time from a
measured step.

Time estimates scale a measured throughput by FLOPs per token: `tokens_per_s(cfg, ref_tps)` takes
the tokens/s this machine reached on the tiny preset (`measure_tokens_per_s`; the app measures it
once per process) and divides by how many times more work a token of `cfg` is (Kaplan et al. 2020:
6N + 6·L·T·C FLOPs per training token). Bigger models use the CPU better than the tiny one, so the
estimate errs long; it is a rough guide, not a promise.

Nothing here imports trainers.config (which imports this module for its memory check): a
TrainConfig is only read through its attributes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gpt.config import GPTConfig
from gpt.model import GPT

if TYPE_CHECKING:
    from trainers.config import TrainConfig

# vocabulary sizes before the data is read (estimates only; the run uses the real one)
VOCAB_GUESS = {"shakespeare": 65, "python-docs": 100}
CHAR_VOCAB_GUESS = 100  # an uploaded or unknown text
GPT2_VOCAB = 50257


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


def tokens_per_s(c: GPTConfig, ref_tps: float, ref: GPTConfig | None = None) -> float:
    """Training tokens/s expected for `c`, given `ref_tps` measured on `ref` (default: the tiny preset)."""
    ref = ref or GPTConfig.preset("tiny")
    return ref_tps * flops_per_token(ref) / flops_per_token(c)


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


@dataclass(frozen=True)
class Estimate:
    params: int
    memory_bytes: int  # weights + grads + AdamW state + activations of one step (fp32)
    tokens: int  # training tokens over the whole run (eval not counted)
    tokens_per_s: float
    seconds: float  # training plus evaluation


def estimate(model_cfg: GPTConfig, train: "TrainConfig", ref_tps: float) -> Estimate:
    """Size, memory and rough duration of a run. Evaluation runs 2·eval_iters forward-only batches
    (a third of a training step each) at every eval_interval."""
    p_bytes, a_bytes = estimate_memory(model_cfg, train.batch_size)
    per_iter = train.batch_size * train.grad_accum * model_cfg.block_size
    tokens = train.max_iters * per_iter
    tps = max(tokens_per_s(model_cfg, ref_tps), 1e-9)
    evals = train.max_iters // train.eval_interval + 1
    eval_tokens = evals * 2 * train.eval_iters * train.batch_size * model_cfg.block_size / 3
    return Estimate(params=n_params(model_cfg), memory_bytes=p_bytes + a_bytes, tokens=tokens,
                    tokens_per_s=tps, seconds=(tokens + eval_tokens) / tps)


def estimate_run(train: "TrainConfig", ref_tps: float) -> Estimate:
    """`estimate` of `train`'s own model, with its vocabulary guessed (guess_vocab)."""
    return estimate(train.model_config(guess_vocab(train)), train, ref_tps)


def measure_tokens_per_s(steps: int = 3, batch_size: int = 8) -> float:
    """Training tokens/s of the tiny preset on this machine (AdamW steps, current torch threads).
    The fastest of `steps` steps counts: the others lost time to whatever else the machine ran."""
    cfg = GPTConfig.preset("tiny")
    model = GPT(cfg)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=gen)  # (B, T)
    times = []
    for i in range(steps + 1):  # the first step warms up allocators
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return batch_size * cfg.block_size / max(min(times), 1e-6)
