"""Where a run's SAEs live, and each SAE's feature index: what every feature does on held-out text.

    <run>/sae/<name>/          one SAE (name: its hook by default, e.g. blocks.2.hook_resid_post)
        sae.safetensors, sae.json        the SAE (gpt.sae.save_sae)
        index.safetensors, index.json    the feature index (this module), written when training ends
        config.json, status.json, metrics.jsonl, state.safetensors, .lock, STOP, train_sae.log
                                         the training job's (trainers/train_sae.py)

The index is computed over N validation windows (N, T) of the run's corpus: for every feature its
frequency (fraction of tokens where it is non-zero), max and mean (over those tokens) activation,
a histogram of its non-zero activations (BINS bins from 0 to its max), and its top windows (the
TOP windows where it peaks highest, one peak per window) with its activations over CTX_BEFORE
tokens before the peak to CTX_AFTER after. The windows' ids are stored too, so examples show
without the corpus. Tensors go to index.safetensors (no pickle), numbers about it to index.json.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt.layout import SAE as SAE_FOLDER
from gpt.record import Recorder
from gpt.sae import SAE

FOLDER = SAE_FOLDER  # a run's SAEs live in <run>/sae/<hook>/ (gpt.layout names it)
INDEX, INDEX_META = "index.safetensors", "index.json"
TOP, BINS, CTX_BEFORE, CTX_AFTER = 8, 24, 24, 8
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def sae_root(run_dir: str | os.PathLike) -> Path:
    """<run>/sae: the folder holding a run's SAEs."""
    return Path(run_dir) / FOLDER


def sae_path(run_dir: str | os.PathLike, name: str) -> Path:
    """<run>/sae/<name>, for a valid name (letters, digits, '_', '.', '-'); ValueError otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(f"{name!r} is not an SAE name: use letters, digits, '_', '.' and '-' (at most 100)")
    return sae_root(run_dir) / name


def list_saes(run_dir: str | os.PathLike) -> list[str]:
    """The names of the run's SAE folders that hold a trained SAE (sae.json), sorted."""
    root = sae_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "sae.json").is_file() and NAME_RE.fullmatch(p.name))


@dataclass(frozen=True)
class FeatureIndex:
    """A feature index (see the module docstring). Shapes: freq, max_act, mean_act (n,); hist
    (n, BINS) counts, bin b of feature f covering [b, b+1) × max_act[f] / BINS; top_win, top_pos
    (n, TOP) window and position of each top example (-1: none); top_acts (n, TOP, W) the feature's
    activation at positions top_pos - CTX_BEFORE .. top_pos + CTX_AFTER (0 outside the window);
    windows (N, T) the token ids."""
    freq: torch.Tensor
    max_act: torch.Tensor
    mean_act: torch.Tensor
    hist: torch.Tensor
    top_win: torch.Tensor
    top_pos: torch.Tensor
    top_acts: torch.Tensor
    windows: torch.Tensor
    meta: dict[str, Any]

    @property
    def n_latents(self) -> int:
        return int(self.freq.numel())

    def example(self, f: int, i: int) -> tuple[list[int], list[float], int]:
        """(token ids, activations, index of the peak) of feature f's i-th top example, cut to
        the part inside its window."""
        w, p = int(self.top_win[f, i]), int(self.top_pos[f, i])
        T = self.windows.size(1)
        lo, hi = max(0, p - CTX_BEFORE), min(T, p + CTX_AFTER + 1)
        acts = self.top_acts[f, i, lo - (p - CTX_BEFORE): hi - (p - CTX_BEFORE)].float().tolist()
        return self.windows[w, lo:hi].tolist(), acts, p - lo


