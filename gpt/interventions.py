"""Interventions: the sugar behind Edits.ablate_heads, ablate_mlp, ablate_neurons, patch and add.

Each function returns a one-part Edits whose key is plain data made of its arguments, so equal calls
give equal keys (caches share them) and `from_spec` can rebuild an ablation from its key alone:
    ("ablate_heads", layer, heads, how)           heads: sorted tuple of ints
    ("ablate_mlp", layer, how)
    ("ablate_neurons", layer, indices, how)
    ... with ref ids appended as nested tuples of ints when how="mean" and ref is given
    ("patch", name, digest, positions, heads)     digest: sha256 of the values (not rebuildable)
    ("add", name, digest, scale)

Where each acts: heads at blocks.L.attn.hook_z (B, T, nh, hs), so a head's output is removed before
c_proj and zeroing a head equals zeroing its columns of c_proj.weight; an MLP at blocks.L.hook_mlp_out
(its whole write, bias included); neurons at blocks.L.mlp.hook_post (after the GELU).

Mean ablation replaces the ablated values by a mean:
- ref=None: each row's own mean over the positions of the activation being edited, i.e. over the
  prompt when the whole prompt runs in one forward (so position t sees a mean that includes later
  positions). A forward that starts past position 0 (a KV-cache step) sees only its new positions,
  where that mean means something else; it is refused with a message: pass `ref` to generate.
- ref=ids ((T,) or (B, T) token ids): the unedited model's mean over every row and position of that
  batch, computed when a forward first needs it and kept per model until its weights change. It does
  not depend on the position, so generation with a KV cache equals full recompute under it.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Any, Iterable, Sequence

import torch

from gpt.edit import Desc, Edits
from gpt.record import Recorder

HOW = ("zero", "mean")
REBUILDABLE = ("ablate_heads", "ablate_mlp", "ablate_neurons")
_HEAD_SITES = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_result")
_PATTERN_SITES = ("attn.hook_attn_scores", "attn.hook_pattern")  # (B, nh, T queries, T keys)


# -- argument checks -----------------------------------------------------------------------------
def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, torch.Tensor)) or int(x) != x or int(x) < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {x!r}")
    return int(x)


def _indices(xs: Any, what: str) -> tuple[int, ...]:
    """Sorted distinct non-negative ints: the canonical form that goes into a key."""
    if isinstance(xs, (int, torch.Tensor)) and not isinstance(xs, bool) and getattr(xs, "ndim", 0) == 0:
        xs = [xs]
    out = tuple(sorted({_int(x, what) for x in xs}))
    if not out:
        raise ValueError(f"give at least one {what}")
    return out


def _how(how: str, ref: Any) -> None:
    if how not in HOW:
        raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")
    if how == "zero" and ref is not None:
        raise ValueError("ref is the reference batch of a mean ablation; with how='zero' leave it out")


def _ref_ids(ref: Any) -> tuple[torch.Tensor, tuple] | None:
    """ref ids as a (B, T) LongTensor and as nested tuples for the key, or None."""
    if ref is None:
        return None
    t = torch.as_tensor(ref)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() not in (1, 2) or t.numel() == 0:
        raise ValueError(f"ref must be token ids of shape (T,) or (B, T), got {tuple(t.shape)} {t.dtype}")
    t = t.long().reshape(-1, t.size(-1))  # (B, T)
    return t, tuple(tuple(row) for row in t.tolist())


def _check_range(act: torch.Tensor, dim: int, sel: Sequence[int], what: str, where: str) -> None:
    if sel and sel[-1] >= act.size(dim):
        raise ValueError(f"{what} {sel[-1]} is out of range: {where} has {act.size(dim)} {what}s "
                         f"(0..{act.size(dim) - 1})")


def _listed(xs: Sequence[int], most: int = 8) -> str:
    return ", ".join(map(str, xs[:most])) + (f", … ({len(xs)} in all)" if len(xs) > most else "")


def digest(t: torch.Tensor) -> str:
    """A short content hash of a tensor (dtype, shape and bytes), for keys."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# -- reference means -------------------------------------------------------------------------------
