"""The one owner of the app's caches: models, recorded forwards, and every analysis a page shows.

Pages never call gpt.checkpoint.load, a forward pass or an analysis themselves: they ask here.
Factories stay tiny and the logic lives in imported modules (gpt/, app.catalog), because editing a
decorated function's source makes a second cache entry. Cached objects are shared by all sessions,
so they are never mutated after creation (models are in eval mode and only run under no_grad) and
the trace cache has its own lock. Every key that depends on a checkpoint includes its stamp (path
and mtime), so a rewritten checkpoint is never served stale; every trace key includes the edit.
The pieces that are not caches (the LRU, the recorded forward, the stamp) live in app.tracecache.

  load_model(ref) -> Loaded                 CheckpointError (a clear message) when it cannot load
  current_model() / require_model()         the model of session_state["model_ref"]
  show_no_model()                           the "No model yet" guidance
  trace(loaded, ids, names, edit) -> Recorder     LRU (16) of recorded forwards
  inspect(loaded, ids, names, layer, head, edit) -> Inspection   (components.inspection's core)
  prompt_ids(loaded, text, ...) -> PromptIds      the prompt checks (app.views.prompt)
  model_scores(loaded), snapshot_scores(ref)      gpt.heads.head_scores per checkpoint
  model_views(loaded)                       embedding PCA and position similarity (per model)
  prompt_loss(loaded, ids), prompt_loss_at(ref, ids), greedy_sample(loaded, ids, n),
  training_example(loaded, ids)             per checkpoint and prompt
  train_estimate(cfg), train_data_default(), metrics_tail(run), run_sample(ckpt, iter)   (Train page)
  score_history(run), head_pattern(ref, ids, layer, head)   the analysis job's results (Timeline)
  clear_caches()                            (tests)
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Iterable

import streamlit as st
import torch

from app import catalog, state
from app.inspection import Inspection, Loaded, edit_key
from app.tracecache import TraceCache, checkpoint_stamp, record_forward
from app.views import layers as vl
from app.views.prompt import PromptIds
from app.views.prompt import prompt_ids as _prompt_ids
from gpt import analysis, heads
from gpt.checkpoint import CheckpointError, load
from gpt.generate import greedy_continuation
from gpt.record import Recorder
from trainers.metrics import MetricsTail

if TYPE_CHECKING:
    from gpt.edit import Edits
    from gpt.score_history import ScoreHistory
    from trainers.config import TrainConfig
    from trainers.estimate import Estimate, StepCost
    from trainers.steptimer import StepTimer

APP_DIR = catalog.REPO / "app"
MODEL_ERROR = "model_error"  # session_state: why the chosen model could not be loaded
TRACE_ENTRIES = 16
ANALYSIS_ENTRIES = 512  # head scores, losses and samples are small: (L, H) tensors, floats, 40 ids
NO_MODEL = "No model yet: train one or load one."


# -- models (keyed by app.tracecache.checkpoint_stamp) -------------------------------------------------
def _make_loaded(ref: str, stamp: str) -> Loaded:
    model, tok, meta = load(ref)
    return Loaded(model=model, tokenizer=tok, meta=meta, ref=ref, label=catalog.describe(ref),
                  config=model.config, stamp=stamp)


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _load_cached(ref: str, stamp: str) -> Loaded:
    return _make_loaded(ref, stamp)


def load_model(ref: str) -> Loaded:
    """The model at `ref` (anything gpt.checkpoint.load accepts), cached by (ref, checkpoint mtime).
    Raises CheckpointError naming the file and the problem; errors are not cached."""
    ref = str(ref)
    return _load_cached(ref, checkpoint_stamp(ref))


def current_model() -> Loaded | None:
    """The model chosen in this session (session_state["model_ref"]); when none is chosen yet, the
    default (catalog.default_ref). None when there is none or it failed to load; the reason is
    kept in session_state["model_error"] for show_no_model. A still-untouched default prompt is
    switched to the one that suits the model's tokenizer."""
    ss = st.session_state
    if state.MODEL_REF not in ss:
        state.init_state()
    if ss.get(state.MODEL_REF) is None:
        ss[state.MODEL_REF] = catalog.default_ref()
    ref = ss.get(state.MODEL_REF)
    if ref is None:
        return None
    try:
        loaded = load_model(ref)
    except CheckpointError as e:
        ss[MODEL_ERROR] = str(e)
        return None
    ss.pop(MODEL_ERROR, None)
    want = state.default_prompt(loaded.tokenizer.kind)
    if ss.get(state.PROMPT) in state.DEFAULT_PROMPTS and ss.get(state.PROMPT) != want:
        try:
            ss[state.PROMPT] = want
        except st.errors.StreamlitAPIException:  # the prompt widget is already on the page
            pass
    return loaded


