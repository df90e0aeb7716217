"""The Generate page's steering: vectors made from the panel's choices, alpha sweeps, and where this
model's saved vectors live (gpt/steering.py, gpt/steering_store.py).

Vectors and sweeps are kept in one thread-safe LRU shared by sessions, keyed by the checkpoint
(ref and stamp) and plain data (the source spec; the vector's digest; the edit's key), so a
rewritten checkpoint or another intervention is a new entry. Errors (a ValueError saying what to
do) are never cached.

Where vectors are saved (`vector_home`): a run's own folder (<run>/steering/) when the model is a
checkpoint of a run whose folder is writable and is not a bundled model (the bundled folders are
committed to the repository); otherwise the app's data folder, <cache>/models/<fingerprint>/steering/
(<cache> is $NANOLENS_CACHE, else ~/.cache/nanolens), one folder per model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import streamlit as st

from app import catalog
from app.inspection import Loaded, edit_key
from app.tracecache import TraceCache
from app.views import steering as vs
from gpt import steering, steering_store
from gpt.checkpoint import run_of
from gpt.interventions import digest

if TYPE_CHECKING:
    from gpt.edit import Edits

STEERING_ENTRIES = 64  # a vector is C floats, a sweep a few floats and 5 x 40 ids


@st.cache_resource
def _steering_cache() -> TraceCache:
    return TraceCache(maxsize=STEERING_ENTRIES)


def fingerprint(loaded: Loaded) -> str:
    """gpt.steering.fingerprint of the model, cached per checkpoint."""
    return _steering_cache().get(("fp", loaded.ref, loaded.stamp), lambda: steering.fingerprint(loaded.model))


def make_vector(loaded: Loaded, spec: tuple) -> steering.SteeringVector:
    """The SteeringVector a source spec describes (plain data, the panel's choices):
    ("contrast", first text, second text, layer, policy)  prompts one per line;
    ("token", text)                                        exactly one token of this model;
    ("head", ids, layer, head, pos)                        the prompt's ids;
    ("sae", folder, feature)                               an SAE feature's decoder direction;
    ("saved", name)                                        from vector_home(loaded).
    Cached by (checkpoint, spec; a saved file's mtime). ValueError saying what to do."""
    kind = spec[0]
    tok, model = loaded.tokenizer, loaded.model
    if kind == "contrast":
        _, a, b, layer, policy = spec
        make = lambda: steering.contrast(model, vs.prompt_lines(tok, a, "first"),  # noqa: E731
                                         vs.prompt_lines(tok, b, "second"), int(layer), policy)
    elif kind == "token":
        make = lambda: steering.token_direction(model, vs.token_id(tok, spec[1]),  # noqa: E731
                                                label=repr(tok.token_str(vs.token_id(tok, spec[1]))))
    elif kind == "head":
        _, ids, layer, head, pos = spec
        label = f"position {pos} ({tok.token_str(int(ids[pos]))!r})" if 0 <= pos < len(ids) else None
        make = lambda: steering.head_output(model, list(ids), int(layer), int(head), int(pos), label)  # noqa: E731
    elif kind == "sae":
        from app.resources.features import sae as load_sae
        from gpt.sae import feature_direction

        _, folder, feature = spec
        s = load_sae(folder, loaded)  # SAEError (a ValueError) when it does not fit this model
        make = lambda: steering.from_vector(  # noqa: E731
            model, feature_direction(s, int(feature)), s.layer, s.hook.split(".hook_", 1)[1],
            f"SAE feature {int(feature)} of {s.hook} (its decoder direction, unit norm)")
    elif kind == "saved":
        home = vector_home(loaded)[0]
        f = steering_store.vector_dir(home) / f"{steering_store.check_name(spec[1])}.safetensors"
        spec = spec + (f.stat().st_mtime_ns if f.is_file() else 0,)
        make = lambda: steering_store.load_vector(home, spec[1], model)  # noqa: E731
    else:
        raise ValueError(f"unknown steering source {kind!r}")
    return _steering_cache().get(("vector", loaded.ref, loaded.stamp, spec), make)


def sweep(loaded: Loaded, ids: Sequence[int], sv: steering.SteeringVector, layer: int, site: str,
          alphas: Sequence[float], token: int, base: "Edits | None" = None) -> list[steering.SweepRow]:
    """gpt.steering.alpha_sweep (40 greedy tokens per alpha) of this model, cached."""
    ids, alphas = tuple(int(i) for i in ids), tuple(float(a) for a in alphas)
    key = ("sweep", loaded.ref, loaded.stamp, ids, digest(sv.vector), int(layer), site, alphas, int(token),
           edit_key(base))
    return _steering_cache().get(key, lambda: steering.alpha_sweep(
        loaded.model, ids, sv, alphas, int(token), int(layer), site, base=base))


def _bundled(path: Path) -> bool:
    try:
        return any(path.resolve() == p.resolve() for p in catalog.bundled_paths())
    except OSError:
        return False


def vector_home(loaded: Loaded) -> tuple[Path, str]:
    """(folder whose steering/ holds this model's vectors, a few words saying which) (module docstring)."""
    run = run_of(loaded.ref)
    if run is not None and not _bundled(run) and os.access(run, os.W_OK):
        return run, f"the run folder {run}"
    from trainers.data import cache_dir

    home = cache_dir() / "models" / fingerprint(loaded)
    why = "a bundled model's folder is part of the repository" if run is not None and _bundled(run) \
        else "the model has no writable run folder"
    return home, f"the app's data folder {home} ({why})"


def saved_vectors(loaded: Loaded) -> list[str]:
    """Names of the vectors saved for this model (read afresh each call)."""
    return steering_store.list_vectors(vector_home(loaded)[0])


def save_vector(loaded: Loaded, sv: steering.SteeringVector, name: str) -> Path:
    """Save `sv` as `name` in vector_home(loaded); returns the .safetensors path. ValueError for a bad name."""
    return steering_store.save_vector(sv, vector_home(loaded)[0], name)


def clear() -> None:
    _steering_cache.clear()
