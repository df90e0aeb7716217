"""The tuned-lens fit: one affine translator per layer of a checkpoint (gpt/tuned_lens.py), fitted on
validation windows of its corpus, written to <home>/lens/ (home: the run folder, or the folder of a
checkpoint that is in no run).

    python -m trainers.fit_lens --run NAME [--checkpoint latest|best|ITER] [--data CORPUS] ...
    python -m trainers.fit_lens --path CHECKPOINT --data CORPUS ...   (an upload: no run, no corpus)

Windows: --windows windows of block_size tokens from the first 80% of the validation split (the
last 10% of the corpus, as trainers.data splits it) for the fit, and --eval-windows from its last
20% to measure the lens held out; both at seeded offsets. The corpus is the run's own
(config.json's train.data) unless --data names one; nothing is downloaded.

The fit: Adam on the sum over layers of the mean KL(final || lens) over a random batch of positions
(seeded by the step, so a resumed fit draws the same batches). The residuals are computed once.

One process writes lens/: it holds an exclusive flock on lens/.lock (trainers.runlock). Every
--save-every steps (and when stopped) it saves its whole state (translators, Adam's moments, the
step, the windows) atomically to lens/state.safetensors, so a fit killed at any point, kill -9
included, resumes from its last save with the same result. SIGTERM, SIGINT or a lens/STOP file stop
it after the current step; progress is in lens/status.json. When it ends it writes
tuned_lens.safetensors + tuned_lens.json (with the held-out KL of both lenses per layer) and drops
the state. trainers/lens_runs.py starts and stops it detached, for the app.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gpt import tuned_lens as tl
from gpt.checkpoint import CheckpointError, load, resolve_checkpoint
from gpt.record import Recorder
from trainers.config import RUN_CONFIG_FILE
from trainers.jobcli import (STATUS, STOP_FILE, StopRequested, check_stop, clear_stop, failure_recorded, job_lock,
                             job_parser, last_status, parse_job_args, run_job, write_status)
from trainers.runfolder import get_dict, now, read_json

# lens/status.json: {"state", "pid", "done", "total", "checkpoint", "message", "updated_ts"}; its name and
# STOP_FILE's are trainers.jobcli's, imported from here by trainers/lens_runs.py with LOG and STATE_FILE
DEFAULTS = dict(windows=64, eval_windows=16, steps=250, batch=1024, lr=2e-3, seed=0)
STATE_FILE, LOG = "state.safetensors", "fit.log"
SAVE_EVERY, STATUS_EVERY_S, FIT_FRACTION = 25, 0.5, 0.8


class LensFitError(ValueError):
    """The fit cannot run; the message says why and what to do."""


# -- what to fit, and on what ---------------------------------------------------------------------------
def resolve_target(run: str | None = None, root: str | None = None, checkpoint: str = "latest",
                   path: str | None = None) -> Path:
    """The checkpoint to fit: `path` as given, else the run's latest/, best/ or snapshot ITER."""
    from trainers.runs import run_path

    if path:
        where, which = Path(path).expanduser(), "latest"
    else:
        where = run_path(run or "", root)  # ValueError: a bad name
        if not where.is_dir():
            raise LensFitError(f"no run named {where.name!r} in {where.parent}")
        which = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
    try:
        return resolve_checkpoint(where, which)
    except CheckpointError as e:
        raise LensFitError(str(e)) from None


def corpus_of(home: Path, data: str | None) -> str:
    """The corpus to fit on: `data`, else the run's own (config.json's train.data)."""
    if data:
        return data
    cfg = read_json(home / RUN_CONFIG_FILE) or {}
    data = get_dict(cfg, "train").get("data")
    if not isinstance(data, str) or not data:
        raise LensFitError("this checkpoint names no corpus (it has no run config.json with train.data): "
                           "pick one with --data (shakespeare, python-docs or the path of a .txt file)")
    return data


