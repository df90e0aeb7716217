"""Head scores over a dataset: every head's score on each of N text windows, their means, and the
windows on which each head scores highest. This is what the analysis job (trainers/analyze.py)
computes for every snapshot of a run; gpt.heads scores one prompt.

Pure functions, tensors in, float32 CPU tensors out. Patterns are (B, H, T, T) softmax weights
(rows queries, columns keys, zero above the diagonal), as a Recorder holds under
blocks.{i}.attn.hook_pattern. Scores of one window average over its queries t >= 1 (query 0 can
only attend to itself):

  prev_token         mean of pattern[t, t-1]
  induction_natural  mean, over the queries whose token occurred before, of the attention on the
                     tokens that FOLLOWED those earlier occurrences: sum of pattern[t, j] over
                     1 <= j <= t-1 with ids[j-1] == ids[t] (Olsson et al.'s prefix matching, on
                     natural text); NaN for a window where no token repeats
  sink               mean of pattern[t, 0] (attention to the first token)
  self               mean of pattern[t, t]
  entropy            mean of -sum_j pattern[t, j] log2 pattern[t, j], in bits
  induction_random   gpt.heads' induction score on random tokens repeated twice, one value per
                     random sequence (not a validation window)

A dataset score is the mean over windows (for induction_natural, over the windows where it is
defined); its top windows are the k windows with the highest score, best first.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from gpt.heads import repeated_tokens
from gpt.record import Recorder

SCORE_NAMES = ("prev_token", "induction_random", "induction_natural", "sink", "self", "entropy")
WINDOW_SCORES = ("prev_token", "induction_natural", "sink", "self", "entropy")  # one value per window
RANDOM_SEQUENCES = 16  # repeated random sequences behind induction_random (gpt.heads uses 4 for one prompt)
CHUNK = 4  # windows per forward: 4 MB of patterns per layer at T=256 (larger chunks page-fault more, gain nothing)
ROWS = 32  # query rows per block in window_scores_from_pattern


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool: [b, t, j] is True where key j follows an earlier occurrence of query t's
    token, i.e. 1 <= j <= t-1 and ids[b, j-1] == ids[b, t]."""
    same = ids[:, :, None] == ids[:, None, :]  # (B, T, T): [t, i] ids[t] == ids[i]
    M = torch.zeros_like(same)
    M[:, :, 1:] = same[:, :, :-1]  # (B, T, T): [t, j] ids[t] == ids[j-1]
    return M.tril(diagonal=-1)  # j <= t-1: the current token itself does not count


