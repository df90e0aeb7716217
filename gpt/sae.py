"""Sparse autoencoders on one hook of a GPT: TopK (Gao et al. 2024, arXiv 2406.04093) or ReLU + L1.

    sae = SAE(SAEConfig(d_in=128, n_latents=1024, k=32), hook="blocks.2.hook_resid_post")
    x_hat, z = sae(x)                 # x (..., d_in) -> reconstruction (..., d_in), latents (..., n)
    save_sae(sae, folder, checkpoint=ckpt_dir)     # sae.safetensors + sae.json
    sae = load_sae(folder, model=model, hook="blocks.2.hook_resid_post")   # SAEError if it does not fit

Contract:
- encode: pre = (x - b_dec) @ W_enc + b_enc; TopK keeps the k largest pre-activations of each
  token and applies ReLU to them (so at most k latents are non-zero, exactly k when k of them are
  positive); ReLU + L1 keeps relu(pre). decode: z @ W_dec + b_dec. W_dec's rows (the "decoder
  columns" of the paper, one per latent, (n, d_in)) have unit L2 norm: `normalize_decoder()` after
  every optimizer step, and `remove_parallel_grad()` before it (the paper's trick: the part of each
  row's gradient along the row only changes its norm, which the renormalization undoes anyway).
- losses (`losses(x, dead)`): MSE normalised by the batch's variance (so 1 - it is the FVE of the
  batch); AuxK (TopK): the residual x - x_hat reconstructed from the k_aux largest pre-activations
  of the dead latents, weighted 1/32, so dead latents get a gradient; L1 (ReLU): l1_coef times the
  sum of z·‖W_dec row‖.
- files: <folder>/sae.safetensors (W_enc, b_enc, W_dec, b_dec, float32 or float16) and
  <folder>/sae.json (format, config, hook, the model checkpoint and its sha256, the model's width,
  training figures). No pickle. load_sae refuses (SAEError, saying what to do) an SAE whose width
  differs from the model's or whose hook differs from the one asked.
- edits (gpt.edit.Edits at the SAE's hook, keyed by plain data so app caches can tell them apart):
  splice_edit (the activation replaced by its reconstruction), ablate_feature_edit (the feature's
  decoder contribution z_f·W_dec[f] subtracted where it fires), steer_feature_edit (alpha × W_dec[f]
  added at every position), and feature_direction (W_dec[f], for gpt.steering.from_vector).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt.edit import Desc, Edits

FORMAT, VERSION = "nanolens-sae", 1
WEIGHTS, META = "sae.safetensors", "sae.json"
KINDS = ("topk", "relu")
AUX_COEF = 1.0 / 32  # the paper's AuxK weight
HOOK_RE = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)")


class SAEError(ValueError):
    """An SAE that cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class SAEConfig:
    """d_in: the activation width; n_latents: d_in × expansion; k: latents kept per token (TopK);
    kind: "topk" or "relu"; l1_coef: the L1 weight (ReLU); k_aux: dead latents the AuxK loss uses
    (default d_in // 2, as the paper)."""
    d_in: int
    n_latents: int
    k: int = 32
    kind: str = "topk"
    l1_coef: float = 5.0
    k_aux: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SAEError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("d_in", "n_latents", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SAEError(f"{name} must be a whole number of at least 1, got {v!r}")
        if self.k > self.n_latents:
            raise SAEError(f"k ({self.k}) cannot exceed n_latents ({self.n_latents}); lower k or raise the expansion")

    @property
    def aux_k(self) -> int:
        return min(self.k_aux or max(1, self.d_in // 2), self.n_latents)


def check_hook(hook: str, n_layer: int | None = None) -> int:
    """The layer of `hook` (one of blocks.L.hook_resid_pre|mid|post, hook_attn_out, hook_mlp_out: a
    (B, T, C) stream), or SAEError."""
    m = HOOK_RE.fullmatch(hook or "")
    if m is None:
        raise SAEError(f"hook {hook!r} is not a residual-width hook; use e.g. blocks.2.hook_resid_post "
                       "(resid_pre, resid_mid, resid_post, attn_out or mlp_out of a block)")
    layer = int(m.group(1))
    if n_layer is not None and layer >= n_layer:
        raise SAEError(f"hook {hook!r} names layer {layer}, but this model has layers 0..{n_layer - 1}")
    return layer


class SAE(nn.Module):
    """A sparse autoencoder for the activations at `hook`. See the module docstring."""

    def __init__(self, cfg: SAEConfig, hook: str, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_hook(hook)
        self.cfg, self.hook, self.meta = cfg, hook, dict(meta or {})
        self.uid = uuid.uuid4().hex  # names an unsaved SAE in edit keys (a loaded one: its weights' hash)
        d, n = cfg.d_in, cfg.n_latents
        w = torch.randn(n, d)
        w = w / w.norm(dim=1, keepdim=True)  # unit rows
        self.W_dec = nn.Parameter(w)  # (n, d_in): row f is feature f's direction
        self.W_enc = nn.Parameter(w.t().clone())  # (d_in, n): tied at init, as the paper
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d))

    # -- the maps -----------------------------------------------------------------------------------
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (..., n) of x (..., d_in): the decoder bias is subtracted first."""
        return (x.to(self.W_enc.device, self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Latents (..., n) from pre-activations: TopK then ReLU, or ReLU."""
        if self.cfg.kind == "relu":
            return F.relu(pre)
        vals, idx = pre.topk(self.cfg.k, dim=-1)  # (..., k)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (..., n) of x (..., d_in)."""
        return self.activate(self.pre(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_in) of latents z (..., n)."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    # -- training -----------------------------------------------------------------------------------
    def losses(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"loss", "mse" (normalised: 1 - FVE of this batch), "aux", "l1", "z"} for x (N, d_in);
        dead (n,) bool marks the latents the AuxK loss revives (TopK only)."""
        x = x.to(self.W_enc.dtype)
        pre = self.pre(x)  # (N, n)
        z = self.activate(pre)
        x_hat = self.decode(z)
        var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)  # per-token variance, summed over d
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean() / var
        aux = x.new_zeros(())
        l1 = x.new_zeros(())
        if self.cfg.kind == "topk" and dead is not None and bool(dead.any()):
            k_aux = min(self.cfg.aux_k, int(dead.sum()))
            masked = pre.masked_fill(~dead, float("-inf"))  # only dead latents compete
            vals, idx = masked.topk(k_aux, dim=-1)  # (N, k_aux)
            z_aux = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
            e_hat = z_aux @ self.W_dec  # (N, d_in): no bias, it reconstructs the residual
            e = err.detach()
            aux = ((e - e_hat).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8))
            aux = torch.nan_to_num(aux, nan=0.0)
        if self.cfg.kind == "relu":
            l1 = self.cfg.l1_coef * (z * self.W_dec.norm(dim=1)).sum(-1).mean() / var.sqrt()
        return {"loss": mse + AUX_COEF * aux + l1, "mse": mse, "aux": aux, "l1": l1, "z": z}

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Every decoder row back to unit L2 norm (after each optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop each decoder row's gradient component along the row (before each optimizer step)."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (n, d)
        self.W_dec.grad.sub_((self.W_dec.grad * w).sum(1, keepdim=True) * w)

    @torch.no_grad()
    def init_bias(self, x: torch.Tensor) -> None:
        """b_dec = the mean of a sample x (N, d_in) (the paper uses the geometric median; the mean
        is close on these streams and exact to compute)."""
        self.b_dec.copy_(x.float().mean(0))

    # -- reading ------------------------------------------------------------------------------------
    @property
    def layer(self) -> int:
        return check_hook(self.hook)

    def check_model(self, config: Any, hook: str | None = None) -> None:
        """SAEError when this SAE does not fit a model of `config` (GPTConfig), or `hook` differs."""
        if hook is not None and hook != self.hook:
            raise SAEError(f"this SAE was trained on {self.hook}, not {hook}; pick an SAE trained on {hook}, "
                           f"or train one there")
        if config.n_embd != self.cfg.d_in:
            raise SAEError(f"this SAE reads {self.cfg.d_in}-wide activations, but the model is {config.n_embd} "
                           "wide; it belongs to another model: train an SAE for this one")
        check_hook(self.hook, config.n_layer)


# -- files --------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file (the model checkpoint an SAE names)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_hash(ckpt_dir: str | os.PathLike) -> str | None:
    """The sha256 of a native checkpoint folder's model.safetensors (None where there is none)."""
    p = Path(ckpt_dir) / "model.safetensors"
    return file_sha256(p) if p.is_file() else None


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_sae(sae: SAE, folder: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             fp16: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write sae.safetensors and sae.json into `folder` (each atomically; the weights first) and
    return the folder. checkpoint: the model checkpoint folder it was trained on (named with its
    sha256 in sae.json); extra: more JSON (training figures)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sae.state_dict().items()}
    _atomic_write(folder / WEIGHTS, lambda p: save_file(tensors, str(p)))
    meta = dict(sae.meta)
    meta.update(format=FORMAT, version=VERSION, config=asdict(sae.cfg), hook=sae.hook, d_in=sae.cfg.d_in,
                dtype=str(dtype).removeprefix("torch."), **(extra or {}))
    if checkpoint is not None:
        meta.update(checkpoint=str(checkpoint), checkpoint_sha256=checkpoint_hash(checkpoint))
    text = json.dumps(meta, indent=1, sort_keys=True)
    _atomic_write(folder / META, lambda p: p.write_text(text))
    sae.meta = meta
    return folder


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """sae.json of `folder`, checked; SAEError when it is missing or not an SAE's."""
    p = Path(folder) / META
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        raise SAEError(f"{folder} holds no SAE ({META} is missing); train one first") from None
    except (OSError, ValueError) as e:
        raise SAEError(f"{p} cannot be read ({e}); train the SAE again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise SAEError(f"{p} is not a nanolens SAE description; train the SAE again")
    return meta


def load_sae(folder: str | os.PathLike, model: Any = None, hook: str | None = None) -> SAE:
    """The SAE saved in `folder` (float32, eval mode). With `model` (a GPT) it must fit its width
    and layers, and with `hook` it must have been trained there: SAEError otherwise, saying what to do."""
    from safetensors.torch import load_file

    meta = read_meta(folder)
    try:
        cfg = SAEConfig(**{k: meta["config"][k] for k in SAEConfig.__dataclass_fields__ if k in meta["config"]})
        sae = SAE(cfg, str(meta.get("hook")), meta)
    except (TypeError, SAEError) as e:
        raise SAEError(f"{Path(folder) / META} describes no usable SAE ({e}); train it again") from None
    if model is not None:
        sae.check_model(model.config, hook)
    elif hook is not None and hook != sae.hook:
        raise SAEError(f"this SAE was trained on {sae.hook}, not {hook}; pick an SAE trained on {hook}")
    try:
        tensors = load_file(str(Path(folder) / WEIGHTS))
        sae.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        sae.meta["weights_sha256"] = file_sha256(Path(folder) / WEIGHTS)  # edit keys: equal weights, equal key
    except (OSError, RuntimeError, ValueError) as e:  # missing, truncated or other-shaped weights
        raise SAEError(f"{Path(folder) / WEIGHTS} cannot be loaded ({e}); train the SAE again") from None
    return sae.eval().requires_grad_(False)


# -- edits --------------------------------------------------------------------------------------------
def _feature(sae: SAE, feature: int) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < sae.cfg.n_latents:
        raise SAEError(f"feature {feature!r} is out of range: this SAE has features 0..{sae.cfg.n_latents - 1}")
    return feature


def _tag(sae: SAE) -> str:
    return str(sae.meta.get("weights_sha256") or sae.uid)


def splice_edit(sae: SAE, keep_error: bool = False) -> Edits:
    """Replace the hook's activation by the SAE's reconstruction (keep_error adds x - x_hat back,
    which changes nothing but lets a further edit act on the latents)."""
    def fn(act: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        with torch.no_grad():
            x_hat = sae.decode(sae.encode(act)).to(act.dtype)
        return act if keep_error else x_hat

    d = f"SAE spliced in at {sae.hook}"
    return Edits({sae.hook: fn}, key=("sae_splice", _tag(sae), sae.hook, keep_error),
                 desc=Desc("SAE", "SAEs", "spliced in", frozenset([sae.hook]), d))


def ablate_feature_edit(sae: SAE, feature: int) -> Edits:
    """Subtract feature f's decoder contribution z_f · W_dec[f] at every position where it fires
    (nothing changes where z_f = 0)."""
    f = _feature(sae, feature)

    def fn(act: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        with torch.no_grad():
            z_f = sae.encode(act)[..., f:f + 1]  # (B, T, 1)
            return act - (z_f * sae.W_dec[f]).to(act.dtype)

    return Edits({sae.hook: fn}, key=("sae_ablate", _tag(sae), sae.hook, f),
                 desc=Desc("SAE feature", "SAE features", "ablated", frozenset([(sae.hook, f)]),
                           f"SAE feature {f} ablated at {sae.hook}"))


def feature_direction(sae: SAE, feature: int) -> torch.Tensor:
    """Feature f's decoder direction W_dec[f] (C,), unit norm, float32 on the CPU: a steering
    vector (gpt.steering.from_vector(model, v, layer, site, source="SAE feature f"))."""
    return sae.W_dec[_feature(sae, feature)].detach().to("cpu", torch.float32).clone()


def steer_feature_edit(sae: SAE, feature: int, alpha: float) -> Edits:
    """Add alpha × W_dec[f] at every position of the SAE's hook (alpha in residual units, since
    the direction has unit norm); exactly Edits() when alpha == 0."""
    f = _feature(sae, feature)
    alpha = float(alpha)
    if alpha != alpha or alpha in (float("inf"), float("-inf")):
        raise SAEError(f"alpha must be a finite number, got {alpha}")
    if alpha == 0:
        return Edits()
    v = sae.W_dec[f].detach().float()

    def fn(act: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        return act + (alpha * v).to(act.dtype)

    return Edits({sae.hook: fn}, key=("sae_steer", _tag(sae), sae.hook, f, alpha),
                 desc=Desc("SAE feature", "SAE features", "steered", frozenset([(sae.hook, f)]),
                           f"SAE feature {f} steered ×{alpha:g} at {sae.hook}"))
