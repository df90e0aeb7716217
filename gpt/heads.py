"""Attention heads: scores (previous-token, induction, attention sink, entropy), pattern pooling,
and one head opened up step by step (q·kᵀ/√d, mask, softmax, weighted sum).

Pure functions, tensors in, plain tensors and dataclasses out (float32, detached, on the
recording's device: the CPU by default), usable from a notebook without the app. Patterns are what a Recorder holds under blocks.{i}.attn.hook_pattern:
(B, H, T, T) softmax weights, rows are queries, columns keys, zero above the diagonal.

Two sources of scores: the prompt's own patterns (entropy, prev_token, first_token: cheap, read
off a recording) and a seeded random sequence repeated twice (induction: one extra forward, since
a real prompt rarely repeats enough to show copying). NEEDS lists what head_scores and
attention_steps read from a recording, as gpt.analysis.NEEDS does for the other analyses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F

from gpt.record import Recorder

NEEDS: dict[str, list[str]] = {
    "head_scores": ["blocks.*.attn.hook_pattern"],
    "attention_steps": [f"blocks.*.attn.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern", "z")],
}
PROMPT_SCORES = ("entropy", "prev_token", "first_token")  # what one pattern gives, without a forward


# -- scores of given patterns ----------------------------------------------------------------------
def head_scores_from_pattern(pattern: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head scores of attention patterns (B, H, T, T) or (H, T, T), averaged over the batch,
    each a Tensor (H,), over query positions t >= 1 (position 0 can only attend to itself):
      entropy:     mean over t of -sum_j p log2 p, in BITS;
      prev_token:  mean over t of pattern[t, t-1];
      first_token: mean over t of pattern[t, 0] (the "attention sink").
    With T == 1 every score is 0 (entropy, previous) or 1 (first token)."""
    p = pattern.float()
    if p.dim() == 3:
        p = p.unsqueeze(0)
    B, H, T, _ = p.shape  # (B, H, T, T)
    if T == 1:
        z = torch.zeros(H)
        return {"entropy": z, "prev_token": z.clone(), "first_token": torch.ones(H)}
    q = p[:, :, 1:, :]  # (B, H, T-1, T) queries 1..T-1
    ent = -(torch.special.xlogy(q, q).sum(-1)) / torch.log(torch.tensor(2.0))  # (B, H, T-1)
    prev = p.diagonal(offset=-1, dim1=-2, dim2=-1)  # (B, H, T-1): pattern[t, t-1]
    first = q[..., 0]  # (B, H, T-1)
    return {"entropy": ent.mean((0, 2)), "prev_token": prev.mean((0, 2)), "first_token": first.mean((0, 2))}


