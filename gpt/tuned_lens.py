"""The tuned lens (Belrose et al. 2023, arXiv 2303.08112): one affine translator per layer, fitted so
that reading a layer's residual through the model's own unembedding predicts what the model will
finally say. Pure tensors and files; the fit itself runs in trainers/fit_lens.py.

Rows, as gpt.analysis.logit_lens: row 0 is the embedding (blocks.0.hook_resid_pre), row i+1 the
residual after block i, so a model of L blocks has L+1 rows and the last one IS the model's output.
Translators exist for rows 0..L-1; the last row has none (it needs none: its lens is the model).

The form (the paper's "translator residual form"): row l's lens distribution is

    softmax(unembed(ln_f(h_l + A_l h_l + b_l)))

with ln_f applied with the translated vector's own statistics (gpt.analysis.lens_logits). A_l
(C, C) and b_l (C,) start at zero, so the translator starts as the identity (effective weight
I + A_l = I, bias 0) and at initialization the tuned lens equals the logit lens bit for bit
(h + 0 is h exactly). We store A_l, not I + A_l: zero-init parameters keep that exact.

Loss: KL(final || lens) = sum_v p_final(v) (log p_final(v) - log p_lens(v)) in nats, per row,
averaged over positions; the rows' losses are summed for one optimizer (each translator only
touches its own row, so that is L independent fits).

Files: <home>/lens/tuned_lens.safetensors (weight (L, C, C) = A, bias (L, C), float32) and
tuned_lens.json (format, shape, the checkpoint it was fitted to and its model fingerprint, the
weights file's sha256, the fit's settings and held-out KL). No pickle anywhere. <home> is the run
folder of a checkpoint in a run, else the checkpoint's own folder (lens_home).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from gpt.analysis import LogitLens, lens_logits
from gpt.layout import LENS
from gpt.record import Recorder

FORMAT, VERSION, FORM = "nanolens-tuned-lens", 1, "residual: h + A h + b (A, b zero at init)"
WEIGHTS_FILE, META_FILE = "tuned_lens.safetensors", "tuned_lens.json"
LENS_DIR = LENS  # the folder name, from gpt.layout
NEEDS = ["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post"]  # what residual_rows reads


class LensError(ValueError):
    """A lens that cannot be used here; the message says why and what to do."""


# -- where a lens lives ------------------------------------------------------------------------------
def lens_home(checkpoint: str | os.PathLike) -> Path:
    """The folder whose lens/ holds the tuned lens of the checkpoint at `checkpoint` (a resolved
    checkpoint folder or file): its run folder when it belongs to one, else its own folder."""
    from gpt.layout import run_of

    p = Path(checkpoint)
    folder = p if p.is_dir() else p.parent
    return run_of(folder) or folder  # latest/, best/, snapshots/iter_N -> the run


def lens_dir(home: str | os.PathLike) -> Path:
    """<home>/lens: the fitted lens, the fit's status.json, its resumable state; not created here."""
    return Path(home) / LENS_DIR


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every state-dict tensor's name, dtype, shape and bytes: what a lens was fitted to.
    Same weights loaded from any format give the same fingerprint (as long as the dtype matches)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- the lens --------------------------------------------------------------------------------------------
