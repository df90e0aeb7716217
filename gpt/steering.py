"""Steering vectors: a direction in the residual stream, where it came from, and the edit that adds
it with strength alpha (the ActAdd / contrastive-activation recipe).

Sources, each a function returning a SteeringVector (all run the unedited model, in eval mode):
- contrast(model, pos, neg, layer, policy): the difference of mean blocks.L.hook_resid_pre between
  two prompt sets (lists of token-id lists). `policy` says which positions stand for a prompt:
    "last"    each prompt's last position (any lengths);
    "mean"    each prompt's mean over its positions, then the mean over prompts (any lengths);
    "aligned" position by position, as ActAdd pairs its prompts: every prompt of both sets must
              have the same number of tokens; the vector is the mean over positions of the
              per-position difference of the two sets' means.
- token_direction(model, token): the residual direction along which the logit lens's logit of
  `token` grows fastest. The lens reads a residual x as W_U · (ln_f.weight ⊙ n(x) + ln_f.bias),
  n(x) = (x - mean) / std, so a token's logit moves with n(x) · (ln_f.weight ⊙ W_U[token]) and
  LayerNorm removes any part along (1, ..., 1): the vector is ln_f.weight ⊙ W_U[token] (W_U's row
  for the token, i.e. lm_head.weight[token]), centred, scaled to unit L2 norm. So alpha is the
  added vector's norm in residual units. Its natural site is the last block's hook_resid_post.
- head_output(model, ids, layer, head, pos): what one head wrote into the residual at one
  position of a prompt, blocks.L.attn.hook_result[0, pos, head] (C,), bias excluded.
- from_vector(model, vector, layer, site, source, kind): any (C,) vector with a description; the
  extension point for further sources (e.g. an SAE feature's decoder direction).

`steering_edit(model, sv, alpha, layer, site)` is `Edits().add(<site of layer>, sv.vector, alpha)`,
and exactly `Edits()` (the no-edit fast path, bit for bit) when alpha == 0: x + 0·v is not always
x bit for bit (-0.0 + 0.0 is +0.0), and an edit also changes which kernels run.

`alpha_sweep` gives, for a handful of alphas, a token's probability and the greedy continuation.
Saving and loading (safetensors + JSON, no pickle) is gpt/steering_store.py's. A vector whose width
differs from the model's is refused with a message; every bad input raises ValueError saying what
to do.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from gpt.edit import Edits
from gpt.record import Recorder

SITES = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "resid_mid": "hook_resid_mid",
         "mlp_out": "hook_mlp_out", "resid_post": "hook_resid_post"}
POLICIES = ("last", "mean", "aligned")
KINDS = ("contrast", "token", "head", "custom")


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering direction and where it came from.

    vector: (C,) float32 on the CPU; layer, site: where it was taken (its default place to add it:
    blocks.<layer>.<SITES[site]>); source: a sentence saying how it was made; width: C, the model
    width it belongs to; model: fingerprint(model) of the model it was made on; kind: one of KINDS.
    """

    vector: torch.Tensor
    layer: int
    site: str
    source: str
    width: int
    model: str
    kind: str = "custom"

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def check(self, model: torch.nn.Module) -> None:
        """ValueError when this vector cannot steer `model` (another width)."""
        width = model.config.n_embd
        if self.width != width:
            raise ValueError(f"this vector was made for a model of width {self.width}; this model's width is "
                             f"{width}: make a new vector on this model")


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash that tells models apart cheaply: the config and a few parameter slices (the final
    LayerNorm, position 0's embedding, the first token embeddings). Equal for equal weights."""
    cfg = model.config
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    t = model.transformer
    for p in (t.ln_f.weight, t.wpe.weight[0], t.wte.weight[:8]):
        h.update(p.detach().float().cpu().contiguous().reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


# -- where a vector goes ----------------------------------------------------------------------------
def check_layer(model: torch.nn.Module, layer: int) -> int:
    """`layer` as an int, or ValueError when the model has no such layer."""
    n = model.config.n_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{n - 1}")
    return layer


def site_name(model: torch.nn.Module, layer: int, site: str) -> str:
    """The hook name of `site` (a key of SITES) in `layer`, e.g. "blocks.3.hook_resid_post"."""
    if site not in SITES:
        raise ValueError(f"site {site!r} is not one of {', '.join(SITES)}")
    return f"blocks.{check_layer(model, layer)}.{SITES[site]}"


def steering_edit(model: torch.nn.Module, sv: SteeringVector, alpha: float, layer: int | None = None,
                  site: str | None = None) -> Edits:
    """alpha × sv.vector added at every position of `site` in `layer` (default: the vector's own),
    as Edits.add; exactly Edits() (no edit) when alpha == 0. ValueError for another width, a layer
    out of range, an unknown site or an alpha that is not a finite number."""
    sv.check(model)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
    name = site_name(model, sv.layer if layer is None else layer, sv.site if site is None else site)
    return Edits() if alpha == 0 else Edits().add(name, sv.vector, alpha)


# -- sources ----------------------------------------------------------------------------------------
def from_vector(model: torch.nn.Module, vector: torch.Tensor, layer: int, site: str, source: str,
                kind: str = "custom") -> SteeringVector:
    """A SteeringVector for `model` from any (C,) tensor and a sentence saying what it is."""
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        raise ValueError(f"a steering vector is one (C,) tensor, got "
                         f"{tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__}")
    width = model.config.n_embd
    if vector.numel() != width:
        raise ValueError(f"this vector has {vector.numel()} entries; this model's width is {width}")
    v = vector.detach().to("cpu", torch.float32).clone()
    if not torch.isfinite(v).all():
        raise ValueError("the vector has NaN or infinite entries")
    site_name(model, layer, site)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return SteeringVector(v, layer, site, source, width, fingerprint(model), kind)


def _checked_prompts(model: torch.nn.Module, prompts: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    out = [[int(t) for t in p] for p in prompts if len(p)]
    if not out:
        raise ValueError(f"the {what} prompt set is empty: type at least one prompt, one per line")
    cfg = model.config
    for p in out:
        if max(p) >= cfg.vocab_size or min(p) < 0:
            raise ValueError(f"a {what} prompt has a token id outside the vocabulary 0..{cfg.vocab_size - 1}")
        if len(p) > cfg.block_size:
            raise ValueError(f"a {what} prompt has {len(p)} tokens; the model reads at most {cfg.block_size}")
    return out


@torch.no_grad()
def _resid(model: torch.nn.Module, prompts: list[list[int]], name: str) -> list[torch.Tensor]:
    """The unedited `name` (T_i, C) of every prompt, in order; prompts of one length share a forward."""
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for rows in by_len.values():
            idx = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)  # (B, T)
            rec = Recorder([name], compact=False)
            model(idx, rec=rec)
            acts = rec[name].float().cpu()  # (B, T, C)
            for j, i in enumerate(rows):
                out[i] = acts[j]
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def contrast(model: torch.nn.Module, pos: Sequence[Sequence[int]], neg: Sequence[Sequence[int]],
             layer: int, policy: str = "last") -> SteeringVector:
    """mean(pos) − mean(neg) of blocks.<layer>.hook_resid_pre under `policy` (module docstring).
    Empty prompts are left out. ValueError for an empty set, a layer out of range, an unknown policy,
    or prompts of different lengths under "aligned"."""
    if policy not in POLICIES:
        raise ValueError(f"position policy {policy!r} is not one of {', '.join(POLICIES)}")
    name = site_name(model, layer, "resid_pre")
    a, b = _checked_prompts(model, pos, "first"), _checked_prompts(model, neg, "second")
    if policy == "aligned":
        lengths = sorted({len(p) for p in a + b})
        if len(lengths) > 1:
            raise ValueError(f"the prompts have different numbers of tokens ({', '.join(map(str, lengths))}); "
                             "'aligned' compares position by position and needs equal lengths: "
                             "choose the 'last' or 'mean' position policy, or make the prompts equally long")
    means = []
    for prompts in (a, b):
        acts = _resid(model, prompts, name)  # each (T_i, C)
        if policy == "last":
            per = torch.stack([x[-1] for x in acts])  # (N, C)
        elif policy == "mean":
            per = torch.stack([x.mean(dim=0) for x in acts])  # (N, C)
        else:
            per = torch.stack(acts).mean(dim=0)  # (T, C): each position's mean over the set
        means.append(per.mean(dim=0) if policy != "aligned" else per)
    diff = means[0] - means[1]  # (C,), or (T, C) under "aligned"
    if policy == "aligned":
        diff = diff.mean(dim=0)  # (C,)
    where = {"last": "last position", "mean": "mean over positions", "aligned": "aligned positions"}[policy]
    src = f"contrast of {len(a)} vs {len(b)} prompts at blocks.{layer}.hook_resid_pre ({where})"
    return from_vector(model, diff, layer, "resid_pre", src, "contrast")


def token_direction(model: torch.nn.Module, token: int, label: str | None = None) -> SteeringVector:
    """The unit residual direction that raises `token`'s logit-lens logit fastest (module
    docstring), placed at the last block's hook_resid_post. `label` names the token in `source`."""
    V = model.config.vocab_size
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < V:
        raise ValueError(f"token id {token!r} is outside the vocabulary 0..{V - 1}")
    with torch.no_grad():
        w = model.transformer.ln_f.weight.float().cpu()  # (C,)
        u = w * model.lm_head.weight[token].float().cpu()  # (C,): the lens reads n(x) through ln_f's scale
        u = u - u.mean()  # LayerNorm removes the mean: only the centred part moves n(x)
        n = float(u.norm())
        if n == 0:
            raise ValueError(f"token {token} has no direction: its unembedding row times ln_f's scale is constant")
    name = label if label is not None else f"token {token}"
    last = model.config.n_layer - 1
    return from_vector(model, u / n, last, "resid_post", f"direction of {name} (unembedding through ln_f's "
                       f"scale, unit norm) for blocks.{last}.hook_resid_post", "token")


@torch.no_grad()
def head_output(model: torch.nn.Module, ids: Sequence[int], layer: int, head: int, pos: int,
                label: str | None = None) -> SteeringVector:
    """What head `head` of `layer` wrote into the residual at position `pos` of the prompt `ids`:
    blocks.<layer>.attn.hook_result[0, pos, head] (C,), placed at that layer's hook_attn_out."""
    check_layer(model, layer)
    nh = model.config.n_head
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < nh:
        raise ValueError(f"head {head!r} is out of range: this model has heads 0..{nh - 1}")
    prompt = _checked_prompts(model, [ids], "current")[0]
    if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < len(prompt):
        raise ValueError(f"position {pos!r} is out of range: the prompt has positions 0..{len(prompt) - 1}")
    name = f"blocks.{layer}.attn.hook_result"
    result = _resid(model, [prompt], name)[0]  # (T, nh, C)
    v = result[pos, head]  # (C,)
    at = label if label is not None else f"position {pos}"
    return from_vector(model, v, layer, "attn_out",
                       f"output of L{layer}H{head} at {at} of the prompt (blocks.{layer}.hook_attn_out)", "head")


# -- the alpha sweep --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRow:
    """One alpha of a sweep: the model's probability of the watched token after the prompt (softmax
    of the logits, temperature 1) and the greedy continuation's first tokens."""

    alpha: float
    prob: float
    tokens: tuple[int, ...]


@torch.no_grad()
def alpha_sweep(model: torch.nn.Module, ids: Sequence[int], sv: SteeringVector, alphas: Sequence[float],
                token: int, layer: int | None = None, site: str | None = None, n_tokens: int = 40,
                base: Edits | None = None) -> list[SweepRow]:
    """For each alpha: p(token) at the end of `ids` and `n_tokens` greedy tokens (temperature 0, KV
    cache), under `base` (an active intervention, or None) then the steering edit. Greedy decoding
    reads the last block_size - n_tokens tokens of the prompt (at least one), as
    gpt.generate.greedy_continuation, so every step is one cached position."""
    from gpt.generate import generate

    V = model.config.vocab_size
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < V:
        raise ValueError(f"token id {token!r} is outside the vocabulary 0..{V - 1}")
    prompt = _checked_prompts(model, [ids], "current")[0]
    device = next(model.parameters()).device
    keep = max(1, model.config.block_size - n_tokens)
    rows = []
    was_training = model.training
    model.eval()
    try:
        for a in alphas:
            edit = (base or Edits()) + steering_edit(model, sv, a, layer, site)
            idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
            logits, _ = model(idx, edit=edit)  # (1, T or 1, V)
            p = float(torch.softmax(logits[0, -1].double(), dim=-1)[token])
            out = generate(model, prompt[-keep:], n_tokens, temperature=0.0, edit=edit)
            rows.append(SweepRow(float(a), p, tuple(out[len(prompt[-keep:]):])))
    finally:
        model.train(was_training)
    return rows
