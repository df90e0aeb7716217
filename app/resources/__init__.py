"""The one owner of the app's caches: models, recorded forwards, and every analysis a page shows.

Pages never call gpt.checkpoint.load, a forward pass or an analysis themselves: they ask here.
Factories stay tiny and the logic lives in imported modules (gpt/, app.catalog), because editing a
decorated function's source makes a second cache entry. Cached objects are shared by all sessions,
so they are never mutated after creation (models are in eval mode and only run under no_grad) and
the trace cache has its own lock. Every key that depends on a checkpoint includes its stamp (path
and mtime), so a rewritten checkpoint is never served stale; every trace key includes the edit.
The pieces that are not caches (the LRU, the recorded forward, the stamp) live in app.tracecache.
One module per kind of cache (models, traces, training, history); import from the package.

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
  lens_state(loaded), lens_status/start_lens/stop_lens(checkpoint)   the tuned lens and its fit (Layers)
  sae_choices(loaded), sae(folder, loaded), feature_index(folder), prompt_latents(...), feature_logits(...),
  sae_status / start_sae / stop_sae / sae_metrics   the Features page: SAEs and their training job
  model_choice(), allow_cpu_half()          the session's (device, dtype) and whether bf16 is offered on the CPU
  clear_caches()                            (tests)
"""
from __future__ import annotations

from app.inspection import Loaded
from app.resources import features, history, models, traces, training
from app.resources.features import (feature_index, feature_logits, prompt_latents, run_dir_of, sae,
                                    sae_choices, sae_metrics, sae_status, start_sae, stop_sae)
from app.resources import steering
from app.resources import attention
from app.resources import lens
from app.resources.lens import (LensState, fit_corpora, lens_state, lens_status, lens_view, start_lens,
                                stop_lens)
from app.resources.attention import attention_grid, attention_trace
from app.resources.history import (analysis_status, head_pattern, score_history, start_analysis,
                                   stop_analysis)
from app.resources.models import allow_cpu_half, model_choice  # the session's device and dtype (Model page)
from app.resources.models import (APP_DIR, MODEL_ERROR, NO_MODEL, current_model, load_model,
                                  require_model, show_no_model)
from app.resources.traces import (ANALYSIS_ENTRIES, TRACE_ENTRIES, attribution_flow, compare_scores,
                                  greedy_sample, inspect, model_scores, model_views, patch_cell_logits,
                                  patch_sweep, prompt_ids, prompt_loss, prompt_loss_at, snapshot_scores,
                                  trace, training_example)
from app.resources.training import (close_step_timer, metrics_tail, run_sample, train_data_default,
                                    train_estimate)
from app.tracecache import TraceCache, checkpoint_stamp, record_forward
from app.views.prompt import PromptIds

_PARTS = (models, traces, training, history, features)
_PARTS += (steering,)  # the Generate page's steering vectors and sweeps (app.resources.steering)
_PARTS += (attention,)  # the Attention page's lazy per-layer attention and grid (app.resources.attention)
_PARTS += (lens,)  # the Layers page's tuned lens and its fit job (app.resources.lens)


def clear_caches() -> None:
    """Drop every cached model, trace and analysis (tests; or after deleting runs)."""
    for part in _PARTS:
        part.clear()


__all__ = ["Loaded", "load_model", "current_model", "require_model", "show_no_model", "trace",
           "prompt_ids", "PromptIds", "clear_caches", "checkpoint_stamp", "NO_MODEL", "model_scores",
           "snapshot_scores", "model_views", "prompt_loss", "greedy_sample"]
