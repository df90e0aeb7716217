"""Attention of every layer at long context, one layer at a time: what the Attention page needs at
T=1024 without keeping every (H, T, T) pattern, and without waiting for layers it does not show.

`AttentionTrace(model, ids, edit=None)` runs the model's blocks lazily, in order. To open a layer it
runs the blocks before it the cheap way (the model's own forward: fused attention, nothing recorded,
no pattern materialised) and keeps only each layer's input (resid_pre, (1, T, C), on the model's
device); then it runs the open layer's block through its recorded (hooked) path only as far as the
pattern, so the pattern and scores are exactly what `model(idx, rec=Recorder(...))` records, and
nothing after them (v, the heads' output, the MLP) is computed for it. From each layer it keeps:
  - its input, so any layer's full pattern can be rebuilt by running half of that one block again
    (GPT-2 small's 12 x 12 patterns at T=1024 are 600 MB in float32, too much to keep);
  - a digest, computed where the pattern is (on the GPU for a GPU model, in the model's dtype) so
    only small results are copied to the host: each head's pattern block-max pooled to a thumbnail,
    the largest weight outside row 0 (the colour scale's top), and the prompt's head scores
    (entropy, previous, first token).

`pattern(layer)` digests that layer alone: its figures can be drawn before any other layer's
digest exists. `digests()` is the second pass, for the all-heads grid and the head summary: every
layer's digest, layer by layer (a layer not run yet gives its output and its digest in one recorded
pass). Thread-safe (one lock, taken per layer, so a second pass does not hold up another session's
open layer): a trace is cached and shared by sessions. No logits are computed: the unembedding (a
quarter of GPT-2 small's forward at T=1024) is skipped.
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
KEEP_LAYERS = 2  # layers whose full patterns and scores are kept on the host (96 MB each for GPT-2 small at T=1024)


def block_max(pattern: torch.Tensor, side: int) -> torch.Tensor:
    """Block-max pooling of (..., T, T) to (..., S, S) with S = min(side, T), float32, on the input's
    device: cell (i, j) is the largest weight in its block of queries x keys (adaptive blocks: rows
    floor(i*T/S) .. ceil((i+1)*T/S) - 1, as gpt.heads.pool_patterns). Max, not mean, so a
    one-token-wide structure (a previous-token diagonal, an induction stripe) stays visible when
    pooled 16x. Pooled in the input's dtype off the CPU (a max picks one of the values, so it is
    exact in any dtype; converting the S x S result is cheaper than converting T x T)."""
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    *lead, T, T2 = pattern.shape
    if T != T2:
        raise ValueError(f"expected square patterns (..., T, T), got {tuple(pattern.shape)}")
    x = pattern.reshape(-1, 1, T, T)  # (N, 1, T, T): one channel per map
    if x.device.type == "cpu" or not x.is_floating_point():
        x = x.float()  # the CPU's half-precision pooling kernels are slow or missing
    if side >= T:
        return x.float().reshape(*lead, T, T)
    return F.adaptive_max_pool2d(x, side).float().reshape(*lead, side, side)  # (..., S, S)


def pattern_tops(pattern: torch.Tensor) -> torch.Tensor:
    """(..., T, T) -> (...) float32 on the input's device: each map's largest weight outside row 0
    (row 0 is always [1, 0, ...]), the end of its colour scale; 1.0 for one token."""
    if pattern.size(-2) < 2:
        return torch.ones(pattern.shape[:-2], device=pattern.device)
    return pattern[..., 1:, :].amax(dim=(-1, -2)).float().clamp_min(1e-6)


@dataclass(frozen=True)
class LayerDigest:
    """One layer's heads, small enough to keep for every layer (on the CPU, float32): thumbs (H, S, S)
    block-max pooled pattern; tops (H,) largest weight outside row 0; entropy (bits), prev_token,
    first_token (H,)."""

    thumbs: torch.Tensor
    tops: torch.Tensor
    entropy: torch.Tensor
    prev_token: torch.Tensor
    first_token: torch.Tensor


def digest_of(pattern: torch.Tensor, thumb_side: int = THUMB_SIDE) -> LayerDigest:
    """The LayerDigest of one layer's patterns (H, T, T), computed on their device and dtype; only
    the small results are copied to the CPU."""
    s = head_scores_from_pattern(pattern)  # {score: (H,)}
    return LayerDigest(block_max(pattern, thumb_side).cpu(), pattern_tops(pattern).cpu(),
                       s["entropy"].float().cpu(), s["prev_token"].float().cpu(), s["first_token"].float().cpu())


class _PatternDone(Exception):
    """Raised by _PatternRecorder right after a block's pattern is recorded: the rest is not needed."""