class TunedLens(nn.Module):
    """Translators for rows 0..L-1 (residual form, zero-initialized: the identity). `meta` is what
    its JSON said (empty for a fresh one)."""

    def __init__(self, n_layer: int, n_embd: int, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layer, n_embd, n_embd))  # (L, C, C): A_l, out x in
        self.bias = nn.Parameter(torch.zeros(n_layer, n_embd))  # (L, C)
        self.meta = dict(meta or {})

    @property
    def n_layer(self) -> int:
        return self.weight.size(0)

    @property
    def n_embd(self) -> int:
        return self.weight.size(1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Residual rows (L+1, N, C) -> translated rows (L+1, N, C); the last row passes unchanged."""
        L = self.n_layer
        if rows.dim() != 3 or rows.size(0) != L + 1 or rows.size(2) != self.n_embd:
            raise LensError(f"the lens takes (L+1, N, C) = ({L + 1}, N, {self.n_embd}) rows; got {tuple(rows.shape)}")
        h = rows[:L].float()  # (L, N, C)
        delta = torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))  # (L, N, C): A h + b
        return torch.cat([h + delta, rows[L:].float()])  # (L+1, N, C)


def check_shape(lens: TunedLens, model: nn.Module) -> None:
    """LensError unless `lens` has one translator per block of `model`, of its width."""
    L, C = model.config.n_layer, model.config.n_embd
    if (lens.n_layer, lens.n_embd) != (L, C):
        raise LensError(f"this tuned lens was fitted to a model of {lens.n_layer} layers and width {lens.n_embd}; "
                        f"this model has {L} layers and width {C}: fit a tuned lens for this model")


def fits(lens: TunedLens, model: nn.Module, fingerprint: str | None = None) -> bool:
    """Whether `lens` was fitted to exactly these weights (same shape and model fingerprint)."""
    try:
        check_shape(lens, model)
    except LensError:
        return False
    return lens.meta.get("model_sha256") == (fingerprint or model_fingerprint(model))


# -- residuals, distributions, measures ----------------------------------------------------------------
def residual_rows(rec: Recorder, n_layer: int, positions: Sequence[int] | None = None) -> torch.Tensor:
    """The lens's L+1 residual rows of batch element 0 at `positions` (default all): (L+1, P, C) float32."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]
    missing = [n for n in names if n not in rec]
    if missing:
        raise KeyError(f"the lens needs {missing[0]!r}, which this recording lacks; record {NEEDS!r}")
    rows = torch.stack([rec[n][0].float() for n in names])  # (L+1, T, C)
    return rows if positions is None else rows[:, torch.as_tensor(list(positions), dtype=torch.long)]


def lens_log_probs(model: nn.Module, rows: torch.Tensor, lens: TunedLens | None = None) -> torch.Tensor:
    """Log-probabilities (L+1, N, V) of each row read through ln_f and the unembedding, after the
    tuned lens's translators when `lens` is given (the logit lens when None)."""
    x = rows if lens is None else lens(rows)  # (L+1, N, C)
    return F.log_softmax(lens_logits(model, x), dim=-1)  # (L+1, N, V)


def kl_to_final(logp: torch.Tensor, final: torch.Tensor | None = None) -> torch.Tensor:
    """KL(final || row) in nats for every row and position: logp (R, N, V), final (N, V) log-probs
    (default: the last row) -> (R, N). Exact 0 where a row equals the final distribution."""
    final = logp[-1] if final is None else final
    return torch.sum(final.exp() * (final - logp), dim=-1)  # (R, N)


def kl_loss(model: nn.Module, lens: TunedLens, rows: torch.Tensor) -> torch.Tensor:
    """Each translator's loss: the mean over the N positions of KL(final || lens), (L,) with grad.
    rows (L+1, N, C) from residual_rows (the last row gives the final distribution)."""
    L = lens.n_layer
    with torch.no_grad():
        final = F.log_softmax(lens_logits(model, rows[L]), dim=-1)  # (N, V): the model's own output
    logp = F.log_softmax(lens_logits(model, lens(rows)[:L]), dim=-1)  # (L, N, V)
    return kl_to_final(logp, final).mean(dim=1)  # (L,)


@dataclass
class LensMeasures:
    """Per row (L+1) and position (P): kl (nats) from the final distribution to the row's, rank
    (1 = top) of the final top-1 token in the row's distribution, entropy (nats) of the row's."""

    kl: torch.Tensor
    rank: torch.Tensor
    entropy: torch.Tensor


def measures(logp: torch.Tensor) -> LensMeasures:
    """KL to the final row, the final top-1 token's rank, and entropy, for logp (R, P, V) log-probs
    whose last row is the final distribution. The rank counts tokens strictly more likely, plus one."""
    final = logp[-1]  # (P, V)
    top = final.argmax(dim=-1)  # (P,)
    at_top = logp.gather(2, top.view(1, -1, 1).expand(logp.size(0), -1, 1))  # (R, P, 1)
    rank = 1 + (logp > at_top).sum(dim=-1)  # (R, P)
    entropy = -(logp.exp() * logp).nan_to_num(nan=0.0).sum(dim=-1)  # (R, P); 0 * -inf counts as 0
    return LensMeasures(kl_to_final(logp, final).cpu(), rank.cpu(), entropy.cpu())


def lens_table(logp: torch.Tensor, positions: Sequence[int], ids: Sequence[int] | None = None,
               k: int = 5) -> LogitLens:
    """A gpt.analysis.LogitLens (top-k per row and position, p(actual next token)) from log-probs
    (L+1, P, V) at `positions` of a prompt `ids` (NaN where there is no next token)."""
    probs = logp.exp().cpu()  # (R, P, V)
    top_p, top_i = torch.topk(probs, min(k, probs.size(-1)), dim=-1)  # (R, P, k)
    tgt = None
    if ids is not None:
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)
        nxt = torch.tensor([int(ids_t[p + 1]) if p + 1 < len(ids_t) else -1 for p in positions])  # (P,)
        tgt = probs.gather(2, nxt.clamp(min=0).view(1, -1, 1).expand(probs.size(0), -1, 1)).squeeze(2)
        tgt = tgt.masked_fill(nxt.view(1, -1) < 0, float("nan"))  # (R, P)
    R = logp.size(0)
    labels = ["embed"] + [f"after block {i}" for i in range(R - 1)]
    return LogitLens(top_i, top_p, labels, list(positions), tgt)


