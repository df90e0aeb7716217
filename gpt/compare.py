"""Two forwards side by side: two checkpoints on one prompt, or one checkpoint on two prompts.

What can be compared depends on the two models and prompts, and `comparable` decides it once:
- Positions line up when both sides use one tokenizer (position t is token t of each side's prompt;
  with prompts of different lengths the first n = min(T_a, T_b) are compared, which is exact for a
  causal model: its first n positions see nothing after them), or, with two tokenizers, when both
  split the prompt into the same pieces. Per-position comparisons (loss, attention-pattern and
  logit-lens differences, KL) need that.
- Next-token distributions (KL, the DLA of one token on both sides) need one vocabulary: the same
  tokenizer.
- Per-head differences (head scores, DLA head terms) need the same number of layers and heads;
  logit-lens rows line up with the same number of layers.
What is not compared is still shown side by side; `Comparable.skipped` says what and why, in words.

Sign convention everywhere: a difference is B − A (what changed going from A to B). KL is
KL(A ‖ B) = Σ_v p_A(v) (log p_A(v) − log p_B(v)), in nats: how much worse B's distribution codes
what A expects. Pure functions: tensors in, float tensors on the CPU out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F

from gpt.analysis import per_position_loss
from gpt.config import GPTConfig
from gpt.tokenizer import Tokenizer


@dataclass(frozen=True)
class Comparable:
    """What two sides have in common. n: positions compared (0 when none line up); same_vocab: one
    tokenizer; same_layers / same_heads: equal n_layer / equal (n_layer, n_head); skipped: a
    sentence per comparison that is not made, with its reason; notes: caveats of what is made."""

    n: int
    same_vocab: bool
    same_layers: bool
    same_heads: bool
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def kl(self) -> bool:
        """Whether per-position KL between the next-token distributions is defined."""
        return self.same_vocab and self.n > 0

    @property
    def lens(self) -> bool:
        """Whether the logit lens can be differenced cell by cell (same rows, same positions)."""
        return self.same_layers and self.n > 0


def describe_tokenizer(tok: Tokenizer) -> str:
    """"char (65 tokens)", "gpt2 (50257 tokens)"."""
    return f"{tok.kind} ({tok.vocab_size} tokens)"


def comparable(tok_a: Tokenizer, tok_b: Tokenizer, cfg_a: GPTConfig, cfg_b: GPTConfig,
               pieces_a: Sequence[str], pieces_b: Sequence[str]) -> Comparable:
    """What can be compared between side A (tokenizer, config, its prompt's token strings) and side
    B. Token strings are what each tokenizer shows for each id (Tokenizer.token_str), so two
    tokenizers that split the prompt alike give equal lists whatever their ids."""
    same_vocab = tok_a == tok_b
    same_layers = cfg_a.n_layer == cfg_b.n_layer
    same_heads = same_layers and cfg_a.n_head == cfg_b.n_head
    Ta, Tb = len(pieces_a), len(pieces_b)
    skipped: list[str] = []
    notes: list[str] = []
    if same_vocab:
        n = min(Ta, Tb)
        if Ta != Tb:
            notes.append(f"The prompts are {Ta} and {Tb} tokens long: their first {n} positions are compared "
                         f"(a causal model's first {n} positions see nothing after them).")
    elif list(pieces_a) == list(pieces_b):
        n = Ta
        skipped.append(f"Next-token distributions (KL) and the attribution of one token: the tokenizers differ "
                       f"({describe_tokenizer(tok_a)} against {describe_tokenizer(tok_b)}), so their "
                       "distributions are over different tokens. Both split the prompt alike, so losses, "
                       "attention and the lens's probability of the actual next token are compared.")
    else:
        n = 0
        skipped.append(f"Everything per position (KL, losses, attention and lens differences) and the attribution "
                       f"of one token: the tokenizers ({describe_tokenizer(tok_a)} against "
                       f"{describe_tokenizer(tok_b)}) split the prompt into {Ta} and {Tb} tokens, so position t "
                       "is not the same text on both sides. Each side is shown on its own.")
    if not same_heads:
        skipped.append(f"Per-head differences (head scores, DLA head terms): the models have "
                       f"{cfg_a.n_layer}x{cfg_a.n_head} and {cfg_b.n_layer}x{cfg_b.n_head} layers x heads.")
    if n and not same_layers:
        skipped.append(f"The logit lens cell by cell: the models have {cfg_a.n_layer} and {cfg_b.n_layer} layers, "
                       "so its rows do not line up.")
    return Comparable(n, same_vocab, same_layers, same_heads, tuple(skipped), tuple(notes))


# -- distributions -----------------------------------------------------------------------------------
def _rows(logits: torch.Tensor) -> torch.Tensor:
    """(1, T, V) or (T, V) -> (T, V) float64 on the CPU."""
    lg = logits[0] if logits.dim() == 3 else logits
    return lg.detach().double().cpu()


def kl_per_position(logits_a: torch.Tensor, logits_b: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """KL(A ‖ B) in nats at each of the first n positions (default: all the shorter side has), from
    logits (T, V) or (1, T, V) of one vocabulary -> (n,) float64. Zero where the distributions are
    equal; never negative (up to rounding, clamped)."""
    a, b = _rows(logits_a), _rows(logits_b)
    if a.size(-1) != b.size(-1):
        raise ValueError(f"KL needs one vocabulary; the logits have {a.size(-1)} and {b.size(-1)} entries")
    n = min(a.size(0), b.size(0)) if n is None else n
    la, lb = F.log_softmax(a[:n], dim=-1), F.log_softmax(b[:n], dim=-1)  # (n, V) each
    return (la.exp() * (la - lb)).sum(-1).clamp_min(0.0)  # (n,)


def loss_per_position(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Cross-entropy (nats) of each actual next token: position t predicts ids[t + 1] -> (T-1,)
    float32 (gpt.analysis.per_position_loss of the same logits)."""
    lg = _rows(logits).float()  # (T, V)
    if len(ids) != lg.size(0):
        raise ValueError(f"{len(ids)} ids for {lg.size(0)} positions of logits")
    targets = torch.as_tensor(list(ids)[1:], dtype=torch.long)  # (T-1,)
    return per_position_loss(lg[:-1], targets)


# -- attention ---------------------------------------------------------------------------------------
def pattern_distance(pattern_a: torch.Tensor, pattern_b: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """How differently two heads attend: for patterns (..., T, T), cut to their first n queries and
    keys (default: the smaller T), the total-variation distance ½ Σ_k |a[t, k] − b[t, k]| of each
    query row, averaged over queries 1..n-1 -> (...). 0 = the same weights, 1 = disjoint keys.
    Query 0 is left out: it can only attend to itself, on both sides. 0 when n == 1."""
    n = min(pattern_a.size(-1), pattern_b.size(-1)) if n is None else n
    if n < 2:
        return torch.zeros(pattern_a.shape[:-2])
    a = pattern_a[..., 1:n, :n].float()  # (..., n-1, n)
    b = pattern_b[..., 1:n, :n].float()
    return 0.5 * (a - b).abs().sum(-1).mean(-1)  # (...)


def pattern_diff(pattern_a: torch.Tensor, pattern_b: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """B − A of two heads' patterns (T, T), cut to the first n queries and keys -> (n, n) float32.
    Keys after the query (masked on both sides) are NaN, so a figure leaves them blank."""
    n = min(pattern_a.size(-1), pattern_b.size(-1)) if n is None else n
    d = pattern_b[:n, :n].float() - pattern_a[:n, :n].float()  # (n, n)
    return d.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("nan"))


# -- logit lens --------------------------------------------------------------------------------------
def top1_agreement(top_a: Sequence[Sequence[str]], top_b: Sequence[Sequence[str]]) -> torch.Tensor:
    """Where two logit lenses make the same top guess: token strings (R, P) of each side's top-1
    guess -> (R, P) bool. Strings, not ids, so lenses of two tokenizers can be compared."""
    if len(top_a) != len(top_b) or any(len(x) != len(y) for x, y in zip(top_a, top_b)):
        raise ValueError("the two lenses have different rows or positions")
    return torch.tensor([[x == y for x, y in zip(ra, rb)] for ra, rb in zip(top_a, top_b)], dtype=torch.bool)


# -- per-head numbers --------------------------------------------------------------------------------
def difference(a: torch.Tensor, b: torch.Tensor, what: str = "values") -> torch.Tensor:
    """B − A of two same-shaped tensors (head scores (L, H), DLA head terms, ...) as float32.
    ValueError naming `what` when the shapes differ (models of another shape)."""
    if a.shape != b.shape:
        raise ValueError(f"{what} of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be differenced")
    return b.float() - a.float()


def largest_changes(delta: torch.Tensor, k: int = 3) -> list[tuple[int, int, float]]:
    """The k cells of a (L, H) difference with the largest |value|, largest first: [(layer, head, value)]."""
    flat = delta.flatten()
    order = torch.argsort(flat.abs(), descending=True)[:k].tolist()
    H = delta.size(1)
    return [(i // H, i % H, float(flat[i])) for i in order]
