"""Recorded forwards and the analyses computed from them, per (model, stamp, prompt, edit): two
thread-safe LRUs (app.tracecache.TraceCache) shared by sessions, plus the Attribution page's own."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import streamlit as st
import torch

from app.inspection import Inspection, Loaded, edit_key
from app.resources.models import load_model
from app.tracecache import TraceCache, checkpoint_stamp, record_forward
from app.views import layers as vl
from app.views.prompt import PromptIds
from app.views.prompt import prompt_ids as _prompt_ids
from gpt import analysis, heads
from gpt.checkpoint import CheckpointError, load
from gpt.generate import greedy_continuation
from gpt.record import Recorder

if TYPE_CHECKING:
    from gpt import flow
    from gpt.edit import Edits
    from gpt.patching import PatchResult

TRACE_ENTRIES = 16
ANALYSIS_ENTRIES = 512  # head scores, losses and samples are small: (L, H) tensors, floats, 40 ids


# -- recorded forwards (app.tracecache.record_forward, kept in its TraceCache LRU) --------------------
@st.cache_resource
def _trace_cache() -> TraceCache:
    return TraceCache(maxsize=TRACE_ENTRIES)


@st.cache_resource
def _analysis_cache() -> TraceCache:
    return TraceCache(maxsize=ANALYSIS_ENTRIES)


def trace(loaded: Loaded, ids: tuple[int, ...], names: tuple[str, ...], edit: "Edits | None" = None) -> Recorder:
    """The Recorder of `loaded.model` run on `ids` under `edit`, recording only `names` (names or
    globs; an empty tuple means every site). Cached (LRU, 16 entries, shared by sessions) by
    (model, stamp, ids, names, edit key): treat it as read-only."""
    ids, names = tuple(int(i) for i in ids), tuple(names)
    key = (loaded.ref, loaded.stamp, ids, names, edit_key(edit))
    return _trace_cache().get(key, lambda: record_forward(loaded.model, ids, names or None, edit))


def prompt_ids(loaded: Loaded, text: str, drop_unknown: bool = False,
               names: Iterable[str] | None = None) -> PromptIds:
    """app.views.prompt.prompt_ids for this model: ids to run, or a message saying why not."""
    return _prompt_ids(loaded.tokenizer, loaded.config, text, drop_unknown=drop_unknown, names=names)


def inspect(loaded: Loaded, ids: tuple[int, ...], names: tuple[str, ...] | None, layer: object = 0,
            head: object = 0, edit: "Edits | None" = None) -> Inspection:
    """The Inspection of `ids` through `loaded` under `edit`, with the cached recording of `names`
    (None: no recording, rec is None; () records every site)."""
    rec = trace(loaded, ids, names, edit) if names is not None else None
    return Inspection.of(loaded, tuple(ids), rec, names or (), layer, head, edit)


# -- analyses -----------------------------------------------------------------------------------------
def _analysis(key: tuple, make: Callable[[], object]) -> object:
    return _analysis_cache().get(key, make)


def model_scores(loaded: Loaded) -> heads.HeadScores:
    """Every head's scores on the repeated random sequence (prompt-independent: once per checkpoint)."""
    return _analysis(("scores", loaded.ref, loaded.stamp), lambda: heads.head_scores(loaded.model))


def snapshot_scores(ref: str) -> heads.HeadScores:
    """head_scores of a checkpoint that is not being viewed (a run's snapshots on the Timeline). The
    model is loaded outside the model cache: scoring a run's many snapshots once must not evict
    the models being viewed."""
    return _analysis(("scores", ref, checkpoint_stamp(ref)), lambda: heads.head_scores(load(ref)[0]))


def model_views(loaded: Loaded) -> "vl.ModelViews":
    """The Layers page's prompt-independent part (embedding PCA, position similarity): once per
    checkpoint, shared by sessions (read-only)."""
    return _analysis(("model_views", loaded.ref, loaded.stamp), lambda: vl.model_views(loaded.model))


def prompt_loss(loaded: Loaded, ids: tuple[int, ...]) -> float | None:
    """The model's mean next-token loss on `ids` (None for one token)."""
    return _analysis(("loss", loaded.ref, loaded.stamp, tuple(ids)),
                     lambda: analysis.forward_loss(loaded.model, ids))


def prompt_loss_at(ref: str, ids: tuple[int, ...]) -> float | None:
    """prompt_loss of the checkpoint at `ref`; None when it cannot be loaded (a snapshot deleted
    while the page shows its run)."""
    try:
        return prompt_loss(load_model(ref), ids)
    except CheckpointError:
        return None