class _RefMean:
    """The unedited model's mean of `name` over the reference ids, every row and position, per model
    (held weakly) and recomputed when the model's parameters change (data pointer or version)."""

    def __init__(self, name: str, ids: torch.Tensor) -> None:
        self.name, self.ids = name, ids
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.value: torch.Tensor | None = None  # the mean for the forward under way

    def __call__(self, model: Any) -> None:
        if model is None:
            raise ValueError("a mean over a reference batch needs the model: run the edit through "
                             "GPT.forward (it hands itself to Edits.begin)")
        stamp = tuple((p.data_ptr(), p._version) for p in model.parameters())
        hit = self._cache.get(model)
        if hit is None or hit[0] != stamp:
            hit = self._cache[model] = (stamp, self._compute(model))
        self.value = hit[1]

    def _compute(self, model: Any) -> torch.Tensor:
        cfg, ids = model.config, self.ids
        bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
        if bad.numel():
            raise ValueError(f"ref token id {int(bad[0])} is outside the vocabulary 0..{cfg.vocab_size - 1}")
        if ids.size(1) > cfg.block_size:
            raise ValueError(f"ref has {ids.size(1)} tokens; the model's block_size is {cfg.block_size}")
        rec = Recorder([self.name], compact=False)
        was_training = model.training
        model.eval()  # no dropout in a reference statistic
        try:
            with torch.no_grad():
                model(ids.to(next(model.parameters()).device), rec=rec)  # no edit: the unedited model
        finally:
            model.train(was_training)
        return rec[self.name].float().mean(dim=(0, 1))  # the activation's shape without (B, T)


def _whole_prompt(pos: torch.Tensor, what: str) -> None:
    if pos.numel() and int(pos[0]) != 0:
        raise ValueError(f"{what} is a mean over the prompt's own positions, which needs the whole prompt "
                         f"in one forward; this forward starts at position {int(pos[0])} (a KV-cache step). "
                         "Pass ref=<prompt ids> for a fixed mean that generation can use")


