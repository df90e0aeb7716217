"""What a training run reports in its run folder, besides checkpoints: config.json and the first
status.json, each status.json update (the last one, a failure, even on a full disk), the ETA it
carries, and the state and message a run ends with when something is raised.

Only rank 0 calls these (the Trainer sees to it). The app reads these files; their fields are
checked on reading by trainers/runfolder.py.
"""
from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from gpt.config import GPTConfig
from trainers import runs
from trainers.config import RUN_CONFIG_FILE, TrainConfig
from trainers.data import Corpus
from trainers.estimate import remaining_seconds
from trainers.runfolder import RunWriteError, disk_full, truncate_metrics, write_failure, write_json_in_place

ETA_WARMUP = 2  # the first steps of a process are slow (allocations, caches): the ETA leaves them out


def write_start(run_dir: Path, cfg: TrainConfig, run_cfg: dict[str, Any] | None, model_cfg: GPTConfig,
                corpus: Corpus, device: str, world_size: int, start_iter: int) -> dict[str, Any]:
    """Write config.json and make sure metrics.jsonl exists; return the status a run starts with
    ("running" at start_iter), for the caller to write. run_cfg None: a new run, recorded whole
    (keeping the created_at runs.start wrote). Else a resumed run's recorded config.json: it may go
    further, with other threads, and its metrics.jsonl is cut back to start_iter."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_cfg is None:  # a new run: runs.start may have written {"train", "created_at"}
        started = runs.read_json(run_dir / RUN_CONFIG_FILE) or {}
        run_cfg = {"model": model_cfg.to_dict(), "train": cfg.to_dict(),
                   "data": corpus.source, "tokenizer": corpus.tokenizer.to_dict(),
                   "world_size": world_size, "device": device,
                   "created_at": started.get("created_at") or runs._now()}
    else:  # a resumed run may go further, with other threads; the rest stays as recorded
        run_cfg["train"].update(max_iters=cfg.max_iters, threads=cfg.threads)
        truncate_metrics(run_dir, start_iter)
    runs.write_json_atomic(run_dir / RUN_CONFIG_FILE, run_cfg)
    prev = runs.read_json(run_dir / "status.json") or {}
    status = {"state": "running", "pid": os.getpid(), "iter": start_iter,
              "max_iters": cfg.max_iters, "message": "training",
              "device": device, "threads": torch.get_num_threads(),
              "world_size": world_size, "best_val_loss": prev.get("best_val_loss"),
              "val_loss": prev.get("val_loss"), "eta_s": None, "tokens_per_s": None}
    (run_dir / "metrics.jsonl").touch()
    return status


def write_status(run_dir: Path, status: dict[str, Any], state: str | None, last: bool,
                 fields: dict[str, Any]) -> dict[str, Any]:
    """Update `status` (in place) with `state` (None: as it is), `fields`, this process's pid and
    the time, write it to status.json and return it. An empty `status` (a failure before setup
    finished) starts from what runs.start wrote. The `last` one (a failure) is written even on a
    full disk, in the file's own blocks; should that fail too, the lock is free once this process
    ends, and readers show the run as interrupted rather than running."""
    if not status:  # e.g. a failure before setup finished: keep what runs.start wrote
        status = runs.read_json(run_dir / "status.json") or {}
    if state is not None:
        status["state"] = state
    status.update(fields, pid=os.getpid(), updated_at=runs._now(), updated_ts=time.time())
    try:
        runs.write_json_atomic(run_dir / "status.json", status)
    except OSError:
        if not last:
            raise
        with suppress(OSError):
            write_json_in_place(run_dir / "status.json", status)
    return status


def eta_s(it: int, cfg: TrainConfig, steps_s: float, steps_n: int, eval_round_s: float | None,
          snapshot_s: float) -> float | None:
    """Seconds left at iteration `it`, from this run's own measured step time (steps_n steps in
    steps_s seconds: None until ETA_WARMUP steps are behind it), its last evaluation and snapshot
    times (eval_round_s None, as for a resumed run that has not evaluated yet: an eval batch counts
    as a third of a step)."""
    if not steps_n:
        return None
    step_s = steps_s / steps_n
    eval_s = eval_round_s
    if eval_s is None:
        eval_s = 2 * cfg.eval_iters * step_s / 3
    return round(remaining_seconds(it, cfg.max_iters, cfg.eval_interval, step_s, eval_s,
                                   snapshot_s if cfg.snapshots else 0.0), 1)


def ending(e: BaseException, run_dir: Path) -> tuple[str, str, RunWriteError | None]:
    """(state, message, error) for a run that `e` ended: "interrupted" on Ctrl-C, else "failed"
    with what went wrong (at most 2000 characters). error is the RunWriteError that says which
    write failed: `e` itself when it is one, a new one when `e` is an OSError of a full disk (in
    metrics.jsonl or status.json), else None."""
    err = e if isinstance(e, RunWriteError) else None
    if isinstance(e, OSError) and err is None and disk_full(e, run_dir):
        err = write_failure(e, "the run's files", run_dir)  # metrics.jsonl or status.json
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", "interrupted (Ctrl-C); resume to continue from latest/", err
    return "failed", (str(err) if err else f"{type(e).__name__}: {e}")[:2000], err


def diverged(it_bad: int, loss: float, run_dir: Path) -> str:
    """The message of a run whose loss went non-finite at it_bad: where its last good checkpoint
    is, and what to try."""
    good = runs.latest_iter(run_dir)
    return (f"diverged at iter {it_bad} (loss {loss:.4g}); the last good checkpoint "
            f"is latest/ at iter {'?' if good is None else good}; try a lower --lr")
