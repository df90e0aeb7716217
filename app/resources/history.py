"""The Timeline's caches and calls: the analysis job's results (ScoreHistory), a head's attention on
one example window, and the job's status, start and stop (trainers.analysis_runs)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st
import torch

from app.resources.models import load_model
from app.tracecache import TraceCache, record_forward

if TYPE_CHECKING:
    from gpt.score_history import ScoreHistory


# -- Timeline 2.0: the analysis job's results, a head's attention on one example window ---------------
TIMELINE_ENTRIES = 16  # a history is a few MB (its windows' ids); a pattern at T=256 is 256 KB


@st.cache_resource
def _timeline_cache() -> TraceCache:
    return TraceCache(maxsize=TIMELINE_ENTRIES)


def _analysis_stamp(run_dir: str) -> tuple:
    """(name, mtime_ns, size) of every result file in the run's analysis/ (not status.json, which a
    running job rewrites with each step): a new or rewritten snapshot file makes a new key."""
    import os

    from gpt.layout import analysis_dir

    try:
        with os.scandir(analysis_dir(run_dir)) as it:
            found = [(e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in it
                     if e.name.endswith(".json") and e.name != "status.json" and e.is_file()]
    except OSError:
        return ()
    return tuple(sorted(found))


def score_history(run_dir: str) -> "ScoreHistory | None":
    """gpt.score_history.read_history of the run folder: every head's scores at every analysed
    snapshot (None: no analysis yet), cached until a result file changes; read-only. Raises
    ValueError naming a malformed file (not cached: the next rerun reads again)."""
    from gpt.score_history import read_history

    stamp = _analysis_stamp(str(run_dir))
    if not stamp:
        return None
    return _timeline_cache().get(("history", str(run_dir), stamp), lambda: read_history(run_dir))


def head_pattern(ref: str, ids: tuple[int, ...], layer: int, head: int) -> torch.Tensor:
    """The attention pattern (T, T) of `layer`/`head` of the checkpoint at `ref` on the window `ids`
    (an analysis example), cached by (checkpoint, stamp, ids, layer, head); read-only. ValueError
    when an id is outside the model's vocabulary or the window is longer than its block."""
    loaded = load_model(ref)
    ids = tuple(int(i) for i in ids)
    cfg = loaded.config
    if not ids or min(ids) < 0 or max(ids) >= cfg.vocab_size or len(ids) > cfg.block_size:
        raise ValueError(f"this example window ({len(ids)} tokens) does not fit {loaded.label}: ids must be "
                         f"0..{cfg.vocab_size - 1} and at most {cfg.block_size} of them; run the analysis again")
    name = f"blocks.{int(layer)}.attn.hook_pattern"
    key = ("head_pattern", loaded.ref, loaded.stamp, ids, int(layer), int(head))
    return _timeline_cache().get(key, lambda: record_forward(loaded.model, ids, [name])[name][0, int(head)].float())



# -- the analysis job (issue 16: trainers.analysis_runs; its panel is app.analysis_panel) --------------
def _run_ref(run_dir: str) -> tuple[str, str]:
    from pathlib import Path

    return Path(run_dir).name, str(Path(run_dir).parent)


def analysis_status(run_dir: str) -> dict:
    """trainers.analysis_runs.analysis_status of the run folder at run_dir: state, done/total
    snapshots, message. Read afresh each call (the job rewrites it as it goes); never writes."""
    from trainers.analysis_runs import analysis_status as status

    return status(*_run_ref(run_dir))


def start_analysis(run_dir: str) -> dict:
    """Start (or resume) the run's analysis job, detached, on 1 thread (a core stays with the app);
    ValueError saying why when it cannot."""
    from trainers.analysis_runs import start_analysis as start

    return start(*_run_ref(run_dir), threads=1)


def stop_analysis(run_dir: str) -> dict:
    """Ask the run's analysis job to stop after its current chunk of windows."""
    from trainers.analysis_runs import stop_analysis as stop

    return stop(*_run_ref(run_dir))


def clear() -> None:
    _timeline_cache.clear()
