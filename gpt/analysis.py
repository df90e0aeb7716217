"""Analyses of a recording: pure functions, tensors in, plain tensors and dataclasses out.

Conventions: a Recorder (gpt.record) filled by `model(idx, rec=rec)`; batch element 0 is analysed
unless stated otherwise; everything returned is float32 on the CPU, detached. NEEDS lists the
recorder names (globs) each analysis reads, so a caller can record exactly those.

Logit lens: row 0 is the embedding (resid_pre of block 0), row i+1 the residual after block i;
each row goes through ln_f WITH ITS OWN LayerNorm statistics (mean and variance of that residual,
then ln_f's weight and bias), then lm_head. (Reusing the final residual's scale for every layer was
TransformerLens's bug until 2025; tests/test_analysis.py catches it.) The last row is the model's
own output distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F

from gpt.generate import sampling_distribution
from gpt.record import Recorder

LN_EPS = 1e-5
RESID_KEYS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
NEEDS: dict[str, list[str]] = {
    "residual_norms": [f"blocks.*.hook_{k}" for k in RESID_KEYS],
    "logit_lens": ["blocks.*.hook_resid_pre", "blocks.*.hook_resid_post"],
    "head_scores": ["blocks.*.attn.hook_pattern"],
    "next_token": ["logits"],
}


def _get(rec: Recorder, name: str, what: str) -> torch.Tensor:
    if name not in rec:
        raise KeyError(f"{what} needs {name!r}, which this recording lacks; record with "
                       f"Recorder({NEEDS.get(what, [name])!r}) (or Recorder() for everything)")
    return rec[name]


def _n_layer(rec: Recorder) -> int:
    layers = {int(n.split(".")[1]) for n in rec.names() if n.startswith("blocks.")}
    if not layers:
        raise KeyError("the recording has no block activations; run model(idx, rec=rec) first")
    return max(layers) + 1


# -- residual stream ---------------------------------------------------------------------------------
def residual_norms(rec: Recorder, n_layer: int | None = None) -> dict[str, torch.Tensor]:
    """L2 norm over the model dimension of each residual-stream quantity, batch element 0.

    Returns {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"} -> Tensor (L, T).
    n_layer defaults to the number of layers found in the recording.
    """
    L = _n_layer(rec) if n_layer is None else n_layer
    out = {}
    for key in RESID_KEYS:
        rows = [_get(rec, f"blocks.{i}.hook_{key}", "residual_norms")[0].float().norm(dim=-1) for i in range(L)]
        out[key] = torch.stack(rows).cpu()  # (L, T)
    return out


@dataclass
class LogitLens:
    """top_ids/top_probs (L+1, P, k); layers: the L+1 row labels; positions: the P positions;
    target_probs (L+1, P) or None: each row's probability of the actual next token (when `ids` was
    given; NaN at the last sequence position, which has no next token)."""
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    layers: list[str]
    positions: list[int]
    target_probs: torch.Tensor | None = None


def lens_logits(model: torch.nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """Residual (..., C) -> logits (..., V) through ln_f with the residual's own statistics, then lm_head."""
    ln_f = model.transformer.ln_f
    w = ln_f.weight.float()
    b = None if ln_f.bias is None else ln_f.bias.float()
    x = F.layer_norm(resid.to(w.device, torch.float32), (resid.size(-1),), w, b, LN_EPS)
    return x @ model.lm_head.weight.float().t()


@torch.no_grad()
def logit_lens(model: torch.nn.Module, rec: Recorder, k: int = 5, positions: Sequence[int] | None = None,
               ids: Sequence[int] | torch.Tensor | None = None) -> LogitLens:
    """Top-k next-token predictions read off the residual stream after every layer (batch 0).

    Rows: "embed", "after block 0", ..., "after block L-1" (the last equals the model's logits).
    positions: which positions (negative allowed), default all. ids: the recorded token ids; when
    given, target_probs holds each row's probability of ids[t+1].
    """
    L = model.config.n_layer
    T = _get(rec, "blocks.0.hook_resid_pre", "logit_lens").size(1)
    pos = list(range(T)) if positions is None else [p % T for p in positions]
    sel = torch.tensor(pos, dtype=torch.long)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(L)]
    tgt = None
    if ids is not None:
        ids_t = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
        nxt = torch.cat([ids_t[1:], torch.tensor([-1])])[sel]  # (P,) next token, -1 at the end
    top_ids, top_probs, tps = [], [], []
    for name in names:
        resid = _get(rec, name, "logit_lens")[0, sel]  # (P, C)
        probs = F.softmax(lens_logits(model, resid), dim=-1).cpu()  # (P, V)
        p, i = torch.topk(probs, min(k, probs.size(-1)), dim=-1)
        top_ids.append(i)
        top_probs.append(p)
        if ids is not None:
            tp = probs.gather(1, nxt.clamp(min=0).unsqueeze(1)).squeeze(1)
            tps.append(tp.masked_fill(nxt < 0, float("nan")))
    if ids is not None:
        tgt = torch.stack(tps)
    labels = ["embed"] + [f"after block {i}" for i in range(L)]
    return LogitLens(torch.stack(top_ids), torch.stack(top_probs), labels, pos, tgt)