def lens_windows(data: str, tok: Any, n_fit: int, n_eval: int, T: int, seed: int,
                 log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit (n_fit, T), held-out (n_eval, T)) int64 windows at seeded offsets in the first 80% and
    the last 20% of the corpus's validation split. LensFitError when the corpus cannot be read
    offline or is too short."""
    from trainers.data import CORPORA, Corpus, default_data

    if data in CORPORA and data.startswith("shakespeare") and default_data() != "shakespeare":
        raise LensFitError(f"the corpus {data!r} needs Tiny Shakespeare, which cannot be had offline here; the "
                           "fit downloads nothing: pick another corpus (--data python-docs or a .txt file)")
    try:
        corpus = Corpus.load(data, tok, log=log)
    except (ValueError, OSError) as e:  # DataError and UnknownCharsError are ValueErrors
        raise LensFitError(f"the corpus {data!r} cannot be used: {e}") from None
    if corpus.source.get("fallback_from"):
        raise LensFitError(f"the corpus {data!r} is not available here; pick another with --data")
    val = corpus.val.long()
    cut = int(len(val) * FIT_FRACTION)
    parts = (val[:cut], val[cut:])
    if min(len(p) for p in parts) < T:
        raise LensFitError(f"the validation split of {data!r} ({len(val)} tokens) is too short for windows of "
                           f"{T} tokens in both its fit and held-out parts; use a longer corpus")
    g = torch.Generator().manual_seed(seed)
    out = []
    for part, n in zip(parts, (n_fit, n_eval)):
        offsets = torch.randint(len(part) - T + 1, (n,), generator=g).sort().values  # (n,)
        out.append(part[offsets[:, None] + torch.arange(T)])  # (n, T)
    return out[0], out[1]


@torch.no_grad()
def residuals(model: torch.nn.Module, windows: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """The lens rows of every position of `windows` (N, T): (L+1, N*T, C) float32."""
    L, out = model.config.n_layer, []
    for i in range(0, windows.size(0), chunk):
        rec = Recorder(tl.NEEDS)
        model(windows[i:i + chunk], rec=rec)
        rows = [rec["blocks.0.hook_resid_pre"]] + [rec[f"blocks.{j}.hook_resid_post"] for j in range(L)]
        out.append(torch.stack(rows).float().flatten(1, 2))  # (L+1, b*T, C)
    return torch.cat(out, dim=1)


@torch.no_grad()
def held_out_kl(model: torch.nn.Module, lens: tl.TunedLens | None, rows: torch.Tensor,
                chunk: int = 4096) -> list[float]:
    """Mean KL(final || lens) (nats) per row over every position of `rows` (L+1, N, C)."""
    total = torch.zeros(rows.size(0), dtype=torch.float64)
    for i in range(0, rows.size(1), chunk):
        total += tl.kl_to_final(tl.lens_log_probs(model, rows[:, i:i + chunk], lens)).double().sum(1)
    return (total / rows.size(1)).tolist()


# -- the job ------------------------------------------------------------------------------------------------
def run_fit(checkpoint: str | os.PathLike, data: str | None = None, fresh: bool = False,
            should_stop: Callable[[], bool] = lambda: False, log: Callable[[str], None] = print,
            save_every: int = SAVE_EVERY, threads: int | None = None, **asked: Any) -> dict[str, Any]:
    """Fit (or resume fitting) the tuned lens of the checkpoint at `checkpoint`; return the final
    status {"state": "finished" | "stopped", "done", "total", "checkpoint", "message"}. asked: windows,
    eval_windows, steps, batch, lr, seed (None: the saved state's, else DEFAULTS); a clash with a
    saved state is a LensFitError unless fresh. LensFitError when it cannot run (status.json then
    says "failed" and why, except for a busy lock or clashing settings, which write nothing)."""
    ckpt = Path(checkpoint)
    try:
        model, tok, _ = load(ckpt)
    except CheckpointError as e:
        raise LensFitError(f"the checkpoint cannot be loaded: {e}") from None
    model.eval().requires_grad_(False)
    home = tl.lens_home(ckpt)
    ldir = tl.lens_dir(home)
    rel = str(ckpt.relative_to(home)) if ckpt.is_relative_to(home) and ckpt != home else ckpt.name
    with job_lock(ldir, LensFitError, unwritable="copy the checkpoint to a folder you can write",
                  busy=f"a tuned-lens fit of {home.name!r} is already running (it holds {ldir / '.lock'}); "
                       "stop it, or wait for it to end"):
        with failure_recorded(LensFitError, lambda msg: write_status(ldir, "failed", msg, done=0, total=0,
                                                                     checkpoint=rel), keep=(_Refused,)):
            return _fit_locked(model, tok, home, ldir, rel, data, fresh, should_stop, log, save_every, threads, asked)


class _Refused(LensFitError):
    """A refusal that leaves status.json as it was."""


def _fit_locked(model: torch.nn.Module, tok: Any, home: Path, ldir: Path, rel: str, data: str | None,
                fresh: bool, should_stop: Callable[[], bool], log: Callable[[str], None], save_every: int,
                threads: int | None, asked: dict[str, Any]) -> dict[str, Any]:
    fp = tl.model_fingerprint(model)
    state = None if fresh else tl.load_fit_state(ldir / STATE_FILE)
    if fresh:
        (ldir / STATE_FILE).unlink(missing_ok=True)
    elif state is None and (ldir / STATE_FILE).is_file():
        log("the saved fit state cannot be read; starting over")
    if state is not None and state["settings"].get("model_sha256") != fp:
        log(f"the saved fit state was for another checkpoint ({state['settings'].get('checkpoint')}); starting over")
        state = None
    asked = {k: v for k, v in asked.items() if v is not None}
    if state is not None:
        s = state["settings"]
        clash = [f"{k} {s[k]} (asked {v})" for k, v in asked.items() if s.get(k) != v]
        if data and data != s["data"]:
            clash.append(f"data {s['data']!r} (asked {data!r})")
        if clash:
            raise _Refused(f"the saved fit was started with {', '.join(clash)}; leave those out to resume it, "
                           "or pass --fresh to start over")
        settings = s
    else:
        done = tl.read_meta(ldir) if (ldir / tl.META_FILE).is_file() else None
        if done is not None and done.get("model_sha256") == fp and not fresh:
            return last_status(ldir, "finished", f"a tuned lens is already fitted to {rel}; pass --fresh to fit it "
                               "again", done=done.get("steps", 0), total=done.get("steps", 0), checkpoint=rel)
        settings = dict(DEFAULTS, **asked, data=corpus_of(home, data), checkpoint=rel, model_sha256=fp,
                        block=model.config.block_size, tokenizer=tok.kind, started_at=now())
    L, C = model.config.n_layer, model.config.n_embd
    lens = tl.TunedLens(L, C)
    opt = torch.optim.Adam(lens.parameters(), lr=settings["lr"])
    if state is not None:
        fit_ids, eval_ids = state["tensors"]["fit_ids"], state["tensors"]["eval_ids"]
        tl.restore_fit_state(lens, opt, state["tensors"])
        step = state["step"]
    else:
        fit_ids, eval_ids = lens_windows(settings["data"], tok, settings["windows"], settings["eval_windows"],
                                         settings["block"], settings["seed"], log)
        step = 0
    total = settings["steps"]
    log(f"tuned lens: {L} translators of {C}x{C} for {rel} of {home.name} (step {step} of {total}), "
        f"{settings['windows']} windows of {settings['block']} tokens from the validation split of "
        f"{settings['data']} (+{settings['eval_windows']} held out), batches of {settings['batch']} positions, "
        f"Adam lr {settings['lr']}, {threads or torch.get_num_threads()} thread(s)")
    write_status(ldir, "running", f"computing residuals of {settings['windows']} windows", done=step, total=total,
                 checkpoint=rel)
    t0 = time.monotonic()
    rows = residuals(model, fit_ids)  # (L+1, N, C)
    return _loop(model, lens, opt, rows, (fit_ids, eval_ids), step, settings, ldir, rel, should_stop, log,
                 save_every, t0)


def _loop(model: torch.nn.Module, lens: tl.TunedLens, opt: torch.optim.Optimizer, rows: torch.Tensor,
          windows: tuple[torch.Tensor, torch.Tensor], step: int, settings: dict[str, Any], ldir: Path, rel: str,
          should_stop: Callable[[], bool], log: Callable[[str], None], save_every: int, t0: float) -> dict[str, Any]:
    total, N, said = settings["steps"], rows.size(1), 0.0
    eval_ids = windows[1]
    loss = torch.zeros(())
    try:
        while step < total:
            check_stop(ldir, should_stop)
            g = torch.Generator().manual_seed(settings["seed"] * 1_000_003 + step)
            idx = torch.randint(N, (settings["batch"],), generator=g)  # (B,) positions
            loss = tl.kl_loss(model, lens, rows[:, idx])  # (L,)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            step += 1
            if step % save_every == 0 and step < total:
                tl.save_fit_state(ldir / STATE_FILE, lens, opt, step, *windows, settings)
            if time.monotonic() - said >= STATUS_EVERY_S:
                write_status(ldir, "running", f"step {step}/{total} · mean KL {float(loss.detach().mean()):.3f} nats",
                             done=step, total=total, checkpoint=rel)
                said = time.monotonic()
    except StopRequested:
        tl.save_fit_state(ldir / STATE_FILE, lens, opt, step, *windows, settings)
        clear_stop(ldir)
        return last_status(ldir, "stopped", f"stopped at step {step}/{total}; start it again to resume",
                           done=step, total=total, checkpoint=rel)
    eval_rows = residuals(model, eval_ids)
    logit, tuned = held_out_kl(model, None, eval_rows), held_out_kl(model, lens, eval_rows)
    secs = time.monotonic() - t0
    meta = dict(settings, steps=total, fitted_at=now(), fit_seconds=round(secs, 1), final_train_kl=float(loss.detach().mean()),
                held_out={"logit": logit, "tuned": tuned, "windows": int(eval_ids.size(0))})
    tl.save_lens(lens, ldir, meta)
    (ldir / STATE_FILE).unlink(missing_ok=True)
    clear_stop(ldir)
    msg = (f"fitted in {secs:.0f} s: held-out KL per layer, logit lens "
           f"{' '.join(f'{v:.2f}' for v in logit[:-1])} -> tuned {' '.join(f'{v:.2f}' for v in tuned[:-1])} nats")
    log(msg)
    return last_status(ldir, "finished", msg, done=total, total=total, checkpoint=rel)


# -- the CLI ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m trainers.fit_lens", (
        "Fit a tuned lens (one affine translator per layer, identity at the start) to a checkpoint on "
        "validation windows of its corpus, and write <run>/lens/. Resumes where it stopped; SIGTERM, Ctrl-C "
        "or <run>/lens/STOP stop it."), path_help="a checkpoint folder or file that is in no run (an upload); needs --data")
    p.add_argument("--checkpoint", default="latest", help="with --run: latest (default), best, or a snapshot's iteration")
    p.add_argument("--data", help="corpus: shakespeare, shakespeare-repeats, python-docs or a .txt path "
                   "(default: the run's own)")
    for k, h in [("windows", "fit windows"), ("eval_windows", "held-out windows"), ("steps", "Adam steps"),
                 ("batch", "positions per step"), ("seed", "seed of the windows and batches")]:
        p.add_argument(f"--{k.replace('_', '-')}", type=int, help=f"{h} (default {DEFAULTS[k]}, or the saved fit's)")
    p.add_argument("--lr", type=float, help=f"Adam's learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--save-every", type=int, default=SAVE_EVERY, help="steps between resumable saves")
    args = parse_job_args(p, argv, "forget a saved fit and a fitted lens, start over",
                          ("windows", "eval_windows", "steps", "batch", "save_every"))
    if args.lr is not None and not args.lr > 0:
        p.error("--lr must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """The CLI; exit 0 (finished or stopped), 1 (refused or failed: the message says why), 2 (bad flags)."""
    args = parse_args(argv)

    def job(threads: int, should_stop: Callable[[], bool], log: Callable[[str], None]) -> dict[str, Any]:
        # (a ValueError is exit 1: LensFitError, a bad run name, a lens file that is not ours)
        ckpt = resolve_target(args.run, args.root, args.checkpoint, args.path)
        return run_fit(ckpt, args.data, args.fresh, should_stop=should_stop, log=log, save_every=args.save_every,
                       threads=threads, windows=args.windows, eval_windows=args.eval_windows, steps=args.steps,
                       batch=args.batch, lr=args.lr, seed=args.seed)

    return run_job(args.threads, "this step", job)


if __name__ == "__main__":
    sys.exit(main())
