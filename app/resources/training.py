"""The Train page's caches: the step timer's worker and the step costs it measured, the corpus
default, one metrics reader per run, the sample text of a saved checkpoint."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import streamlit as st

from app import catalog
from gpt.checkpoint import load
from trainers.metrics import MetricsTail

if TYPE_CHECKING:
    from trainers.config import TrainConfig
    from trainers.estimate import Estimate, StepCost
    from trainers.steptimer import StepTimer


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
    from trainers.machine import default_threads, resolve_device
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


def clear() -> None:
    pass  # step costs and samples stay valid: their keys name what they measured
