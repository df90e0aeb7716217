"""Activation patching: which activations carry the difference between a clean and a corrupted prompt.

    res = sweep(model, clean_ids, corrupt_ids, "resid_pre", logit_diff(a, b))
    res.values          # [n_layer, T]: the metric with one activation patched
    res.normalized()    # 0 = the corrupted run's metric, 1 = the clean run's

Sites and the shape of `values`:
    resid_pre, attn_out, mlp_out   blocks.L.hook_<site> at one position     [n_layer, T]
    head                           blocks.L.attn.hook_z, one head, all positions   [n_layer, n_head]
    head_pos                       blocks.L.attn.hook_z, one head, one position    [n_layer, n_head, T]
"denoise" runs the corrupted prompt with one clean activation patched in (TransformerLens's
get_act_patch_*); "noise" runs the clean prompt with one corrupted activation. With `source_model`
(same shape, e.g. another snapshot of the run) the patched-in activations come from that model.

Fast and still exact (gpt/patch_engine.py): a cell is computed only from its layer and its first
changed position on, many cells per batched pass; a cell that patches in the value already there
(before the prompts differ) is the unpatched run and needs no forward (`computed` counts the rest).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.nn import functional as F

from gpt import patch_engine
from gpt.edit import Edits
from gpt.record import Recorder

SITES = {"resid_pre": ("hook_resid_pre", ("layer", "position")),  # site -> (hook, the axes of values)
         "attn_out": ("hook_attn_out", ("layer", "position")), "mlp_out": ("hook_mlp_out", ("layer", "position")),
         "head": ("attn.hook_z", ("layer", "head")), "head_pos": ("attn.hook_z", ("layer", "head", "position"))}
DIRECTIONS = ("denoise", "noise")


# -- metrics -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A patching metric: fn(logits at `positions` (B, P, V), clean ids (1, T)) -> (B,). `positions`
    None means every position. Called on full logits (B, T, V) it selects them itself."""
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    positions: tuple[int, ...] | None = None
    tokens: tuple[int, ...] = ()

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(logits if self.positions is None else logits[:, list(self.positions)], ids)


def logit_diff(token_a: int, token_b: int, pos: int = -1) -> Metric:
    """logit of token_a minus logit of token_b at `pos` (default: the last position)."""
    return Metric(f"logit_diff({token_a}, {token_b})",
                  lambda lg, ids: (lg[:, 0, token_a] - lg[:, 0, token_b]).float(), (pos,), (token_a, token_b))


def prob(token: int, pos: int = -1) -> Metric:
    """The probability of `token` at `pos`."""
    return Metric(f"prob({token})", lambda lg, ids: F.softmax(lg[:, 0].float(), dim=-1)[:, token], (pos,), (token,))


