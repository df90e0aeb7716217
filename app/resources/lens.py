"""The Layers page's tuned lens: the fitted lens of the checkpoint a page shows (loaded once per file
version, checked against the model's fingerprint), the lens figures per prompt (app.views.lens),
and the fit job's status, start and stop (trainers.lens_runs; its panel is app.lens_panel)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.inspection import Loaded
from app.tracecache import TraceCache

if TYPE_CHECKING:
    from app.inspection import Inspection
    from app.views.lens import LensView
    from gpt.tuned_lens import TunedLens

LENS_ENTRIES = 16  # a lens is (L, C, C) floats: 0.26 MB for the bundled model, 28 MB for GPT-2 small


VIEW_ENTRIES = 32  # a view is three small figures (two 5 x 32 tables and a chart)


@st.cache_resource
def _lens_cache() -> TraceCache:
    return TraceCache(maxsize=LENS_ENTRIES)


@st.cache_resource
def _view_cache() -> TraceCache:
    return TraceCache(maxsize=VIEW_ENTRIES)


@dataclass(frozen=True)
class LensState:
    """What the page can show: `lens` when one fitted to exactly this checkpoint exists (read-only);
    checkpoint: the resolved checkpoint path (what a fit would be for); home: where lens/ lives;
    note: why there is no lens to show (another checkpoint's lens, a damaged file), else "";
    corpus: the corpus a fit would use by default (None: the user must pick one)."""

    lens: "TunedLens | None"
    checkpoint: str
    home: str
    note: str
    corpus: str | None


def _file_stamp(folder: Path) -> tuple:
    out = []
    for name in ("tuned_lens.json", "tuned_lens.safetensors"):
        try:
            s = os.stat(folder / name)
            out.append((name, s.st_mtime_ns, s.st_size))
        except OSError:
            pass
    return tuple(out)


def _fingerprint(loaded: Loaded) -> str:
    from gpt.tuned_lens import model_fingerprint

    return _lens_cache().get(("fingerprint", loaded.ref, loaded.stamp), lambda: model_fingerprint(loaded.model))


def lens_state(loaded: Loaded) -> LensState:
    """The tuned lens of `loaded` (cached until its files change), or why there is none."""
    from gpt.checkpoint import resolve_checkpoint
    from gpt.tuned_lens import LensError, fits, lens_dir, lens_home, load_lens
    from trainers.fit_lens import corpus_of

    from gpt.checkpoint import CheckpointError

    try:
        ckpt = resolve_checkpoint(loaded.ref)
        home = lens_home(ckpt)
    except (CheckpointError, OSError) as e:
        return LensState(None, "", "", f"No tuned lens for this model: {e}", None)
    try:
        corpus = corpus_of(home, None)
    except ValueError:
        corpus = None
    folder = lens_dir(home)
    stamp = _file_stamp(folder)
    if not stamp:
        return LensState(None, str(ckpt), str(home), "", corpus)
    try:
        lens = _lens_cache().get(("lens", str(folder), stamp), lambda: load_lens(folder))
    except (LensError, OSError) as e:
        return LensState(None, str(ckpt), str(home), f"The saved tuned lens cannot be used: {e}", corpus)
    if lens is None:
        return LensState(None, str(ckpt), str(home), "", corpus)
    if not fits(lens, loaded.model, _fingerprint(loaded)):
        return LensState(None, str(ckpt), str(home),
                         f"The tuned lens in {folder} was fitted to another checkpoint "
                         f"({lens.meta.get('checkpoint', '?')}); a fit for this one replaces it.", corpus)
    return LensState(lens, str(ckpt), str(home), "", corpus)


def lens_view(insp: "Inspection", lens: "TunedLens | None", positions: list[int], width_px: float) -> "LensView":
    """app.views.lens.build, cached per (prompt's Inspection, lens file, table window, width):
    a rerun that changes nothing else (a radio, the fit panel's polling) costs nothing here."""
    from app.views import lens as vlens

    key = ("view", insp.key, (lens.meta.get("weights_sha256"), id(lens)) if lens is not None else (),
           tuple(positions), float(width_px))
    return _view_cache().get(key, lambda: vlens.build(insp, lens, positions, width_px))


def lens_status(checkpoint: str) -> dict[str, Any]:
    """trainers.lens_runs.lens_status: read afresh each call (the fit rewrites it); never writes."""
    from trainers.lens_runs import lens_status as status

    return status(checkpoint)


def start_lens(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Start (or resume) the fit, detached, on 1 thread (a core stays with the app); ValueError
    saying why when it cannot."""
    from trainers.lens_runs import start_lens as start

    return start(checkpoint, data=data, threads=1)


def stop_lens(checkpoint: str) -> dict[str, Any]:
    """Ask the fit to stop after its current step (it saves its state, to resume later)."""
    from trainers.lens_runs import stop_lens as stop

    return stop(checkpoint)


def fit_corpora() -> list[str]:
    """The corpora a fit can read offline here (python-docs always; Tiny Shakespeare where cached)."""
    from trainers.data import CORPORA, default_data

    return [c for c in CORPORA if not c.startswith("shakespeare") or default_data() == "shakespeare"]


def clear() -> None:
    _lens_cache.clear()
    _view_cache.clear()