def window_scores_from_pattern(pattern: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor | None = None,
                               scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-window scores {name in WINDOW_SCORES: (B, H)} of patterns (B, H, T, T) on windows ids
    (B, T), T >= 2; definitions in the module docstring. targets: induction_targets(ids), when the
    caller has it already (one per chunk of windows serves every layer). scores: the masked
    attention scores the patterns are the softmax of (hook_attn_scores, -inf above the diagonal);
    given, the entropy comes from them without a logarithm per weight (see _entropy_rows)."""
    p = pattern.float()
    B, H, T, _ = p.shape  # (B, H, T, T)
    if T < 2 or ids.shape != (B, T):
        raise ValueError(f"patterns {tuple(p.shape)} need ids of shape {(B, T)} with T >= 2, got {tuple(ids.shape)}")
    M = (induction_targets(ids) if targets is None else targets).to(p.device, p.dtype)  # (B, T, T)
    q = p[:, :, 1:, :]  # (B, H, T-1, T): queries 1..T-1
    # row blocks: queries a..b-1 attend to keys 0..b-1 only, so the zeros above the diagonal are
    # skipped in the two full passes (56% of the work at T=256), and temporaries stay small
    ent, on_targets = [], []
    for a in range(0, T, ROWS):
        b = min(a + ROWS, T)
        rows = p[:, :, a:b, :b]  # (B, H, b-a, b)
        ent.append(_entropy_rows(rows, None if scores is None else scores[:, :, a:b, :b].float()))  # (B, H, b-a)
        on_targets.append((rows * M[:, None, a:b, :b]).sum(-1))  # (B, H, b-a): attention on query's targets
    ent = torch.cat(ent, -1)[..., 1:] / math.log(2.0)  # (B, H, T-1), bits
    on_targets = torch.cat(on_targets, -1)  # (B, H, T)
    counted = (M.sum(-1) > 0).sum(-1).to(p.dtype)  # (B,): queries with a target
    return {"prev_token": p.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1),  # (B, H)
            "induction_natural": on_targets.sum(-1) / counted[:, None],  # (B, H); 0/0 = NaN: no repeat
            "sink": q[..., 0].mean(-1),
            "self": p.diagonal(dim1=-2, dim2=-1)[..., 1:].mean(-1),
            "entropy": ent.mean(-1)}


def _entropy_rows(p: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """-sum_j p log p over the last axis, in nats: (..., Tk) -> (...). With the scores s that p is
    the softmax of: log p = s - lse, so H = lse - sum_j p s, and lse = max s - log(max p) (the
    largest weight is >= 1/Tk, so its log is safe); masked scores (-inf, weight 0) are clamped to
    a finite value that the zero weight cancels. Twice as fast as xlogy (no log per weight);
    agrees with it to about 1e-5."""
    if s is None:
        return -torch.special.xlogy(p, p).sum(-1)
    lse = s.amax(-1) - p.amax(-1).log()  # (...)
    return lse - (p * s.clamp_min(-1e4)).sum(-1)


@contextmanager
def _eval(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while scoring (the scores describe the model, not one noisy pass); the model's
    mode is given back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _attention(model: torch.nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(masked scores, pattern)] per layer, each (B, H, T, T), as computed, for ids (B, T) with
    dropout off. The blocks run through the last layer's attention only: the last MLP, the final
    LayerNorm and the unembedding change no pattern (about a tenth of the forward saved)."""
    names = ["blocks.*.attn.hook_attn_scores", "blocks.*.attn.hook_pattern"]
    cfg, t = model.config, model.transformer
    ids = ids.to(t.wte.weight.device)
    rec = Recorder(names, device=ids.device, compact=False)  # the tensors themselves: no copies, no rebuilds
    rec.begin(cfg)  # (as GPT.forward does before its blocks)
    x = t.wte(ids) + t.wpe(torch.arange(ids.size(1), device=ids.device))  # (B, T, C); dropout off
    for i, block in enumerate(t.h):
        if i < cfg.n_layer - 1:
            x = block(x, rec=rec, layer=i)  # (B, T, C)
        else:
            block.attn(block.ln_1(x), rec=rec, prefix=f"blocks.{i}.", layer=i)
    return [(rec[f"blocks.{i}.attn.hook_attn_scores"], rec[f"blocks.{i}.attn.hook_pattern"]) for i in range(cfg.n_layer)]


@torch.inference_mode()
def window_scores(model: torch.nn.Module, windows: torch.Tensor, chunk: int = CHUNK,
                  on_chunk: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """{name in WINDOW_SCORES: (N, L, H)}: every head's score on every window of `windows` (N, T),
    in forwards of `chunk` windows with dropout off. on_chunk(done, N) is called after each chunk
    (the analysis job counts progress and raises there to stop)."""
    N, T = windows.shape
    if not 2 <= T <= model.config.block_size:
        raise ValueError(f"windows of {T} tokens: this model takes 2 to {model.config.block_size}")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in WINDOW_SCORES}
    with _eval(model):
        for a in range(0, N, chunk):
            ids = windows[a:a + chunk].long()  # (b, T)
            M = induction_targets(ids)  # (b, T, T)
            per_layer = [window_scores_from_pattern(p, ids, M, sc) for sc, p in _attention(model, ids)]  # L x {name: (b, H)}
            for k in WINDOW_SCORES:
                out[k].append(torch.stack([d[k] for d in per_layer], dim=1).cpu())  # (b, L, H)
            if on_chunk is not None:
                on_chunk(min(a + chunk, N), N)
    return {k: torch.cat(v) for k, v in out.items()}  # (N, L, H) each


@torch.inference_mode()
def random_induction(model: torch.nn.Module, seed: int, sequences: int = RANDOM_SEQUENCES,
                     n: int | None = None) -> torch.Tensor:
    """(sequences, L, H): the induction score of every head on each of `sequences` random
    sequences of n tokens repeated twice (gpt.heads.repeated_tokens(V, n, sequences, seed); n
    defaults to min(block_size // 2, 100), as gpt.heads.induction_scores). Their mean over the
    sequences is gpt.heads.induction_scores(model, n, sequences, seed)."""
    cfg = model.config
    n = min(cfg.block_size // 2, 100) if n is None else n
    ids = repeated_tokens(cfg.vocab_size, n, sequences, seed)  # (S, 2n)
    rows = []
    with _eval(model):
        for a in range(0, sequences, CHUNK):
            pats = [p for _, p in _attention(model, ids[a:a + CHUNK])]  # L x (b, H, 2n, 2n)
            # pattern[t, t-n+1] for t = n .. 2n-1, per sequence (induction_score_from_pattern's
            # stripe, not yet averaged over the batch)
            rows.append(torch.stack([p.float().diagonal(offset=-(n - 1), dim1=-2, dim2=-1)[..., 1:].mean(-1)
                                     for p in pats], dim=1).cpu())  # (b, L, H)
    return torch.cat(rows)  # (S, L, H)


def top_windows(per_window: torch.Tensor, k: int) -> list[list[list[tuple[int, float]]]]:
    """[L][H] lists of (window index, score), the k highest scores of per_window (N, L, H) for each
    head, best first; NaN windows (no score) are left out."""
    N, L, H = per_window.shape
    x = per_window.nan_to_num(nan=-math.inf).permute(1, 2, 0)  # (L, H, N)
    vals, idx = x.topk(min(k, N), dim=-1)  # (L, H, k)
    return [[[(int(i), float(v)) for i, v in zip(idx[l, h].tolist(), vals[l, h].tolist()) if v > -math.inf]
             for h in range(H)] for l in range(L)]


@dataclass
class DatasetScores:
    """One checkpoint's head scores over a dataset. scores: {name in SCORE_NAMES: (L, H)} means
    (NaN where no window defines the score); top: {name: [L][H] lists of (window index, score)},
    empty lists for induction_random (its sequences are random, not windows); per_window:
    {name in WINDOW_SCORES: (N, L, H)} and "induction_random": (sequences, L, H)."""
    scores: dict[str, torch.Tensor]
    top: dict[str, list[list[list[tuple[int, float]]]]]
    per_window: dict[str, torch.Tensor]


def dataset_scores(model: torch.nn.Module, windows: torch.Tensor, seed: int = 0, top_k: int = 8,
                   chunk: int = CHUNK, sequences: int = RANDOM_SEQUENCES,
                   on_chunk: Callable[[int, int], None] | None = None) -> DatasetScores:
    """Every head's scores on the windows (N, T) and on `sequences` repeated random sequences
    (seeded by `seed`): means, top `top_k` windows per head, and the per-window values."""
    per = window_scores(model, windows, chunk, on_chunk)
    per["induction_random"] = random_induction(model, seed, sequences)
    L, H = per["prev_token"].shape[1:]
    scores = {k: per[k].nanmean(0) for k in SCORE_NAMES}  # (L, H) each
    top = {k: top_windows(per[k], top_k) if k in WINDOW_SCORES else [[[] for _ in range(H)] for _ in range(L)]
           for k in SCORE_NAMES}
    return DatasetScores(scores=scores, top=top, per_window=per)
