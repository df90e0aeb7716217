"""Attention of every layer at long context, one layer at a time: what the Attention page needs at
T=1024 without keeping every (H, T, T) pattern.

`AttentionTrace(model, ids, edit=None)` runs the model's blocks lazily, in order, each through its
recorded (hooked) path so the patterns are exactly what `model(idx, rec=Recorder(...))` records.
From each block it keeps only:
  - the block's input (resid_pre, (T, C)), so any layer's full pattern can be rebuilt by running
    that one block again (0.1-0.5 s at T=1024 for GPT-2 small) instead of being stored
    (GPT-2 small's 12 x 12 patterns at T=1024 are 600 MB in float32);
  - a digest: each head's pattern block-max pooled to a thumbnail, the largest weight outside
    row 0 (the colour scale's top), and the prompt's head scores (entropy, previous, first token).

`pattern(layer)` runs blocks up to `layer` only, so the open head's figures can be drawn before
later layers have run; `digests()` runs the rest. Thread-safe (one lock): a trace is cached and
shared by sessions. No logits are computed: the unembedding (a quarter of GPT-2 small's forward at
T=1024) is skipped.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from gpt.heads import head_scores_from_pattern
from gpt.record import Recorder

if TYPE_CHECKING:
    from gpt.edit import Edits
    from gpt.model import GPT

THUMB_SIDE = 64  # each head's thumbnail in the all-heads grid: at most this many cells a side
KEEP_LAYERS = 2  # layers whose full patterns and scores are kept (96 MB each for GPT-2 small at T=1024)


def block_max(pattern: torch.Tensor, side: int) -> torch.Tensor:
    """Block-max pooling of (..., T, T) to (..., S, S) with S = min(side, T), float32: cell (i, j) is
    the largest weight in its block of queries x keys (adaptive blocks: rows floor(i*T/S) ..
    ceil((i+1)*T/S) - 1, as gpt.heads.pool_patterns). Max, not mean, so a one-token-wide
    structure (a previous-token diagonal, an induction stripe) stays visible when pooled 16x."""
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    *lead, T, T2 = pattern.shape
    if T != T2:
        raise ValueError(f"expected square patterns (..., T, T), got {tuple(pattern.shape)}")
    x = pattern.float().reshape(-1, 1, T, T)  # (N, 1, T, T): one channel per map
    if side >= T:
        return x.reshape(*lead, T, T)
    return F.adaptive_max_pool2d(x, side).reshape(*lead, side, side)  # (..., S, S)


def pattern_tops(pattern: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...): each map's largest weight outside row 0 (row 0 is always [1, 0, ...]),
    the end of its colour scale; 1.0 for one token."""
    if pattern.size(-2) < 2:
        return torch.ones(pattern.shape[:-2])
    return pattern[..., 1:, :].float().amax(dim=(-1, -2)).clamp_min(1e-6)


@dataclass(frozen=True)
class LayerDigest:
    """One layer's heads, small enough to keep for every layer: thumbs (H, S, S) block-max pooled
    pattern; tops (H,) largest weight outside row 0; entropy (bits), prev_token, first_token (H,)."""

    thumbs: torch.Tensor
    tops: torch.Tensor
    entropy: torch.Tensor
    prev_token: torch.Tensor
    first_token: torch.Tensor