def training_example(loaded: Loaded, ids: tuple[int, ...], edit: "Edits | None" = None) -> analysis.TrainingExample:
    """The prompt as one training example under `edit`: forward(x, y) and its per-position losses
    (Walkthrough)."""
    return _analysis(("training", loaded.ref, loaded.stamp, tuple(ids), edit_key(edit)),
                     lambda: analysis.training_example(loaded.model, ids, edit=edit))


def greedy_sample(loaded: Loaded, ids: tuple[int, ...], n: int) -> tuple[int, ...]:
    """The `n` tokens greedy decoding appends to `ids` (gpt.generate.greedy_continuation)."""
    return _analysis(("sample", loaded.ref, loaded.stamp, tuple(ids), n),
                     lambda: tuple(greedy_continuation(loaded.model, ids, n)))


def patch_sweep(loaded: Loaded, source: Loaded | None, clean: tuple[int, ...], corrupt: tuple[int, ...],
                site: str, answers: tuple[int, int], direction: str = "denoise", metric: str = "logit_diff"
                ) -> "PatchResult":
    """gpt.patching.sweep of the metric named `metric` (gpt.patching.METRICS) on the (clean, corrupted)
    answers, source None: the model itself; keyed by both checkpoints' ref and stamp, the ids, site,
    the metric with the answers it reads, and the direction. Raises ValueError (bad input)."""
    from gpt import patching

    m = patching.metric_named(metric, *answers)
    src = (source.ref, source.stamp) if source is not None else None
    key = ("patch", loaded.ref, loaded.stamp, src, tuple(clean), tuple(corrupt), site, m.name, direction)
    return _analysis(key, lambda: patching.sweep(loaded.model, list(clean), list(corrupt), site, m,
                                                 source.model if source is not None else None, direction))


def patch_cell_logits(loaded: Loaded, source: Loaded | None, clean: tuple[int, ...], corrupt: tuple[int, ...],
                      site: str, cell: tuple[int, ...], direction: str = "denoise") -> torch.Tensor:
    """gpt.patching.patched_logits (T, V) of one clicked cell of patch_sweep, cached the same way."""
    from gpt import patching

    src = (source.ref, source.stamp) if source is not None else None
    key = ("patch_cell", loaded.ref, loaded.stamp, src, tuple(clean), tuple(corrupt), site, tuple(cell), direction)
    return _analysis(key, lambda: patching.patched_logits(loaded.model, list(clean), list(corrupt), site, cell,
                                                          source.model if source is not None else None, direction))



# -- attribution (the Attribution page: gpt.flow contributions, its own small LRU) ---------------------
FLOW_ENTRIES = 8  # a bundled-model entry at T=256 is 4 MB of shares; GPT-2 at T=160 about 60 MB


@st.cache_resource
def _flow_cache() -> TraceCache:
    return TraceCache(maxsize=FLOW_ENTRIES)


def attribution_flow(insp: Inspection) -> "flow.Contributions":
    """gpt.flow.contributions of the Inspection's prompt under its edit, from its recording (which
    must hold app.views.attribution.NAMES), cached by (model, stamp, ids, edit key); read-only."""
    from gpt import flow

    key = ("flow", insp.loaded.ref, insp.loaded.stamp, insp.ids, edit_key(insp.edit))
    return _flow_cache().get(key, lambda: flow.contributions(insp.model, insp.ids, insp.edit, rec=insp.rec))



# -- Compare: every head's scores on one side of the Compare page ------------------------------------
def compare_scores(insp: Inspection) -> dict[str, torch.Tensor]:
    """{score key: (L, H)} of one side of the Compare page: entropy, previous-token and first-token on
    its prompt under its edit (gpt.heads.prompt_head_scores of the recorded patterns, which insp.rec
    must hold), and induction on the repeated random sequence (model_scores: per checkpoint, of the
    unedited model). Cached by (model, stamp, ids, edit key); read-only."""
    def make() -> dict[str, torch.Tensor]:
        patterns = [insp.rec[f"blocks.{i}.attn.hook_pattern"][0] for i in range(insp.config.n_layer)]  # L x (H, T, T)
        return {**heads.prompt_head_scores(patterns), "induction": model_scores(insp.loaded).induction}

    return _analysis(("compare_scores", insp.loaded.ref, insp.loaded.stamp, insp.ids, edit_key(insp.edit)), make)



def clear() -> None:
    _trace_cache().clear()
    _trace_cache.clear()
    _analysis_cache().clear()
    _analysis_cache.clear()
    _flow_cache.clear()
