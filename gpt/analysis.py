"""Analyses of a recording and of the model's predictions: the residual stream (norms, logit lens),
the output distribution (next-token probabilities, the true token's rank, losses on a prompt) and
the embeddings. Pure functions, tensors in, plain tensors and dataclasses out; attention-head
scores live in gpt.heads.

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
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from gpt.generate import sampling_distribution
from gpt.record import Recorder

LN_EPS = 1e-5
RESID_KEYS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
NEEDS: dict[str, list[str]] = {
    "residual_norms": [f"blocks.*.hook_{k}" for k in RESID_KEYS],
    "logit_lens": ["blocks.*.hook_resid_pre", "blocks.*.hook_resid_post"],
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


def target_prob_rank(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's probability of its target token, and that token's rank: probs (N, V) and targets
    (N,) long on the same device -> prob (N,), rank (N,) long. Rank 1 is the most likely; it is
    1 + the number of tokens with a strictly higher probability, so tied tokens share the better rank."""
    p = probs.gather(1, targets.unsqueeze(1))  # (N, 1)
    rank = 1 + (probs > p).sum(dim=1)  # (N,)
    return p.squeeze(1), rank


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
    prob, rank = target_prob_rank(probs[:-1], ids_t[1:])  # (T-1,) each: position t predicts ids[t+1]
    return NextToken(top_ids, top_probs, prob, rank, -torch.log2(prob))


def per_position_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) at each position: logits (T, V) / (B, T, V), targets (T,) / (B, T) ->
    (T,) / (B, T). Targets of -1 are ignored (loss 0 there); the mean over the other positions
    equals GPT.forward(idx, targets)'s loss."""
    V = logits.size(-1)
    loss = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=-1, reduction="none")
    return loss.view(targets.shape)


def prompt_loss(logits: torch.Tensor, ids: Sequence[int]) -> float | None:
    """Mean cross-entropy (nats) of predicting ids[t+1] from position t: GPT.forward(ids[:-1],
    ids[1:])'s loss, read off the logits (1, T, V) or (T, V) of one forward over all T `ids` (so a
    recording made for other figures gives the loss without another forward). None for one token."""
    if logits.dim() == 3:
        logits = logits[0]  # (T, V)
    if len(ids) < 2:
        return None
    targets = torch.as_tensor(list(ids)[1:], dtype=torch.long, device=logits.device)  # (T-1,)
    return float(per_position_loss(logits[:-1], targets).mean())


@torch.no_grad()
def forward_loss(model: torch.nn.Module, ids: Sequence[int]) -> float | None:
    """The model's loss on the prompt: GPT.forward(ids[:-1], targets=ids[1:]) (nats); None for one
    token. The model's mode is left as it is (call .eval() first for a loss without dropout)."""
    if len(ids) < 2:
        return None
    idx = torch.tensor([list(ids)], dtype=torch.long, device=next(model.parameters()).device)  # (1, T)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    return float(loss)


@dataclass
class TrainingExample:
    """The prompt as one training example: x = ids[:-1], y = ids[1:] (each position's next token).
    loss: what GPT.forward(x, y) returns; per_position (T-1,): cross-entropy at each position (nats);
    top_ids/top_probs (T-1, k): each position's predicted distribution; target_prob/target_rank
    (T-1,): the probability and rank (1 = top) of the true next token."""

    x: list[int]
    y: list[int]
    loss: float
    per_position: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    target_prob: torch.Tensor
    target_rank: torch.Tensor

    @property
    def mean(self) -> float:
        """The mean of the per-position losses: equals `loss` (up to float rounding)."""
        return float(self.per_position.mean())


@torch.no_grad()
def training_example(model: torch.nn.Module, ids: Sequence[int], k: int = 5, edit: Any = None) -> TrainingExample:
    """One forward(x, y, edit=edit) of the prompt (needs >= 2 tokens) and its per-position losses
    (per_position_loss of the same logits, so their mean is the forward's loss). Tensors come back
    on the CPU."""
    if len(ids) < 2:
        raise ValueError("training needs at least 2 tokens: an input and the next token to predict")
    dev = next(model.parameters()).device
    x = torch.tensor([list(ids[:-1])], dtype=torch.long, device=dev)  # (1, T-1)
    y = torch.tensor([list(ids[1:])], dtype=torch.long, device=dev)  # (1, T-1) shifted by one
    logits, loss = model(x, y, edit=edit)  # logits (1, T-1, V)
    per = per_position_loss(logits[0], y[0]).cpu()  # (T-1,)
    probs = sampling_distribution(logits[0].cpu(), 1.0)  # (T-1, V) plain softmax
    top_p, top_i = torch.topk(probs, min(k, probs.size(-1)), dim=-1)  # (T-1, k) each
    p, rank = target_prob_rank(probs, y[0].cpu())  # (T-1,) each
    return TrainingExample(x[0].tolist(), y[0].tolist(), float(loss), per, top_i, top_p, p, rank)


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