# -- the output distribution -----------------------------------------------------------------------
@dataclass
class NextToken:
    """top_ids/top_probs (T, k) at every position; for t < T-1 the actual next token ids[t+1]:
    actual_prob (T-1,), actual_rank (T-1,) (1 = the most likely; 1 + number of tokens with a
    strictly higher probability), surprise_bits (T-1,) = -log2(actual_prob)."""
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    actual_prob: torch.Tensor
    actual_rank: torch.Tensor
    surprise_bits: torch.Tensor


def next_token(logits: torch.Tensor, ids: Sequence[int] | torch.Tensor, temperature: float = 1.0,
               k: int = 10) -> NextToken:
    """The next-token distribution at every position, softmax(logits / temperature) through
    gpt.generate.sampling_distribution (temperature 0 = one-hot greedy, surprise inf off the argmax).

    logits (T, V) or (1, T, V); ids: the T token ids the logits were computed from.
    """
    if logits.dim() == 3:
        if logits.size(0) != 1:
            raise ValueError(f"next_token takes one sequence; got a batch of {logits.size(0)}: pass logits[i]")
        logits = logits[0]
    T, V = logits.shape
    ids_t = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
    if ids_t.numel() != T:
        raise ValueError(f"got {ids_t.numel()} ids for {T} positions of logits; pass the ids that were forwarded")
    probs = sampling_distribution(logits.detach().cpu(), temperature)  # (T, V)
    top_probs, top_ids = torch.topk(probs, min(k, V), dim=-1)
    actual = ids_t[1:].unsqueeze(1)  # (T-1, 1)
    p = probs[:-1].gather(1, actual)  # (T-1, 1)
    rank = 1 + (probs[:-1] > p).sum(dim=1)
    return NextToken(top_ids, top_probs, p.squeeze(1), rank, -torch.log2(p.squeeze(1)))


def per_position_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) at each position: logits (T, V) / (B, T, V), targets (T,) / (B, T) ->
    (T,) / (B, T). Targets of -1 are ignored (loss 0 there); the mean over the other positions
    equals GPT.forward(idx, targets)'s loss."""
    V = logits.size(-1)
    loss = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=-1, reduction="none")
    return loss.view(targets.shape)


# -- attention heads -------------------------------------------------------------------------------
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


def repeated_tokens(vocab_size: int, n: int, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """(batch, 2n) ids: n uniform random tokens (seeded CPU generator), repeated twice."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    half = torch.randint(0, vocab_size, (batch, n), generator=g)
    return torch.cat([half, half], dim=1)


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


def _patterns(model: torch.nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    rec = Recorder(["blocks.*.attn.hook_pattern"])
    was_training = model.training
    model.eval()
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
        prompt = [_get(rec, f"blocks.{i}.attn.hook_pattern", "head_scores") for i in range(cfg.n_layer)]
    elif idx is not None:
        prompt = _patterns(model, idx if idx.dim() == 2 else idx.unsqueeze(0))
    else:
        prompt = rep
    per = [head_scores_from_pattern(p) for p in prompt]
    stack = {key: torch.stack([d[key] for d in per]) for key in ("entropy", "prev_token", "first_token")}
    return HeadScores(induction=induction, induction_len=n, seed=seed, **stack)


def head_table(scores: HeadScores) -> list[dict]:
    """One row per head: {"layer", "head", "entropy", "prev_token", "first_token", "induction"} (floats)."""
    L, H = scores.entropy.shape
    return [{"layer": l, "head": h, "entropy": float(scores.entropy[l, h]),
             "prev_token": float(scores.prev_token[l, h]), "first_token": float(scores.first_token[l, h]),
             "induction": float(scores.induction[l, h])} for l in range(L) for h in range(H)]


# -- embeddings ------------------------------------------------------------------------------------
@torch.no_grad()
def embedding_pca(model: torch.nn.Module, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of the token embeddings wte (V, C): coords (V, k) of each token on the top-k principal
    components and explained_variance_ratio (k,), descending. Exact (eigendecomposition of the
    C x C covariance in float64); each component's sign makes its largest loading positive."""
    W = model.transformer.wte.weight.detach().double().cpu()  # (V, C)
    Wc = W - W.mean(dim=0, keepdim=True)
    evals, evecs = torch.linalg.eigh(Wc.t() @ Wc)  # ascending, (C,), (C, C)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    comps = evecs[:, :k]  # (C, k)
    sign = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))  # (1, k)
    comps = comps * sign
    ratio = evals[:k] / evals.sum()
    return (Wc @ comps).float(), ratio.float()


@torch.no_grad()
def position_similarity(model: torch.nn.Module) -> torch.Tensor:
    """Cosine similarity (block_size, block_size) between every pair of position embeddings."""
    P = F.normalize(model.transformer.wpe.weight.detach().float().cpu(), dim=-1)  # (block_size, C)
    return P @ P.t()