def loss() -> Metric:
    """Mean next-token cross-entropy of the clean prompt's tokens (lower is better)."""
    def fn(lg: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        if ids is None or ids.size(1) < 2:
            raise ValueError("loss() needs a prompt of at least 2 tokens: it scores each next token")
        tgt = ids[:, 1:].expand(lg.size(0), -1)  # (B, T-1)
        return F.cross_entropy(lg[:, :-1].float().transpose(1, 2), tgt, reduction="none").mean(1)
    return Metric("loss", fn)


METRICS = {"logit_diff": "logit difference: clean answer − corrupted answer",  # the named metrics
           "prob": "probability of the clean answer", "loss": "loss of the clean prompt's next tokens"}


def metric_named(name: str, clean_answer: int, corrupt_answer: int) -> Metric:
    """The metric METRICS calls `name`, on the two answer tokens (prob reads only the clean one,
    loss neither). An unknown name raises ValueError."""
    if name == "logit_diff":
        return logit_diff(clean_answer, corrupt_answer)
    if name == "prob":
        return prob(clean_answer)
    if name == "loss":
        return loss()
    raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")


# -- the result ----------------------------------------------------------------------------------------
@dataclass
class PatchResult:
    """values: the metric per cell (dims name its axes); clean, corrupt: the metric of `model` on each
    prompt; clean_logits, corrupt_logits (T, V); computed: cells that needed a forward (the others
    patch in what is already there and equal the unpatched run's metric)."""
    values: torch.Tensor
    clean: float
    corrupt: float
    site: str
    direction: str
    metric: str
    dims: tuple[str, ...]
    clean_logits: torch.Tensor = field(repr=False)
    corrupt_logits: torch.Tensor = field(repr=False)
    computed: int = 0

    def normalized(self) -> torch.Tensor:
        """(values - corrupt) / (clean - corrupt): 0 = the corrupted run, 1 = the clean run."""
        gap = self.clean - self.corrupt
        if abs(gap) <= 1e-9 * max(1.0, abs(self.clean)):
            raise ValueError(f"the clean and corrupted runs give the same metric ({self.clean:.6g}), so there "
                             "is nothing to normalize against: pick answer tokens or prompts that differ")
        return (self.values - self.corrupt) / gap


# -- checks ------------------------------------------------------------------------------------------
def _ids(x: Any, what: str, cfg: Any, device: torch.device) -> torch.Tensor:
    """A prompt as (1, T) ids on `device`, or a ValueError that says what is wrong with it."""
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 2 or (t.dim() == 2 and t.size(0) != 1):
        raise ValueError(f"the {what} prompt must be token ids of shape (T,) or (1, T), "
                         f"got {tuple(t.shape)} {t.dtype}")
    t = t.long().reshape(1, -1)
    if t.size(1) == 0:
        raise ValueError(f"the {what} prompt is empty: give at least one token")
    bad = ((t < 0) | (t >= cfg.vocab_size)).nonzero()
    if bad.numel():
        p = int(bad[0, 1])
        raise ValueError(f"the {what} prompt has token id {int(t[0, p])} at position {p}, outside the model's "
                         f"vocabulary 0..{cfg.vocab_size - 1}")
    if t.size(1) > cfg.block_size:
        raise ValueError(f"the {what} prompt has {t.size(1)} tokens; the model's block_size is {cfg.block_size}")
    return t.to(device)


def check_inputs(model: Any, clean_ids: Any, corrupt_ids: Any, site: str, direction: str = "denoise",
                 source_model: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted ids as (1, T) tensors, or a ValueError naming what to change."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (the reverse), "
                         f"got {direction!r}")
    cfg, dev = model.config, next(model.parameters()).device
    clean, corrupt = _ids(clean_ids, "clean", cfg, dev), _ids(corrupt_ids, "corrupted", cfg, dev)
    if clean.size(1) != corrupt.size(1):
        raise ValueError(f"the clean prompt has {clean.size(1)} tokens and the corrupted prompt {corrupt.size(1)}: "
                         "patching compares them position by position, so they need the same number of tokens")
    if source_model is not None:
        scfg = source_model.config
        diff = [f"{k} {getattr(scfg, k)} (source) vs {getattr(cfg, k)}"
                for k in ("n_layer", "n_head", "n_embd", "vocab_size") if getattr(scfg, k) != getattr(cfg, k)]
        if diff:
            raise ValueError(f"source_model has a different shape: {'; '.join(diff)}. Patch between checkpoints "
                             "of the same shape, e.g. snapshots of one run")
        if clean.size(1) > scfg.block_size:
            raise ValueError(f"the prompts have {clean.size(1)} tokens; source_model's block_size is "
                             f"{scfg.block_size}")
    return clean, corrupt


def _check_metric(metric: Any, cfg: Any, T: int) -> None:
    if isinstance(metric, Metric):
        for tok in metric.tokens:
            if not 0 <= tok < cfg.vocab_size:
                raise ValueError(f"answer token {tok} is outside the vocabulary 0..{cfg.vocab_size - 1}")
        for p in metric.positions or ():
            if not -T <= p < T:
                raise ValueError(f"the metric reads position {p}; the prompts have {T} tokens")
    elif not callable(metric):
        raise ValueError(f"metric must be logit_diff(...), prob(...), loss() or a callable logits -> (B,), "
                         f"got {metric!r}")


def _evaluate(metric: Callable, logits: torch.Tensor, clean: torch.Tensor, selected: bool = False
              ) -> torch.Tensor:
    """metric on logits (B, T, V) -> (B,) float; `selected`: logits are already the Metric's positions."""
    if selected:
        out = metric.fn(logits, clean)
    else:
        out = metric(logits, clean) if isinstance(metric, Metric) else metric(logits)
    if not isinstance(out, torch.Tensor) or out.shape != (logits.size(0),):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the metric must map logits (B, T, V) to one value per row, shape ({logits.size(0)},); "
                         f"it returned {shape} (a metric that gives one number for a batch needs a per-row "
                         "version)")
    return out.detach().float()