class AttentionTrace:
    """Lazy per-layer attention of `model` on `ids` (batch 1) under `edit` (see the module doc)."""

    def __init__(self, model: "GPT", ids: Sequence[int], edit: "Edits | None" = None,
                 thumb_side: int = THUMB_SIDE) -> None:
        if len(ids) < 1:
            raise ValueError("AttentionTrace needs at least one token")
        cfg = model.config
        if len(ids) > cfg.block_size:
            raise ValueError(f"{len(ids)} tokens do not fit block_size {cfg.block_size}")
        self.model, self.config, self.T = model, cfg, len(ids)
        self.edit = edit if edit else None  # an empty Edits is no edit (as GPT.forward)
        self.thumb_side = thumb_side
        self._lock = threading.Lock()
        self._resid: list[torch.Tensor] = []  # resid_pre of layers run so far, each (1, T, C)
        self._digests: list[LayerDigest] = []
        # layer -> (pattern, scores), an LRU of KEEP_LAYERS
        self._full: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        dev = next(model.parameters()).device
        idx = torch.tensor([list(ids)], dtype=torch.long, device=dev)  # (1, T)
        with torch.no_grad():
            pos = torch.arange(self.T, device=dev)  # (T,)
            if self.edit is not None:
                self.edit.begin(cfg, 0, self.T, model=model)
                emb = self._hooked_embed(idx, pos)
            else:
                emb = model.transformer.wte(idx) + model.transformer.wpe(pos)  # (1, T, C)
        self._next = model.transformer.drop(emb)  # the input of the first block not run yet

    def _hooked_embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        from gpt.edit import hook

        tok = hook(None, self.edit, "hook_embed", self.model.transformer.wte(idx))  # (1, T, C)
        p = hook(None, self.edit, "hook_pos_embed", self.model.transformer.wpe(pos).expand(1, -1, -1))
        return tok + p  # (1, T, C)

    def _run_block(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Block `layer` on its input x (1, T, C) through the recorded path:
        (output (1, T, C), (pattern, scores) each (H, T, T) float32 on the CPU)."""
        name, sname = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_attn_scores"
        rec = Recorder([name, sname], compact=False)
        edited = frozenset(self.edit.edited_names(self.config)) if self.edit is not None else frozenset()
        rec.begin(self.config, cached=False, edited=edited)
        with torch.no_grad():
            out = self.model.transformer.h[layer](x, rec=rec, layer=layer, edit=self.edit)  # (1, T, C)
        return out, (rec[name][0].float().cpu(), rec[sname][0].float().cpu())  # (H, T, T) each

    def _keep(self, layer: int, maps: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._full[layer] = maps
        self._full.move_to_end(layer)
        while len(self._full) > KEEP_LAYERS:
            self._full.popitem(last=False)

    def _advance(self, upto: int) -> None:
        """Run blocks until layer `upto` has a digest (lock held)."""
        while len(self._digests) <= upto:
            i = len(self._digests)
            x = self._next
            self._resid.append(x)
            out, maps = self._run_block(i, x)
            p = maps[0]  # (H, T, T)
            s = head_scores_from_pattern(p)  # {score: (H,)}
            self._digests.append(LayerDigest(block_max(p, self.thumb_side), pattern_tops(p),
                                             s["entropy"], s["prev_token"], s["first_token"]))
            self._keep(i, maps)
            self._next = out

    def pattern(self, layer: int) -> torch.Tensor:
        """Every head's pattern at `layer`: (H, T, T) float32 on the CPU, read-only. Runs the blocks
        before it on first use, or that block alone again when its pattern was dropped."""
        return self._maps(layer)[0]

    def scores(self, layer: int) -> torch.Tensor:
        """Every head's pre-softmax scores at `layer` (H, T, T), -inf above the diagonal; as pattern."""
        return self._maps(layer)[1]

    def _maps(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in 0..{self.config.n_layer - 1}, got {layer}")
        with self._lock:
            if layer in self._full:
                self._full.move_to_end(layer)
                return self._full[layer]
            if layer >= len(self._digests):
                self._advance(layer)
                return self._full[layer]
            _, maps = self._run_block(layer, self._resid[layer])
            self._keep(layer, maps)
            return maps

    def digest(self, layer: int) -> LayerDigest:
        """Layer `layer`'s digest (runs the blocks up to it on first use)."""
        with self._lock:
            self._advance(layer)
            return self._digests[layer]

    def digests(self) -> list[LayerDigest]:
        """Every layer's digest, in order (runs the remaining blocks)."""
        with self._lock:
            self._advance(self.config.n_layer - 1)
            return list(self._digests)

    @property
    def layers_run(self) -> int:
        """How many blocks have run so far."""
        return len(self._digests)