class _PatternRecorder(Recorder):
    """Records one block's scores and pattern where the model computes them (its device, `dtype`);
    with stop=True it ends the block's forward right after the pattern (the caller catches
    _PatternDone), so nothing after it is computed."""

    def __init__(self, layer: int, device: torch.device, dtype: torch.dtype, stop: bool) -> None:
        self.pattern_name = f"blocks.{layer}.attn.hook_pattern"
        self.scores_name = f"blocks.{layer}.attn.hook_attn_scores"
        super().__init__([self.scores_name, self.pattern_name], dtype=dtype, device=device, compact=False)
        self.stop = stop

    def save(self, name: str, t: torch.Tensor) -> None:
        super().save(name, t)
        if self.stop and name == self.pattern_name:
            raise _PatternDone


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
        self._digests: dict[int, LayerDigest] = {}
        # layer -> (pattern, scores) on the host, float32: an LRU of KEEP_LAYERS
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
        self._edited = frozenset(self.edit.edited_names(cfg)) if self.edit is not None else frozenset()
        # the inputs of layers 0 .. len-1 (resid_pre, each (1, T, C) on the model's device)
        self._resid: list[torch.Tensor] = [model.transformer.drop(emb)]

    def _hooked_embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        from gpt.edit import hook

        tok = hook(None, self.edit, "hook_embed", self.model.transformer.wte(idx))  # (1, T, C)
        p = hook(None, self.edit, "hook_pos_embed", self.model.transformer.wpe(pos).expand(1, -1, -1))
        return tok + p  # (1, T, C)

    def _block(self, layer: int, x: torch.Tensor, maps: bool, out: bool = True
               ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """Block `layer` on its input x (1, T, C) -> (output (1, T, C) or None, (pattern, scores) or None).
        maps=False: the model's own forward (fused attention unless the edit reaches inside it),
        nothing recorded. maps=True: the recorded path, pattern and scores each (H, T, T) on the
        model's device in its dtype; with out=False the block stops right after the pattern."""
        blk = self.model.transformer.h[layer]
        with torch.no_grad():
            if not maps:
                return blk(x, layer=layer, edit=self.edit), None
            rec = _PatternRecorder(layer, x.device, x.dtype, stop=not out)
            rec.begin(self.config, cached=False, edited=self._edited)
            y = None
            try:
                y = blk(x, rec=rec, layer=layer, edit=self.edit)  # (1, T, C)
            except _PatternDone:
                pass  # the pattern is all that was asked for
            return y, (rec[rec.pattern_name][0], rec[rec.scores_name][0])  # (H, T, T) each

    def _reach(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s input (1, T, C), running the blocks before it that have not run yet the
        cheap way (lock held)."""
        while len(self._resid) <= layer:
            i = len(self._resid) - 1
            self._resid.append(self._block(i, self._resid[i], maps=False)[0])
        return self._resid[layer]

    def _device_maps(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s (pattern, scores) on the model's device, digesting it on first use (lock held)."""
        _, maps = self._block(layer, self._reach(layer), maps=True, out=False)
        assert maps is not None
        if layer not in self._digests:
            self._digests[layer] = digest_of(maps[0], self.thumb_side)
        return maps

    def _check(self, layer: int) -> None:
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in 0..{self.config.n_layer - 1}, got {layer}")

    def _keep(self, layer: int, maps: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._full[layer] = maps
        self._full.move_to_end(layer)
        while len(self._full) > KEEP_LAYERS:
            self._full.popitem(last=False)

    def _maps(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(layer)
        with self._lock:
            if layer in self._full:
                self._full.move_to_end(layer)
                return self._full[layer]
            p, s = self._device_maps(layer)
            maps = (p.float().cpu(), s.float().cpu())  # (H, T, T) each; no copy for a float32 CPU model
            self._keep(layer, maps)
            return maps

    def pattern(self, layer: int) -> torch.Tensor:
        """Every head's pattern at `layer`: (H, T, T) float32 on the CPU, read-only. Runs the blocks
        before it on first use (fused, no pattern kept), or half of that block again when its
        pattern was dropped."""
        return self._maps(layer)[0]

    def scores(self, layer: int) -> torch.Tensor:
        """Every head's pre-softmax scores at `layer` (H, T, T), -inf above the diagonal; as pattern."""
        return self._maps(layer)[1]

    def digest(self, layer: int) -> LayerDigest:
        """Layer `layer`'s digest (computes that layer's pattern on first use; no other layer's)."""
        self._check(layer)
        with self._lock:
            if layer not in self._digests:
                self._device_maps(layer)
            return self._digests[layer]

    def _digest_step(self, i: int) -> None:
        """The second pass at layer i, whose input is known: its digest, and layer i+1's input
        (lock held). A layer not run yet gives both in one recorded pass of its block."""
        need_out = i < self.config.n_layer - 1 and len(self._resid) == i + 1
        if i in self._digests:
            if need_out:
                self._reach(i + 1)
            return
        out, maps = self._block(i, self._resid[i], maps=True, out=need_out)
        assert maps is not None
        self._digests[i] = digest_of(maps[0], self.thumb_side)
        if need_out:
            assert out is not None
            self._resid.append(out)

    def digests(self) -> list[LayerDigest]:
        """Every layer's digest, in order (the second pass: computes those still missing)."""
        for i in range(self.config.n_layer):
            with self._lock:  # per layer: another caller's open layer need not wait for the whole pass
                self._digest_step(i)
        with self._lock:
            return [self._digests[i] for i in range(self.config.n_layer)]

    @property
    def layers_run(self) -> int:
        """How many blocks have run through to their output so far (layer inputs known - 1)."""
        return len(self._resid) - 1

    @property
    def digested(self) -> tuple[int, ...]:
        """The layers whose digest exists so far, in order."""
        return tuple(sorted(self._digests))
