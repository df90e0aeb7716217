"""The analysis job: every head's scores over held-out validation windows, for every snapshot of a
run, written to <run>/analysis/ (gpt.score_history describes the files; gpt.dataset_scores the
scores).

    python -m trainers.analyze --run NAME [--windows N] [--root DIR] [--threads N] [--fresh]

The windows are N windows of block_size tokens from the validation split (the last 10%) of the
run's own corpus (config.json's train.data, through trainers.data with the run's tokenizer), at
offsets drawn with a fixed seed, and are saved in analysis/windows.json; a resumed job reads them
from there and needs no corpus. Nothing is downloaded: a corpus that cannot be had offline stops
the job with a message saying so.

One process writes analysis/: it holds an exclusive flock on analysis/.lock (trainers.runlock, its
own file, so it never conflicts with the run's trainer). Each snapshot's file is written atomically
and a snapshot whose file exists (and reads back) is done, so a job killed at any point resumes
where it was. SIGTERM, SIGINT or an analysis/STOP file stop it after the current chunk of
windows; progress (done/total snapshots) is in analysis/status.json and, in a terminal, a tqdm bar.
trainers/analysis_runs.py starts and stops it detached, for the app.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gpt import score_history as sh
from gpt.checkpoint import CheckpointError, list_snapshots, load
from gpt.dataset_scores import RANDOM_SEQUENCES, SCORE_NAMES, dataset_scores
from gpt.layout import analysis_dir
from trainers.config import RUN_CONFIG_FILE
from trainers.jobcli import (StopRequested, check_stop, clear_stop, failure_recorded, job_lock, job_parser,
                             last_status, parse_job_args, run_job, write_status)
from trainers.runfolder import get_dict, load_json, now

DEFAULT_WINDOWS, DEFAULT_SEED, DEFAULT_TOP_K = 256, 0, 8
STATUS_EVERY_S = 0.5  # status.json within a snapshot at most this often (a chunk takes ~0.1 s)


class AnalysisError(ValueError):
    """The job cannot run; the message says why and what to do."""


# -- the windows -----------------------------------------------------------------------------------
def validation_windows(cfg: dict[str, Any], tok: Any, n: int, T: int, seed: int,
                       log: Callable[[str], None]) -> tuple[torch.Tensor, str, str | None]:
    """(windows (n, T) int64, the corpus name, a note when this corpus differs from the one the run
    trained on): n windows of T tokens of the run's validation split at seeded random offsets,
    in text order. AnalysisError when the corpus cannot be had offline or read."""
    from trainers.data import CORPORA, SHARED_SHAKESPEARE, Corpus, cache_dir, default_data

    data = get_dict(cfg, "train").get("data")
    if not isinstance(data, str) or not data:
        raise AnalysisError("config.json does not say which corpus the run trained on (train.data), so "
                            "there are no validation windows to score")
    if data in CORPORA and data.startswith("shakespeare") and default_data() != "shakespeare":
        raise AnalysisError(
            f"the run trained on {data!r}, which needs Tiny Shakespeare, and it cannot be had offline here: "
            f"it is neither in {cache_dir() / 'tinyshakespeare.txt'} nor in {SHARED_SHAKESPEARE}. The analysis "
            "downloads nothing; put a copy in one of them and run it again")
    try:
        corpus = Corpus.load(data, tok, log=log)
    except (ValueError, OSError) as e:  # DataError and UnknownCharsError are ValueErrors
        raise AnalysisError(f"the run's corpus {data!r} cannot be read: {e}") from None
    if corpus.source.get("fallback_from"):
        raise AnalysisError(f"the run's corpus {data!r} is not available here (only its fallback "
                            f"{corpus.source.get('name')!r}); the analysis needs the run's own text")
    val = corpus.val  # (V,) int32, the last 10%
    if len(val) < T:
        raise AnalysisError(f"the validation split of {data!r} has {len(val)} tokens, fewer than one "
                            f"window of {T}; the analysis needs at least that")
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(len(val) - T + 1, (n,), generator=g).sort().values  # (n,)
    windows = val[offsets[:, None] + torch.arange(T)].long()  # (n, T)
    trained = get_dict(cfg, "data").get("sha256")
    note = None
    if isinstance(trained, str) and trained != corpus.source.get("sha256"):
        note = (f"the corpus {data!r} here is not byte for byte the one the run trained on (sha256 "
                f"{corpus.source.get('sha256', '?')[:12]} here, {trained[:12]} then)")
    return windows, data, note


# -- the job ----------------------------------------------------------------------------------------
def _check_run(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        there = sorted(p.name for p in run_dir.parent.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if run_dir.parent.is_dir() else []
        raise AnalysisError(f"no run named {run_dir.name!r} in {run_dir.parent}"
                            + (f"; runs there: {', '.join(there[:12])}" if there else "; that folder has no runs"))
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise AnalysisError(f"run {run_dir.name!r} has no snapshots (snapshots/iter_*), and the analysis scores "
                            "snapshots; train a run with snapshots on (the default) and analyse it then")
    return snaps


def _settings(run_dir: Path, windows: int | None, seed: int | None, top_k: int | None) -> dict[str, Any] | None:
    """The existing meta.json when the asked settings agree with it (None: no meta yet)."""
    meta = sh.read_meta(run_dir)
    if meta is None:
        return None
    asked = {"n_windows": windows, "seed": seed, "top_k": top_k}
    clash = [f"{k} {meta[k]} (asked {v})" for k, v in asked.items() if v is not None and v != meta[k]]
    if clash:
        raise AnalysisError(f"{run_dir.name}'s analysis was made with {', '.join(clash)}; leave those out "
                            "to resume it, or pass --fresh to start it over")
    return meta


def _fresh(run_dir: Path) -> None:
    for p in analysis_dir(run_dir).iterdir():
        if sh.ITER_RE.fullmatch(p.name) or p.name in (sh.META, sh.WINDOWS):
            p.unlink()


def _todo(run_dir: Path, snaps: list[tuple[int, Path]], meta: dict[str, Any],
          log: Callable[[str], None]) -> list[tuple[int, Path]]:
    """The snapshots without a result file that reads back (a damaged one is redone, and said)."""
    done = set(sh.done_iters(run_dir))
    todo = []
    for it, path in snaps:
        if it in done:
            try:
                sh.read_iter(sh.iter_path(run_dir, it), list(meta["scores"]), meta["n_windows"])
                continue
            except ValueError as e:
                log(f"redoing iter {it}: {e}")
        todo.append((it, path))
    return todo


def run_analysis(run_dir: str | os.PathLike, windows: int | None = None, seed: int | None = None,
                 top_k: int | None = None, threads: int | None = None, fresh: bool = False,
                 should_stop: Callable[[], bool] = lambda: False, log: Callable[[str], None] = print,
                 bar: bool = False) -> dict[str, Any]:
    """Analyse every snapshot of the run at run_dir that has no result yet; return the final status
    (state "finished", "stopped" or "failed", done, total, message). windows, seed, top_k: None
    keeps an existing analysis's settings (else 256, 0, 8); a clash with them is an AnalysisError,
    unless fresh (which deletes the old results first). threads: only reported (the caller sets
    torch's). should_stop is polled after each chunk of windows, as is analysis/STOP.
    AnalysisError when it cannot run: a bad run, no snapshots, busy, clashing settings (nothing
    written), or no corpus (status.json then says "failed" and why)."""
    run_dir = Path(run_dir)
    snaps = _check_run(run_dir)
    adir = analysis_dir(run_dir)
    with job_lock(adir, AnalysisError, unwritable="copy the run to a folder you can write",
                  busy=f"an analysis of run {run_dir.name!r} is already running (it holds {adir / '.lock'}); "
                       "stop it, or wait for it to end"):
        if fresh:
            _fresh(run_dir)
        meta = _settings(run_dir, windows, seed, top_k)  # a refusal: status.json stays as it was

        def failed(msg: str) -> None:
            write_status(adir, "failed", msg, done=len(sh.done_iters(run_dir)), total=len(snaps))

        with failure_recorded(AnalysisError, failed):
            return _run_locked(run_dir, snaps, meta, windows, seed, top_k, threads, should_stop, log, bar)


def _run_locked(run_dir: Path, snaps: list[tuple[int, Path]], meta: dict[str, Any] | None,
                windows: int | None, seed: int | None, top_k: int | None, threads: int | None,
                should_stop: Callable[[], bool], log: Callable[[str], None], bar: bool) -> dict[str, Any]:
    model, tok, _ = load(snaps[0][1])
    T = model.config.block_size
    if meta is None:
        n, s, k = windows or DEFAULT_WINDOWS, DEFAULT_SEED if seed is None else seed, top_k or DEFAULT_TOP_K
        cfg = load_json(run_dir / RUN_CONFIG_FILE) if (run_dir / RUN_CONFIG_FILE).is_file() else {}
        ids, data, note = validation_windows(cfg, tok, n, T, s, log)
        sh.write_windows(run_dir, ids)  # windows first: a meta.json always has its windows
        meta = dict(n_windows=n, block=T, seed=s, data=data, scores=list(SCORE_NAMES), top_k=k,
                    created_at=now(), tokenizer=tok.kind, windows_from="the validation split (last 10%)",
                    random={"sequences": RANDOM_SEQUENCES, "len": min(T // 2, 100), "seed": s},
                    **({"note": note} if note else {}))
        sh.write_meta(run_dir, meta)
        if note:
            log(f"warning: {note}")
    elif meta["block"] != T:
        raise AnalysisError(f"the analysis has windows of {meta['block']} tokens but the model's block is {T}; "
                            "pass --fresh to start it over")
    ids = torch.tensor(sh.read_windows(run_dir, meta))  # (N, T): exactly what is saved
    todo = _todo(run_dir, snaps, meta, log)
    total, done = len(snaps), len(snaps) - len(todo)
    threads = threads or torch.get_num_threads()
    log(f"analysis: {total} snapshots ({done} done, {len(todo)} to go), {meta['n_windows']} windows of "
        f"{meta['block']} tokens from the validation split of {meta['data']} (seed {meta['seed']}), "
        f"{RANDOM_SEQUENCES} random repeated sequences, top {meta['top_k']} windows per head, "
        f"{threads} thread{'s' if threads > 1 else ''}")
    return _loop(run_dir, todo, done, total, ids, meta, should_stop, bar)


def _loop(run_dir: Path, todo: list[tuple[int, Path]], done: int, total: int, ids: torch.Tensor,
          meta: dict[str, Any], should_stop: Callable[[], bool], bar: bool) -> dict[str, Any]:
    from tqdm import tqdm

    adir = analysis_dir(run_dir)
    N, t0 = ids.size(0), time.monotonic()
    said = [0.0]  # when status.json was last written
    # disable=None: a bar only in a terminal (the detached job logs to a file); none at all without
    # `bar`, since even a disabled tqdm starts its monitor thread
    progress = tqdm(total=total, initial=done, unit="snapshot", disable=None, file=sys.stderr,
                    dynamic_ncols=True) if bar else None
    write_status(adir, "running", f"{done}/{total} snapshots analysed", done=done, total=total)
    try:
        for it, path in todo:
            def on_chunk(w: int, n: int, it: int = it) -> None:
                check_stop(adir, should_stop)
                if progress is not None:
                    progress.set_postfix_str(f"iter {it}: {w}/{n} windows")
                if time.monotonic() - said[0] >= STATUS_EVERY_S or w == 0:
                    write_status(adir, "running", f"iter {it}: {w}/{n} windows", done=done, total=total)
                    said[0] = time.monotonic()

            on_chunk(0, N)
            try:
                model = load(path)[0]
            except CheckpointError as e:
                raise AnalysisError(f"snapshot iter {it} cannot be loaded: {e}") from None
            res = dataset_scores(model, ids, meta["seed"], meta["top_k"], on_chunk=on_chunk)
            sh.write_iter(run_dir, it, res.scores, res.top)
            done += 1
            if progress is not None:
                progress.update(1)
    except StopRequested:
        clear_stop(adir)
        return last_status(adir, "stopped", f"stopped at {done}/{total} snapshots; start it again to resume",
                           done=done, total=total)
    finally:
        if progress is not None:
            progress.close()
    clear_stop(adir)  # (a stop asked as the last chunk ended)
    return last_status(adir, "finished", f"analysed {total} snapshots ({len(todo)} now, in "
                       f"{time.monotonic() - t0:.1f} s)", done=done, total=total)


# -- the CLI ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m trainers.analyze", (
        "Score every head of every snapshot of a run over held-out validation windows (previous-token, "
        "induction on random repeats and on the text, first-token sink, self, entropy; top windows per head) "
        "and write <run>/analysis/. Resumes where it stopped; SIGTERM, Ctrl-C or <run>/analysis/STOP stop it."))
    p.add_argument("--windows", type=int, help=f"validation windows to score (default {DEFAULT_WINDOWS}, or "
                   "what an existing analysis used)")
    p.add_argument("--top-k", type=int, help=f"windows kept per head and score (default {DEFAULT_TOP_K})")
    p.add_argument("--seed", type=int, help=f"seed of the window offsets and random sequences (default {DEFAULT_SEED})")
    args = parse_job_args(p, argv, "delete the run's analysis results and start over", ("windows", "top_k"))
    if args.seed is not None and args.seed < 0:
        p.error("--seed must be at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """The CLI; exit 0 (finished or stopped), 1 (refused or failed: the message says why), 2 (bad flags)."""
    from trainers.runs import run_path

    args = parse_args(argv)
    # (a ValueError is exit 1: AnalysisError, a bad run name (run_path), a malformed analysis file)
    return run_job(args.threads, "this chunk of windows", lambda threads, should_stop, log: run_analysis(
        run_path(args.run, args.root), args.windows, args.seed, args.top_k, threads, args.fresh,
        should_stop=should_stop, log=log, bar=True))


if __name__ == "__main__":
    sys.exit(main())