def prompt_head_scores(patterns: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """head_scores_from_pattern for every layer of patterns (L, H, T, T) (or a list of L (H, T, T)
    or (B, H, T, T)): {"entropy" (bits), "prev_token", "first_token"} -> (L, H). No forward pass,
    so no induction (head_scores runs the repeated sequence for that)."""
    per = [head_scores_from_pattern(p) for p in patterns]  # L dicts of (H,)
    return {k: torch.stack([d[k] for d in per]) for k in PROMPT_SCORES}


def induction_score_from_pattern(pattern: torch.Tensor, n: int) -> torch.Tensor:
    """Induction score per head (H,) of patterns (B, H, 2n, 2n) or (H, 2n, 2n) on n random tokens
    repeated twice: mean over t in the second half (n .. 2n-1) of pattern[t, t-n+1], the token after
    the previous occurrence of the current token (TransformerLens's definition)."""
    p = pattern.float()
    if p.dim() == 3:
        p = p.unsqueeze(0)
    if p.size(-1) != 2 * n:
        raise ValueError(f"pattern covers {p.size(-1)} positions; a repeated sequence of {n} has {2 * n}")
    stripe = p.diagonal(offset=-(n - 1), dim1=-2, dim2=-1)  # (B, H, n+1): pattern[t, t-n+1], t = n-1..2n-1
    return stripe[..., 1:].mean((0, 2))  # t = n .. 2n-1


def pool_patterns(patterns: torch.Tensor, side: int) -> torch.Tensor:
    """Average-pool patterns (L, H, T, T) to (L, H, side, side), float32: cell (i, j) is the mean
    weight of its block of queries x keys (adaptive pooling: block i spans rows
    floor(i*T/side) .. ceil((i+1)*T/side) - 1, so blocks overlap by a row when side does not divide
    T). With side >= T the patterns come back unpooled, (L, H, T, T)."""
    L, H, T, _ = patterns.shape
    if side >= T:
        return patterns.float()
    x = patterns.float().reshape(L * H, 1, T, T)  # (L*H, 1, T, T): one channel per head
    return F.adaptive_avg_pool2d(x, side).reshape(L, H, side, side)  # (L, H, side, side)


# -- scores of a model ------------------------------------------------------------------------------
def repeated_tokens(vocab_size: int, n: int, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """(batch, 2n) ids: n uniform random tokens (seeded CPU generator), repeated twice."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    half = torch.randint(0, vocab_size, (batch, n), generator=g)  # (batch, n)
    return torch.cat([half, half], dim=1)  # (batch, 2n)


@dataclass
class HeadScores:
    """(L, H) tensors. entropy (bits), prev_token, first_token: from the prompt's patterns (or, with
    no prompt, from the repeated sequence); induction: from the repeated random sequence of
    induction_len tokens x2 (seeded by `seed`, `induction_batch` sequences)."""
    entropy: torch.Tensor
    prev_token: torch.Tensor
    first_token: torch.Tensor
    induction: torch.Tensor
    induction_len: int
    seed: int


def _recorded(rec: Recorder, layer: int) -> torch.Tensor:
    name = f"blocks.{layer}.attn.hook_pattern"
    if name not in rec:
        raise KeyError(f"head_scores needs {name!r}, which this recording lacks; record with "
                       f"Recorder({NEEDS['head_scores']!r}) (or Recorder() for everything)")
    return rec[name]


def _patterns(model: torch.nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    rec = Recorder(list(NEEDS["head_scores"]))
    was_training = model.training
    model.eval()  # dropout off: the scores describe the model, not one noisy pass
    try:
        model(idx.to(next(model.parameters()).device), rec=rec)
    finally:
        model.train(was_training)
    return [rec[f"blocks.{i}.attn.hook_pattern"] for i in range(model.config.n_layer)]


def _induction(model: torch.nn.Module, induction_len: int | None, induction_batch: int, seed: int
               ) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
    cfg = model.config
    n = min(cfg.block_size // 2, 100) if induction_len is None else induction_len
    if not 1 <= n <= cfg.block_size // 2:
        raise ValueError(f"induction_len must be in 1..{cfg.block_size // 2} (two copies fit in block_size)")
    rep = _patterns(model, repeated_tokens(cfg.vocab_size, n, induction_batch, seed))
    return torch.stack([induction_score_from_pattern(p, n) for p in rep]), n, rep


@torch.no_grad()
def induction_scores(model: torch.nn.Module, induction_len: int | None = None, induction_batch: int = 4,
                     seed: int = 0) -> torch.Tensor:
    """Induction score (L, H) of every head: one recording pass over
    repeated_tokens(V, induction_len, induction_batch, seed), scored by induction_score_from_pattern.
    induction_len defaults to min(block_size // 2, 100)."""
    return _induction(model, induction_len, induction_batch, seed)[0]


@torch.no_grad()
def head_scores(model: torch.nn.Module, rec: Recorder | None = None, idx: torch.Tensor | None = None,
                induction_len: int | None = None, induction_batch: int = 4, seed: int = 0) -> HeadScores:
    """Scores for every layer and head. Prompt scores come from `rec` (which must hold
    blocks.*.attn.hook_pattern; batch averaged) or, if rec is None, from recording `idx` (B, T);
    with neither, from the repeated sequence. Induction as `induction_scores` (the same pass)."""
    cfg = model.config
    induction, n, rep = _induction(model, induction_len, induction_batch, seed)
    if rec is not None:
        prompt = [_recorded(rec, i) for i in range(cfg.n_layer)]
    elif idx is not None:
        prompt = _patterns(model, idx if idx.dim() == 2 else idx.unsqueeze(0))
    else:
        prompt = rep
    return HeadScores(induction=induction, induction_len=n, seed=seed, **prompt_head_scores(prompt))


def head_table(scores: HeadScores) -> list[dict]:
    """One row per head: {"layer", "head", "entropy", "prev_token", "first_token", "induction"} (floats)."""
    L, H = scores.entropy.shape
    return [{"layer": l, "head": h, "entropy": float(scores.entropy[l, h]),
             "prev_token": float(scores.prev_token[l, h]), "first_token": float(scores.first_token[l, h]),
             "induction": float(scores.induction[l, h])} for l in range(L) for h in range(H)]


# -- one head opened up ------------------------------------------------------------------------------
@dataclass
class AttentionSteps:
    """One head opened up, every tensor (T, ·) of batch element 0: q, k, v (T, hs); raw = q·kᵀ/√hs
    (T, T) before the mask; mask (T, T) True where key j <= query i; scores (T, T) the model's masked
    scores (-inf above the diagonal); pattern = softmax(scores) (T, T); z = pattern·v (T, hs)."""

    layer: int
    head: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    raw: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    pattern: torch.Tensor
    z: torch.Tensor


def attention_steps(rec: Recorder, layer: int, head: int) -> AttentionSteps:
    """Head `head` of `layer`, step by step, from a recording holding blocks.{layer}.attn.hook_q, k,
    v, attn_scores, pattern and z (NEEDS["attention_steps"]). raw is recomputed from q and k so the
    unmasked scores can be shown; scores, pattern and z are the model's own."""
    p = f"blocks.{layer}.attn."
    q, k, v = (rec[p + n][0, :, head].float() for n in ("hook_q", "hook_k", "hook_v"))  # (T, hs) each
    T, hs = q.shape
    raw = (q @ k.t()) / math.sqrt(hs)  # (T, T): every query against every key, the future included
    mask = torch.ones(T, T, dtype=torch.bool).tril()  # query i may look at keys 0..i
    return AttentionSteps(layer, head, q, k, v, raw, mask,
                          scores=rec[p + "hook_attn_scores"][0, head].float(),  # the model's own
                          pattern=rec[p + "hook_pattern"][0, head].float(),
                          z=rec[p + "hook_z"][0, :, head].float())