# -- files ------------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_lens(lens: TunedLens, folder: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write tuned_lens.safetensors, then tuned_lens.json (each atomically; the JSON, written last,
    names the weights file's sha256, so a pair from two different saves is refused on load)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = save({"weight": lens.weight.detach().float().contiguous(), "bias": lens.bias.detach().float().contiguous()})
    _atomic_bytes(folder / WEIGHTS_FILE, data)
    full = dict(meta, format=FORMAT, version=VERSION, form=FORM, n_layer=lens.n_layer, n_embd=lens.n_embd,
                weights_sha256=hashlib.sha256(data).hexdigest())
    _atomic_bytes(folder / META_FILE, json.dumps(full, indent=1).encode())
    lens.meta = full


def read_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """tuned_lens.json of `folder` (None when there is none); LensError when it is not ours."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LensError(f"{path}: not readable JSON ({e}); fit the lens again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LensError(f"{path} is not a nanolens tuned lens (format {FORMAT!r}); fit the lens again")
    return meta


def load_lens(folder: str | os.PathLike, model: nn.Module | None = None) -> TunedLens | None:
    """The lens saved in `folder` (None when there is none). LensError when its files disagree,
    are damaged, or (given `model`) it was fitted to a model of another shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = read_meta(folder)
    if meta is None:
        return None
    path = Path(folder) / WEIGHTS_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LensError(f"{path} cannot be read ({e.strerror or e}); fit the lens again") from None
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise LensError(f"{path} is not the file {META_FILE} describes (its sha256 differs); fit the lens again")
    try:
        t = load(data)
    except (SafetensorError, ValueError) as e:
        raise LensError(f"{path}: not a safetensors file ({e}); fit the lens again") from None
    w, b = t.get("weight"), t.get("bias")
    L, C = meta.get("n_layer"), meta.get("n_embd")
    if w is None or b is None or tuple(w.shape) != (L, C, C) or tuple(b.shape) != (L, C):
        raise LensError(f"{path}: weight/bias are not ({L}, {C}, {C}) and ({L}, {C}) as {META_FILE} says; "
                        "fit the lens again")
    lens = TunedLens(L, C, meta)
    with torch.no_grad():
        lens.weight.copy_(w)
        lens.bias.copy_(b)
    lens.requires_grad_(False)
    if model is not None:
        check_shape(lens, model)
    return lens


# -- a fit's resumable state (trainers/fit_lens.py) ------------------------------------------------
def save_fit_state(path: Path, lens: TunedLens, opt: torch.optim.Optimizer, step: int, fit_ids: torch.Tensor,
                   eval_ids: torch.Tensor, settings: dict[str, Any]) -> None:
    """Everything a resume needs, in one safetensors file replaced atomically."""
    from safetensors.torch import save

    t = {"weight": lens.weight.detach(), "bias": lens.bias.detach(), "fit_ids": fit_ids, "eval_ids": eval_ids}
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            t[f"adam.{i}.{k}"] = torch.as_tensor(v).detach().clone()
    data = save({k: v.contiguous() for k, v in t.items()}, metadata={"step": str(step), "settings": json.dumps(settings)})
    _atomic_bytes(path, data)


def load_fit_state(path: Path) -> dict[str, Any] | None:
    """{"step", "settings", "tensors"} of a save_fit_state file; None when absent or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return {"step": int(meta["step"]), "settings": json.loads(meta["settings"]), "tensors": tensors}
    except Exception:  # a damaged state only costs a fresh start (said by the caller)
        return None


def restore_fit_state(lens: TunedLens, opt: torch.optim.Optimizer, t: dict[str, torch.Tensor]) -> None:
    """Put a load_fit_state's tensors back into `lens` and its Adam `opt`."""
    with torch.no_grad():
        lens.weight.copy_(t["weight"])
        lens.bias.copy_(t["bias"])
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in t.items():
        if k.startswith("adam."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