@contextlib.contextmanager
def _eval(*models: Any) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients; a model in training mode goes back to it after."""
    training = [m for m in dict.fromkeys(models) if m.training]  # train() walks every module: only if needed
    try:
        for m in training:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m in training:
            m.train()


# -- the sweep -----------------------------------------------------------------------------------------
def sweep(model: Any, clean_ids: Any, corrupt_ids: Any, site: str, metric: Callable,
          source_model: Any = None, direction: str = "denoise") -> PatchResult:
    """Patch every cell of `site` (see the module docstring) and measure `metric` (a Metric from
    logit_diff, prob or loss, or any callable logits (B, T, V) -> (B,)). Prompts are (T,) or (1, T)
    ids of the same length. Bad input raises ValueError with what to change."""
    clean, corrupt = check_inputs(model, clean_ids, corrupt_ids, site, direction, source_model)
    cfg, T = model.config, clean.size(1)
    _check_metric(metric, cfg, T)
    src_model = model if source_model is None else source_model
    src_ids, tgt_ids = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    positions = [p % T for p in metric.positions] if isinstance(metric, Metric) and metric.positions else None
    with _eval(model, src_model):
        tgt, src, both = _record(model, source_model, tgt_ids, src_ids, site)
        base = _evaluate(metric, both, clean)  # the target run's metric, then the other prompt's
        entries = patch_engine.cells(model, site, tgt, src)
        sizes = {"layer": cfg.n_layer, "head": cfg.n_head, "position": T}
        values = torch.full([sizes[d] for d in SITES[site][1]], float(base[0]), device=clean.device)
        score = lambda lg: _evaluate(metric, lg, clean, selected=positions is not None)  # noqa: E731
        for cell, value in patch_engine.run(model, entries, tgt, positions, both[0], score):
            values[cell] = value
    order = (1, 0) if direction == "denoise" else (0, 1)  # rows of `both` holding (clean, corrupted)
    return PatchResult(values.cpu(), float(base[order[0]]), float(base[order[1]]), site, direction,
                       getattr(metric, "name", getattr(metric, "__name__", "metric")), SITES[site][1],
                       both[order[0]].float().cpu(), both[order[1]].float().cpu(), len(entries))


def _record(model: Any, source_model: Any, tgt_ids: torch.Tensor, src_ids: torch.Tensor, site: str
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The target run's activations {name: (L, T, ...)}, the source's activations at the site
    (L, T, ...), and `model`'s logits (2, T, V) on the target prompt and the other one."""
    L, hook = model.config.n_layer, SITES[site][0]
    names = patch_engine.STATE + patch_engine.EXTRA.get(site, [])
    rec = Recorder([f"blocks.*.{n}" for n in names], compact=False, device=tgt_ids.device)
    both, _ = model(torch.cat([tgt_ids, src_ids]), rec=rec)  # one batch of two: half the fixed cost
    src_rec, row = rec, 1
    if source_model is not None:
        src_rec, row = Recorder([f"blocks.*.{hook}"], compact=False, device=tgt_ids.device), 0
        source_model(src_ids, rec=src_rec)

    def stack(r: Recorder, name: str, b: int) -> torch.Tensor:  # (L, T, ...)
        return torch.stack([r[f"blocks.{i}.{name}"][b] for i in range(L)])
    tgt = {n: stack(rec, n, 0) for n in names}
    return tgt, stack(src_rec, hook, row).to(tgt["hook_resid_pre"].dtype), both


def patched_logits(model: Any, clean_ids: Any, corrupt_ids: Any, site: str, cell: Sequence[int],
                   source_model: Any = None, direction: str = "denoise") -> torch.Tensor:
    """Logits (T, V) of the run that `cell` of sweep(...) measured (e.g. (layer, position) for
    resid_pre), through Edits.patch: the distribution to show beside the clean and corrupted ones."""
    clean, corrupt = check_inputs(model, clean_ids, corrupt_ids, site, direction, source_model)
    dims = SITES[site][1]
    sizes = {"layer": model.config.n_layer, "head": model.config.n_head, "position": clean.size(1)}
    if len(cell) != len(dims) or any(not 0 <= int(c) < sizes[d] for c, d in zip(cell, dims)):
        raise ValueError(f"a {site} cell is ({', '.join(dims)}) within {tuple(sizes[d] for d in dims)}, "
                         f"got {tuple(cell)}")
    at = {d: int(c) for d, c in zip(dims, cell)}
    src_model = model if source_model is None else source_model
    src_ids, tgt_ids = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    name = f"blocks.{at['layer']}.{SITES[site][0]}"
    with _eval(model, src_model):
        rec = Recorder([name], compact=False, device=clean.device)
        src_model(src_ids, rec=rec)
        edit = Edits().patch(name, rec[name], positions=[at["position"]] if "position" in at else None,
                             heads=[at["head"]] if "head" in at else None)
        logits, _ = model(tgt_ids, edit=edit)  # (1, T, V)
    return logits[0].float().cpu()