# -- ablations -------------------------------------------------------------------------------------
def _ablation(name: str, dim: int | None, sel: tuple[int, ...] | None, how: str, ref: Any, unit: str,
              key: tuple, desc: Desc) -> Edits:
    """One Edits ablating `sel` along `dim` of `name` (all of it when sel is None)."""
    _how(how, ref)
    rid = _ref_ids(ref)
    if rid is not None:
        key = key + (rid[1],)
    where = name

    def index(act: torch.Tensor) -> torch.Tensor:
        _check_range(act, dim, sel, unit, where)
        return torch.tensor(sel, device=act.device)

    def put(act: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """act with the selection replaced by `mean` (broadcast over what it lacks)."""
        if sel is None:
            return mean.to(act.dtype).expand_as(act).clone()
        idx = index(act)
        shape = list(act.shape)
        shape[dim] = len(sel)
        return act.index_copy(dim, idx, mean.to(act.dtype).expand(shape))

    if how == "zero":
        def fn(act: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(act) if sel is None else act.index_fill(dim, index(act), 0.0)
        return Edits({name: fn}, key=key, desc=desc)
    if rid is None:
        def fn_own(act: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            _whole_prompt(pos, f"mean ablation of {name}")
            part = act if sel is None else act.index_select(dim, index(act))
            return put(act, part.float().mean(dim=1, keepdim=True))  # each row's mean over positions
        return Edits({name: fn_own}, key=key, desc=desc)
    ref_mean = _RefMean(name, rid[0])

    def fn_ref(act: torch.Tensor) -> torch.Tensor:
        mean = ref_mean.value.to(act.device)  # (*act.shape[2:])
        if sel is not None:
            mean = mean.index_select(dim - 2, index(act))
        return put(act, mean)
    return Edits({name: fn_ref}, key=key, desc=desc, prepare=ref_mean)


def _how_text(how: str, ref: Any) -> str:
    return how if ref is None or how == "zero" else "mean over ref"


def ablate_heads(layer: int, heads: Sequence[int], how: str = "zero", ref: Any = None) -> Edits:
    """Heads `heads` of `layer` ablated at attn.hook_z (B, T, nh, hs). Key ("ablate_heads", layer,
    heads, how[, ref])."""
    layer, hs = _int(layer, "layer"), _indices(heads, "head")
    desc = Desc("head", "heads", f"ablated ({how})", frozenset((layer, h) for h in hs),
                f"layer {layer} head{'s' * (len(hs) > 1)} {_listed(hs)} ablated ({_how_text(how, ref)})")
    return _ablation(f"blocks.{layer}.attn.hook_z", 2, hs, how, ref, "head",
                     ("ablate_heads", layer, hs, how), desc)


def ablate_mlp(layer: int, how: str = "zero", ref: Any = None) -> Edits:
    """The MLP of `layer` ablated: its whole output, blocks.L.hook_mlp_out (B, T, C), bias included.
    Key ("ablate_mlp", layer, how[, ref])."""
    layer = _int(layer, "layer")
    desc = Desc("MLP layer", "MLP layers", f"ablated ({how})", frozenset([layer]),
                f"layer {layer} MLP ablated ({_how_text(how, ref)})")
    return _ablation(f"blocks.{layer}.hook_mlp_out", None, None, how, ref, "", ("ablate_mlp", layer, how), desc)


def ablate_neurons(layer: int, indices: Sequence[int], how: str = "zero", ref: Any = None) -> Edits:
    """MLP neurons `indices` of `layer` ablated at mlp.hook_post (B, T, 4C), after the GELU; zeroing
    one equals zeroing its column of mlp.c_proj.weight. Key ("ablate_neurons", layer, indices, how[, ref])."""
    layer, idx = _int(layer, "layer"), _indices(indices, "neuron")
    desc = Desc("neuron", "neurons", f"ablated ({how})", frozenset((layer, i) for i in idx),
                f"layer {layer} neuron{'s' * (len(idx) > 1)} {_listed(idx)} ablated ({_how_text(how, ref)})")
    return _ablation(f"blocks.{layer}.mlp.hook_post", 2, idx, how, ref, "neuron",
                     ("ablate_neurons", layer, idx, how), desc)


# -- patch and add -----------------------------------------------------------------------------------
def _layout(name: str) -> tuple[int, int | None, int | None]:
    """(position axis, head axis or None, key axis or None) of a hook name's activation."""
    if name.endswith(_PATTERN_SITES):
        return 2, 1, 3
    return 1, (2 if name.endswith(_HEAD_SITES) else None), None


def patch(name: str, values: torch.Tensor, positions: Sequence[int] | None = None,
          heads: Sequence[int] | None = None) -> Edits:
    """`name` replaced by `values`: a tensor shaped as a Recorder stores `name` (batch 1 or the batch
    of the run, positions 0..n-1 along the position axis, any key length >= the run's for attention
    scores and pattern). At `positions` (model positions; default: all that the forward covers) and
    for `heads` (per-head names only; default: all)."""
    if not isinstance(name, str) or any(c in name for c in "*?["):
        raise ValueError(f"patch needs one concrete hook name such as 'blocks.0.hook_resid_pre', got {name!r}")
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"patch values must be a tensor, got {type(values).__name__}")
    p_ax, h_ax, k_ax = _layout(name)
    pos = None if positions is None else _indices(positions, "position")
    hs = None if heads is None else _indices(heads, "head")
    if hs is not None and h_ax is None:
        raise ValueError(f"heads= applies to per-head names (attn.hook_q, k, v, z, result, attn_scores, "
                         f"pattern); {name!r} has no head axis")
    values = values.detach().clone()
    if values.dim() <= p_ax:
        raise ValueError(f"patch values for {name!r} have shape {tuple(values.shape)}: give the activation as "
                         "a Recorder stores it, batch first")
    n_pos = values.size(p_ax)
    if pos is not None and pos[-1] >= n_pos:
        raise ValueError(f"position {pos[-1]} is past the patch values, which cover positions 0..{n_pos - 1}")
    key = ("patch", name, digest(values), pos, hs)
    at = "" if pos is None else f" at position{'s' * (len(pos) > 1)} {_listed(pos)}"
    desc = Desc("activation", "activations", "patched", frozenset([name]),
                f"{name} patched{at}" + ("" if hs is None else f", head{'s' * (len(hs) > 1)} {_listed(hs)}"))
    moved: dict[tuple, torch.Tensor] = {}

    def fn(act: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        v = moved.get((act.device, act.dtype))
        if v is None:
            v = moved.setdefault((act.device, act.dtype), values.to(act.device, act.dtype))
        ok = v.dim() == act.dim() and v.size(0) in (1, act.size(0)) and all(
            v.size(d) == act.size(d) or d == p_ax or (d == k_ax and v.size(d) >= act.size(d))
            for d in range(1, act.dim()))
        if not ok:
            raise ValueError(f"patch values for {name!r} have shape {tuple(v.shape)}; the activation has shape "
                             f"{tuple(act.shape)} (give batch 1 or {act.size(0)}, positions along axis {p_ax})")
        if pos is None:
            loc = torch.arange(where.numel(), device=act.device)
        else:
            loc = torch.isin(where, torch.tensor(pos, device=where.device)).nonzero().squeeze(1).to(act.device)
            if loc.numel() == 0:
                return act
        absolute = where.to(act.device)[loc]
        if int(absolute.max()) >= n_pos:
            raise ValueError(f"the patch values for {name!r} cover positions 0..{n_pos - 1}; this forward "
                             f"reaches position {int(absolute.max())}")
        src = v.index_select(p_ax, absolute)
        if k_ax is not None:
            src = src.narrow(k_ax, 0, act.size(k_ax))  # causal: keys past the run's end are never read
        src = src.expand(act.size(0), *src.shape[1:])
        if hs is not None:
            _check_range(act, h_ax, hs, "head", name)
            h = torch.tensor(hs, device=act.device)
            src = act.index_select(p_ax, loc).index_copy(h_ax, h, src.index_select(h_ax, h))
        return act.index_copy(p_ax, loc, src)
    return Edits({name: fn}, key=key, desc=desc)


def add(name: str, vector: torch.Tensor, scale: float = 1.0) -> Edits:
    """`scale * vector` added to `name` at every position; vector broadcasts to the activation
    (usually its last dimension, e.g. (C,) for a residual). Key ("add", name, digest, scale)."""
    if not isinstance(name, str) or any(c in name for c in "*?["):
        raise ValueError(f"add needs one concrete hook name such as 'blocks.2.hook_resid_post', got {name!r}")
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"the vector to add must be a tensor, got {type(vector).__name__}")
    vector, scale = vector.detach().clone(), float(scale)
    d = digest(vector)
    desc = Desc("steering vector", "steering vectors", "added", frozenset([(name, d, scale)]),
                f"{scale:g} × vector added to {name}")

    def fn(act: torch.Tensor) -> torch.Tensor:
        v = vector.to(act.device, act.dtype)
        try:
            ok = v.dim() <= act.dim() and torch.broadcast_shapes(act.shape, v.shape) == act.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"a vector of shape {tuple(v.shape)} does not broadcast to {name} of shape "
                             f"{tuple(act.shape)}: give a vector of its last dimension, {act.size(-1)}")
        return act + scale * v
    return Edits({name: fn}, key=("add", name, d, scale), desc=desc)


def from_spec(spec: Iterable[tuple]) -> Edits:
    """The Edits made of the sugar calls that `spec` (a sequence of keys) names, in order."""
    out = Edits()
    for part in spec:
        if not isinstance(part, tuple) or not part or part[0] not in REBUILDABLE:
            kind = part[0] if isinstance(part, tuple) and part else part
            hint = (" (a patch or add names its tensor by a digest only: keep that Edits itself)"
                    if kind in ("patch", "add") else "")
            raise ValueError(f"cannot rebuild an edit part from {kind!r}; a spec holds keys of "
                             f"{', '.join(REBUILDABLE)}{hint}")
        out = getattr(out, part[0])(*part[1:])
    return out
