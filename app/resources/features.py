"""The Features page's caches and calls: the current model's SAEs (gpt.sae), their feature indexes
(gpt.sae_index), the latents on the prompt, what a feature's decoder direction does to the logits,
and the SAE training job (trainers.sae_runs): status, start, stop, metrics.

An SAE is keyed by its folder and the mtime of its files, so a retrained SAE is never served stale;
cached objects are shared by every session and never changed (SAEs are in eval mode, no grad).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st
import torch

from app.tracecache import TraceCache

if TYPE_CHECKING:
    from app.inspection import Loaded
    from gpt.sae import SAE
    from gpt.sae_index import FeatureIndex

ENTRIES = 8  # an SAE of the bundled model is 0.5 MB, its index 1.6 MB


@st.cache_resource
def _cache() -> TraceCache:
    return TraceCache(maxsize=ENTRIES)


def run_dir_of(loaded: "Loaded") -> Path | None:
    """The run folder of the current model (SAEs live in <run>/sae/), or None (a lone checkpoint)."""
    from gpt.layout import run_of

    return run_of(loaded.ref)


def _stamp(folder: str, *names: str) -> tuple:
    out = []
    for n in names:
        try:
            s = os.stat(Path(folder) / n)
            out.append((n, s.st_mtime_ns, s.st_size))
        except OSError:
            out.append((n, None, None))
    return tuple(out)


def sae_choices(loaded: "Loaded") -> dict[str, str]:
    """{label: SAE folder} of the current model's run, only those that fit its width and layers
    (the label says the hook, the width and k)."""
    from gpt.sae import SAEError, read_meta
    from gpt.sae_index import list_saes, sae_path

    run = run_dir_of(loaded)
    if run is None:
        return {}
    out = {}
    for name in list_saes(run):
        folder = sae_path(run, name)
        try:
            meta = read_meta(folder)
            cfg = meta["config"]
            if cfg["d_in"] != loaded.config.n_embd:
                continue
        except (SAEError, KeyError, TypeError):
            continue
        label = f"{name} · {cfg['n_latents']} features · {cfg.get('kind', 'topk')} k={cfg.get('k')}"
        out[label] = str(folder)
    return out


def sae(folder: str, loaded: "Loaded") -> "SAE":
    """The SAE in `folder`, checked against the current model (SAEError saying why when it does not
    fit), cached until its files change."""
    from gpt.sae import load_sae

    s = _cache().get(("sae", folder, _stamp(folder, "sae.json", "sae.safetensors")), lambda: load_sae(folder))
    s.check_model(loaded.config)
    return s


def feature_index(folder: str) -> "FeatureIndex | None":
    """The SAE's feature index (None until its training finished), cached until it changes."""
    from gpt.sae_index import INDEX, INDEX_META, load_index

    return _cache().get(("index", folder, _stamp(folder, INDEX, INDEX_META)), lambda: load_index(folder))


def prompt_latents(loaded: "Loaded", folder: str, ids: tuple[int, ...], edit: Any = None) -> torch.Tensor:
    """The SAE's latents (T, n) on the prompt, read from the (cached) trace at its hook under the
    session's edit."""
    from app.resources.traces import trace

    s = sae(folder, loaded)
    rec = trace(loaded, ids, [s.hook], edit)
    with torch.no_grad():
        return s.encode(rec[s.hook][0].float())  # (T, n)


def feature_logits(loaded: "Loaded", folder: str, feature: int) -> torch.Tensor:
    """W_U · (ln_f.weight ⊙ W_dec[f]) (vocab,): how the feature's decoder direction moves each
    token's logit, through the final LayerNorm's scale (its centring and norm are left out, as
    in the usual "logit weights" of a feature)."""
    s = sae(folder, loaded)
    m = loaded.model
    with torch.no_grad():
        v = s.W_dec[int(feature)].float() * m.transformer.ln_f.weight.detach().float().cpu()
        return m.lm_head.weight.detach().float().cpu() @ v  # (vocab,)


# -- the training job (trainers.sae_runs) ------------------------------------------------------------
def sae_status(run_dir: str, name: str) -> dict:
    """trainers.sae_runs.sae_status: state, step/total, message. Read afresh every call."""
    from trainers.sae_runs import sae_status as status

    return status(run_dir, name)


def start_sae(run_dir: str, hook: str, **settings: Any) -> dict:
    """Start (or resume) an SAE job detached, on 1 thread (a core stays with the app)."""
    from trainers.sae_runs import start_sae as start

    return start(run_dir, hook, threads=1, **settings)


def stop_sae(run_dir: str, name: str) -> dict:
    """Ask the SAE job to stop after its step."""
    from trainers.sae_runs import stop_sae as stop

    return stop(run_dir, name)


def sae_metrics(folder: str) -> list[dict]:
    """The job's metrics.jsonl rows (a half-written last line skipped); small: one row per 10 steps."""
    from trainers.runfolder import read_metrics

    return read_metrics(folder)


def clear() -> None:
    _cache.clear()