@torch.no_grad()
def latents_on(model: torch.nn.Module, sae: SAE, ids: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """The SAE's latents (N, T, n) float32 on windows ids (N, T), under the unedited model."""
    out = []
    for s in range(0, ids.size(0), chunk):
        rec = Recorder([sae.hook])
        model(ids[s:s + chunk], rec=rec)
        out.append(sae.encode(rec[sae.hook].float()).cpu())  # (b, T, n), on the CPU for the index
    return torch.cat(out)


@torch.no_grad()
def build_index(model: torch.nn.Module, sae: SAE, windows: torch.Tensor, top: int = TOP,
                meta: dict[str, Any] | None = None) -> FeatureIndex:
    """The feature index of `sae` over `windows` (N, T) long token ids."""
    Z = latents_on(model, sae, windows)  # (N, T, n)
    N, T, n = Z.shape
    flat = Z.reshape(N * T, n)  # (N*T, n)
    active = flat > 0
    count = active.sum(0)  # (n,)
    freq = count.float() / (N * T)
    max_act = flat.max(0).values.clamp_min(0)  # (n,)
    mean_act = flat.sum(0) / count.clamp_min(1)
    # histogram of non-zero values: bin = floor(z / max * BINS), scattered into (n, BINS)
    scale = torch.where(max_act > 0, BINS / max_act, torch.zeros_like(max_act))  # (n,)
    bins = (flat * scale).floor().clamp(0, BINS - 1).long()  # (N*T, n)
    hist = torch.zeros(n, BINS, dtype=torch.long)
    col = torch.arange(n).expand_as(bins)  # (N*T, n)
    hist.view(-1).index_put_(((col * BINS + bins)[active],), torch.ones(int(active.sum()), dtype=torch.long),
                             accumulate=True)
    # top windows: each window's peak per feature, the `top` highest peaks with z > 0
    peak, where = Z.max(1)  # (N, n) each
    k = min(top, N)
    vals, win = peak.t().topk(k, dim=1)  # (n, k)
    pos = where.t().gather(1, win)  # (n, k)
    none = vals <= 0
    win, pos = win.masked_fill(none, -1), pos.masked_fill(none, -1)
    W = CTX_BEFORE + 1 + CTX_AFTER
    padded = torch.nn.functional.pad(Z, (0, 0, CTX_BEFORE, CTX_AFTER))  # (N, T + W - 1, n)
    offs = pos.clamp_min(0)[..., None] + torch.arange(W)  # (n, k, W): positions in padded
    feat = torch.arange(n)[:, None, None].expand(n, k, W)
    top_acts = padded[win.clamp_min(0)[..., None].expand(n, k, W), offs, feat]  # (n, k, W)
    top_acts = top_acts.masked_fill(none[..., None], 0.0)
    info = dict(meta or {}, n_windows=N, block=T, tokens=N * T, top=k, bins=BINS, ctx_before=CTX_BEFORE,
                ctx_after=CTX_AFTER, dead_fraction=float((count == 0).float().mean()))
    return FeatureIndex(freq, max_act, mean_act, hist, win, pos, top_acts.half(), windows.cpu().to(torch.int32), info)


def save_index(folder: str | os.PathLike, idx: FeatureIndex) -> None:
    """index.safetensors (fp16 activations, int32 ids) and index.json, each replaced atomically."""
    from safetensors.torch import save_file

    from gpt.sae import _atomic_write

    folder = Path(folder)
    t = {"freq": idx.freq.float(), "max_act": idx.max_act.float(), "mean_act": idx.mean_act.float(),
         "hist": idx.hist.to(torch.int32), "top_win": idx.top_win.to(torch.int32),
         "top_pos": idx.top_pos.to(torch.int32), "top_acts": idx.top_acts.half(), "windows": idx.windows.to(torch.int32)}
    _atomic_write(folder / INDEX, lambda p: save_file({k: v.contiguous() for k, v in t.items()}, str(p)))
    text = json.dumps(idx.meta, indent=1, sort_keys=True)
    _atomic_write(folder / INDEX_META, lambda p: p.write_text(text))


def load_index(folder: str | os.PathLike) -> FeatureIndex | None:
    """The feature index saved in `folder`; None when there is none yet. ValueError (saying to
    train again) when its files are damaged."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / INDEX).is_file() or not (folder / INDEX_META).is_file():
        return None
    try:
        t = load_file(str(folder / INDEX))
        meta = json.loads((folder / INDEX_META).read_text())
        return FeatureIndex(t["freq"], t["max_act"], t["mean_act"], t["hist"].long(), t["top_win"].long(),
                            t["top_pos"].long(), t["top_acts"], t["windows"].long(), meta)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"the feature index in {folder} cannot be read ({e}); train the SAE again") from None