def show_no_model() -> None:
    """The guidance shown when there is no model: why (if a load failed) and where to get one."""
    err = st.session_state.get(MODEL_ERROR)
    if err:
        st.error(f"The chosen model could not be loaded: {err}")
    st.info(NO_MODEL)
    for page, label, icon in (
            ("screens/train.py", "Train a model (the tiny preset takes under a minute)", "model_training"),
            ("screens/model.py", "Load a checkpoint: a run, a path or an upload", "folder_open")):
        if (APP_DIR / page).is_file():  # st.page_link refuses pages that are not registered
            st.page_link(page, label=label, icon=f":material/{icon}:")
    st.caption(f"The bundled model is looked for in `checkpoints/{catalog.BUNDLED_NAME}` "
               "(or set NANOLENS_BUNDLED to a checkpoint path).")


def require_model() -> Loaded:
    """The current model; if there is none, show the guidance and stop this page's script."""
    loaded = current_model()
    if loaded is None:
        show_no_model()
        st.stop()
    return loaded


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


# -- training page ------------------------------------------------------------------------------------
@functools.cache
def _step_timer() -> "StepTimer":
    """The one worker process that times training steps (trainers.steptimer), shared by sessions
    (it serves one request at a time); it starts on the first request. Not a cache_resource:
    clearing the caches must not cost a new worker's start (seconds of Python and torch), and
    what it measures is cached in _step_cost."""
    from trainers.steptimer import StepTimer

    return StepTimer()


def close_step_timer() -> None:
    """End the step timer's worker if one was started (tests: nothing may outlive their session)."""
    if _step_timer.cache_info().currsize:
        _step_timer().close()


@st.cache_resource(max_entries=64, show_spinner="Timing a few training steps of this model on this machine…")
def _step_cost(model: tuple, batch_size: int, threads: int, device: str, cpu_shards: bool) -> "StepCost":
    from gpt.config import GPTConfig

    return _step_timer().measure(GPTConfig.from_dict(dict(model)), batch_size, threads, device, cpu_shards)


def train_estimate(cfg: "TrainConfig") -> "tuple[Estimate, StepCost | None, str | None]":
    """(trainers.estimate.estimate_run of `cfg`, the StepCost it used, None) with the step timed in
    the step timer as the run will take it (its thread count, device and CPU shard setting), once
    per (model shape with its guessed vocabulary, batch, threads, device, shards) and process: the
    page pays a few seconds once per distinct model. (estimate without time, None, why) when the
    timing failed; that is not cached, so the next rerun tries again."""
    from trainers.config import default_threads, resolve_device
    from trainers.estimate import estimate_run, run_model_config

    shape = tuple(sorted(run_model_config(cfg).to_dict().items()))
    try:
        cost = _step_cost(shape, cfg.batch_size, cfg.threads or default_threads(), resolve_device(cfg.device),
                          cfg.cpu_shards)
    except RuntimeError as e:
        return estimate_run(cfg, None), None, str(e)
    return estimate_run(cfg, cost), cost, None


def train_data_default() -> str:
    """The Train form's first corpus (app.views.training.default_data): the one the bundled model
    was trained on (its run's config.json), when it is there without the network."""
    from app.views.training import default_data as choose
    from gpt.checkpoint import run_of
    from trainers.data import default_data
    from trainers.runs import read_json

    run = run_of(catalog.bundled_path())
    data = (read_json(run / "config.json") or {}).get("data") if run is not None else None
    name = data.get("name") if isinstance(data, dict) else None
    return choose(name if isinstance(name, str) else None, default_data())


@st.cache_resource(max_entries=16)
def metrics_tail(run_dir: str) -> MetricsTail:
    """One incremental reader of <run_dir>/metrics.jsonl per run, shared by sessions (it locks)."""
    return MetricsTail(run_dir)


@st.cache_data(max_entries=64, show_spinner=False)
def run_sample(ckpt: str, it: int) -> str:
    """app.views.training.sample_text of the checkpoint folder `ckpt` saved at iteration `it` (the
    key: a new eval writes a new iter, so the sample refreshes then and only then)."""
    from app.views.training import sample_text

    model, tok, _ = load(ckpt)
    return sample_text(model, tok)


def clear_caches() -> None:
    """Drop every cached model, trace and analysis (tests; or after deleting runs)."""
    _load_cached.clear()
    _trace_cache().clear()
    _trace_cache.clear()
    _analysis_cache().clear()
    _analysis_cache.clear()
    _flow_cache.clear()
    _timeline_cache.clear()


__all__ = ["Loaded", "load_model", "current_model", "require_model", "show_no_model", "trace",
           "prompt_ids", "PromptIds", "clear_caches", "checkpoint_stamp", "NO_MODEL", "model_scores",
           "snapshot_scores", "model_views", "prompt_loss", "greedy_sample"]


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
