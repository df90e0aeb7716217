"""One head on one text window: what each query position contributes to a head score, and the
query that shows the head's behaviour best (the Timeline's top validation examples open there).

Pure: a pattern (T, T) (rows are queries, columns keys, zero above the diagonal, as
blocks.{i}.attn.hook_pattern[b, h]) and the window's ids in; a (T,) tensor or a position out.
The terms are the per-query quantities the analysis job's scores average (gpt.dataset_scores;
score names as in gpt.score_history): prev_token p[t, t-1], sink p[t, 0], self p[t, t], entropy -Σ p log2 p (bits),
and induction the weight on tokens that follow an earlier occurrence of the query's token. On a
natural window "induction_random" has no repeated random sequence to read, so its examples are
shown by the natural-repeat term.
"""
from __future__ import annotations

from typing import Sequence

import torch

from gpt.dataset_scores import induction_targets

LOW_IS_STRONG = ("entropy",)  # a focused head has low entropy


def query_terms(pattern: torch.Tensor, ids: Sequence[int], score: str) -> torch.Tensor:
    """(T,) float: the `score` term of each query position of `pattern` (T, T) on the window `ids`
    (T tokens). Position 0 can only attend to itself; its term is NaN (never a default query)."""
    p = torch.as_tensor(pattern).detach().float().cpu()
    T = p.size(-1)
    if p.shape != (T, T) or len(ids) != T:
        raise ValueError(f"need a (T, T) pattern and T ids; got {tuple(p.shape)} and {len(ids)} ids")
    out = torch.full((T,), float("nan"))
    if T == 1:
        return out
    if score == "prev_token":
        out[1:] = p.diagonal(-1)  # (T-1,): p[t, t-1]
    elif score == "sink":
        out[1:] = p[1:, 0]
    elif score == "self":
        out[1:] = p.diagonal()[1:]
    elif score == "entropy":
        out[1:] = -torch.special.xlogy(p[1:], p[1:]).sum(-1) / torch.log(torch.tensor(2.0))
    elif score in ("induction_natural", "induction_random"):
        follows = induction_targets(torch.as_tensor([list(ids)]))[0]  # (T, T): key j follows an earlier copy
        out[1:] = (p * follows).sum(-1)[1:]
    else:
        raise ValueError(f"unknown score {score!r}; choose one of prev_token, induction_random, "
                         "induction_natural, sink, self, entropy")
    return out


def focus_query(pattern: torch.Tensor, ids: Sequence[int], score: str) -> int:
    """The query position whose `score` term is strongest (the lowest entropy; the highest weight
    otherwise); the last position when no term is above 0 (e.g. no repeated token for induction)."""
    terms = query_terms(pattern, ids, score)
    T = terms.numel()
    if score in LOW_IS_STRONG:
        terms = -terms
    elif not bool((terms.nan_to_num(0.0) > 0).any()):
        return T - 1
    if bool(terms.isnan().all()):
        return T - 1
    return int(terms.nan_to_num(float("-inf")).argmax())
