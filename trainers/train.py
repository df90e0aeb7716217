"""Command line: `python -m trainers.train --preset tiny --data shakespeare`.

Also under torchrun (`torchrun --nproc_per_node=N -m trainers.train ...`) for DDP, as nanoGPT.
`--resume --name X [--max-iters N]` continues run X from latest/, optimizer state included.
`--run DIR` trains the run folder that trainers.runs.start prepared, with every setting from its
config.json (no settings on the command line); `--run DIR --resume` continues it.
SIGTERM/SIGINT (or a <run>/STOP file) stop gracefully: finish the step, save latest/, exit.
One process writes a run folder: rank 0 holds the folder's lock (trainers.runlock) from before it
reads a run to resume, or from when a new run is named, to its end; a second writer is refused.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import suppress
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from gpt.checkpoint import latest_dir
from trainers import runs
from trainers.config import (PRESETS, RUN_CONFIG_FILE, TOKENIZERS, TrainConfig, read_run_config,
                             validate_run_name)
from trainers.machine import cap_threads, default_threads
from trainers.runfolder import RunWriteError, clean_leftovers
from trainers.runlock import RunLock

# settings a resumed run may change; everything else is the run's recorded config
RESUME_OVERRIDABLE = {"name", "root", "max_iters", "threads", "device", "compile", "snapshots",
                      "snapshot_every", "cpu_shards", "eval_interval", "eval_iters", "log_interval"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainers.train",
        description="Train a nanoGPT-style model and write a run folder <root>/<name>/ (config.json, "
                    "metrics.jsonl, status.json, latest/, best/, snapshots/).",
        epilog="Examples: python -m trainers.train --preset cpu-small --data shakespeare | "
               "python -m trainers.train --resume --name tiny-shakespeare-20250101-120000 --max-iters 400 | "
               "python -m trainers.train --run checkpoints/my-run | "
               "torchrun --standalone --nproc_per_node=8 -m trainers.train --preset gpt2")
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="base settings: tiny (tests), cpu-small (nanoGPT's "
      "CPU line), baby (nanoGPT's shakespeare_char), gpt2 (nanoGPT's train_gpt2: 124M in GPT-2 BPE); "
      "flags override it (default: tiny)")
    a("--data", help="corpus: shakespeare, shakespeare-repeats (with repeated spans: grows an induction "
      "head), python-docs, or the path of a UTF-8 .txt file (default: "
      "shakespeare when cached or in ../shared, else python-docs; no network unless asked for)")
    a("--tokenizer", choices=TOKENIZERS, help="char (vocab from the corpus) or gpt2 BPE (default: char)")
    a("--name", help="run folder name (default: <preset>-<data>-<timestamp>); no '/' or '..'")
    a("--resume", action="store_true", help="continue run --name (or --run) from its latest "
      "checkpoint, optimizer included; only --max-iters/--threads/--device/--compile and intervals "
      "may change")
    a("--run", metavar="DIR", help="train the run folder DIR with the settings in its config.json "
      "(as trainers.runs.start writes it; the app starts runs this way); no other settings")
    a("--root", help="checkpoints root (default: $NANOLENS_CHECKPOINTS or <repo>/checkpoints)")
    a("--max-iters", type=int, dest="max_iters", help="optimizer steps in total (also lr_decay_iters)")
    a("--eval-interval", type=int, dest="eval_interval", help="evaluate and save latest/ every N iters")
    a("--eval-iters", type=int, dest="eval_iters", help="batches per split in each evaluation")
    a("--log-interval", type=int, dest="log_interval", help="write a metrics row every N iters")
    a("--batch-size", type=int, dest="batch_size", help="sequences per micro step (per process)")
    a("--block-size", type=int, dest="block_size", help="context length in tokens")
    a("--n-layer", type=int, dest="n_layer", help="transformer blocks")
    a("--n-head", type=int, dest="n_head", help="attention heads (must divide --n-embd)")
    a("--n-embd", type=int, dest="n_embd", help="residual stream width")
    a("--dropout", type=float, help="dropout probability in [0, 1)")
    a("--bias", action=argparse.BooleanOptionalAction, default=None,
      help="biases in Linear layers and LayerNorms (default: the preset's; gpt2 has none, as nanoGPT)")
    a("--lr", type=float, dest="learning_rate", metavar="LR", help="peak learning rate (after warmup)")
    a("--min-lr", type=float, dest="min_lr", help="learning rate at the end of the cosine decay")
    a("--warmup-iters", type=int, dest="warmup_iters", help="linear warmup steps")
    a("--lr-decay-iters", type=int, dest="lr_decay_iters", help="end of cosine decay (default: max iters)")
    a("--grad-accum", type=int, dest="grad_accum", help="micro steps per optimizer step, in total "
      "over all DDP processes (must be a multiple of their number)")
    a("--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay on >=2-D params")
    a("--beta1", type=float, help="AdamW beta1")
    a("--beta2", type=float, help="AdamW beta2")
    a("--grad-clip", type=float, dest="grad_clip", help="clip the gradient norm to this (0: off)")
    a("--seed", type=int, help="random seed; the same seed gives the same losses on CPU")
    a("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    a("--threads", type=int, help="CPU threads, >= 1 (default: all cores but one, split over processes); "
      "more than the cores are capped at the core count, with a warning")
    a("--force-threads", action="store_true", help="use --threads as given, even above the core count")
    a("--compile", action="store_true", default=None, help="torch.compile the model (CUDA mostly)")
    a("--no-cpu-shards", action="store_false", dest="cpu_shards", default=None,
      help="on a CPU with several threads, split each op over them instead of giving each thread "
           "a share of the batch (the default when dropout is 0; see trainers/shards.py)")
    a("--no-snapshots", action="store_false", dest="snapshots", default=None,
      help="do not keep snapshots/iter_* at spread-out iterations")
    a("--snapshot-every", type=int, dest="snapshot_every", metavar="N", help="also keep a snapshot every "
      "N iterations, to see a phase change late in a run (default: the spread-out ones only)")
    return p


def flag_of(field: str) -> str:
    """The command-line flag of a TrainConfig field (learning_rate is nanoGPT's short --lr)."""
    return "--lr" if field == "learning_rate" else "--" + field.replace("_", "-")


def make_config(args: argparse.Namespace, world_size: int, rank: int) -> TrainConfig:
    """TrainConfig from the flags: a preset + overrides, a run folder's config.json for --run, or
    a recorded run for --resume. ValueError says what is wrong and what to do instead."""
    from trainers.data import CORPORA, default_data

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if args.run:
        if args.name or args.root:
            raise ValueError("--run names the run folder already; drop --name and --root")
        run_dir = Path(args.run).expanduser().resolve()
        # from here on --run DIR is --name <its name> --root <its parent>
        args.name, args.root = validate_run_name(run_dir.name), str(run_dir.parent)
        if not args.resume:
            return from_run_folder(run_dir, given, world_size, rank)
    if args.resume:
        if not args.name:
            raise ValueError("--resume needs --name of the run to continue")
        run_dir = runs.run_path(args.name, args.root)
        if rank == 0 and run_dir.is_dir():  # (main holds the run's lock: nobody else writes it)
            st = runs.read_json(run_dir / "status.json") or {}
            if st.get("state") != "starting":  # not launched by runs.resume: a stale STOP must go
                (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
            runs.recover_latest(run_dir)
            clean_leftovers(run_dir)
        if not ((run_dir / RUN_CONFIG_FILE).is_file() and latest_dir(run_dir).is_dir()):
            raise ValueError(f"no resumable run {args.name!r} in {run_dir.parent} (no config.json "
                             "or latest/); start it without --resume")
        fixed = sorted(set(given) - RESUME_OVERRIDABLE)
        if fixed:
            flags = ", ".join(flag_of(k) for k in fixed)
            raise ValueError(f"--resume keeps the run's recorded settings; drop {flags} (only "
                             "--max-iters, --threads, --device, --compile and intervals may change)")
        changes = {k: v for k, v in given.items() if k not in ("name", "root")}  # the folder's own
        cfg = replace(read_run_config(run_dir), **changes)
        at = runs.latest_iter(run_dir) or 0
        if cfg.max_iters <= at:
            raise ValueError(f"run {args.name!r} is already at iter {at}; pass --max-iters > {at}")
    else:
        cfg = TrainConfig.from_preset(args.preset or "tiny", **given)
        cfg.data = cfg.data or default_data()
        if cfg.data not in CORPORA:
            cfg.data = os.path.abspath(os.path.expanduser(cfg.data))
        cfg.name = validate_run_name(cfg.name or runs.default_name(cfg))
        run_dir = runs.run_path(cfg.name, args.root)
        if (run_dir / RUN_CONFIG_FILE).exists() or latest_dir(run_dir).exists():
            raise ValueError(f"a run named {cfg.name!r} already exists in {run_dir.parent}; pick "
                             f"another --name, or continue it with --resume --name {cfg.name}")
        cfg.root = str(run_dir.parent)
    if cfg.threads is None:  # (0 or -1 is check_config's to refuse)
        cfg.threads = default_threads(world_size)
    return cfg


def from_run_folder(run_dir: Path, given: dict[str, Any], world_size: int, rank: int) -> TrainConfig:
    """The config a prepared, not yet trained run folder holds (read_run_config). Its settings
    are the file's alone: a flag beside --run would make the folder lie about how it was trained."""
    if given:
        flags = ", ".join(flag_of(k) for k in sorted(given))
        raise ValueError(f"--run takes every setting from {run_dir / RUN_CONFIG_FILE}; drop {flags}")
    if latest_dir(run_dir).exists():
        raise ValueError(f"{run_dir} has been trained already; continue it with --run {run_dir} "
                         "--resume, or start a new run")
    cfg = read_run_config(run_dir)
    if cfg.threads is None:
        cfg.threads = default_threads(world_size)
    return cfg


def lock_to_resume(args: argparse.Namespace) -> RunLock | None:
    """The lock of the run folder that --resume names (None when there is no such folder yet:
    make_config says so): held before the folder is tidied and read, so that a second writer
    (another --resume, a Resume in the app) is refused rather than sharing it."""
    if args.run:
        run_dir = Path(args.run).expanduser().resolve()
    elif args.name:
        run_dir = runs.run_path(args.name, args.root)
    else:
        return None
    return RunLock.acquire(run_dir) if run_dir.is_dir() else None


def report_refusal(run_dir: Path, message: str) -> None:
    """Record why this process refused a run it was launched for (trainers.runs put it in state
    "starting") as state "failed", so the app shows the reason instead of "the process is gone".
    Any other status, a live run's above all, is left as it is."""
    path = run_dir / "status.json"
    st = runs.read_json(path)
    if st and st.get("state") == "starting" and st.get("pid") in (None, os.getpid()):
        runs.write_json_atomic(path, dict(st, state="failed", pid=os.getpid(), message=message,
                                          updated_at=runs._now(), updated_ts=time.time()))


class ConsoleCallbacks:
    """tqdm progress bar (iter, loss, val loss, tokens/s, ETA) and eval lines, nanoGPT style."""

    def __init__(self, max_iters: int) -> None:
        self.max_iters, self.bar, self.val = max_iters, None, None
        self.trainer: Any = None

    def _bar(self) -> Any:
        if self.bar is None:
            from tqdm import tqdm
            start = getattr(self.trainer, "start_iter", 0)
            self.bar = tqdm(total=self.max_iters, initial=start, unit="it", dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 5.0, file=sys.stderr)
        return self.bar

    def on_log(self, row: dict[str, Any]) -> None:
        bar = self._bar()
        bar.update(max(0, row["iter"] + 1 - bar.n))
        post = {"loss": f"{row['train_loss']:.4f}", "tok/s": f"{row['tokens_per_s']:,.0f}"}
        if self.val is not None:
            post["val"] = f"{self.val:.4f}"
        bar.set_postfix(post, refresh=False)

    def on_eval(self, row: dict[str, Any]) -> None:
        self.val = row["val_loss"]
        self.message(f"iter {row['iter']}: train loss {row['train_loss_eval']:.4f}, "
                     f"val loss {row['val_loss']:.4f}")

    def message(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def close(self, final_iter: int | None = None) -> None:
        if self.bar is not None:
            if final_iter is not None:
                self.bar.update(max(0, final_iter - self.bar.n))
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    from trainers.trainer import Callbacks, Trainer

    args = build_parser().parse_args(argv)
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    run_dir = Path(args.run).expanduser().resolve() if args.run else None
    lock = None
    try:
        if args.resume and rank == 0:
            lock = lock_to_resume(args)
        cfg = make_config(args, world_size, rank)
        if not args.force_threads:
            cfg.threads, note = cap_threads(cfg.threads, world_size)
            if note and rank == 0:
                print(f"warning: {note}", file=sys.stderr, flush=True)
        con = ConsoleCallbacks(cfg.max_iters)
        cb = Callbacks(on_log=con.on_log, on_eval=con.on_eval, on_message=con.message)
        try:
            trainer = Trainer(cfg, callbacks=cb, resume=args.resume)  # this path's one check of cfg
        except ValueError as e:
            if run_dir and not args.resume:  # the settings came from a file: name it
                raise ValueError(f"{run_dir / RUN_CONFIG_FILE}: {e}") from None
            raise
        con.trainer = trainer
        trainer.claim(lock)  # a new run's folder is named now: one writer from here on
    except (ValueError, OSError) as e:  # RunBusy is a ValueError; OSError: a folder we cannot lock
        if lock is not None:
            lock.close()
        if run_dir and rank == 0:
            with suppress(OSError):
                report_refusal(run_dir, f"refused: {e}"[:2000])
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.threads)  # (after the check: a file's threads may not be a number)

    def on_signal(signum: int, _frame: Any) -> None:
        t = con.trainer  # (not `trainer`: the handler would keep it alive until interpreter exit)
        if t is None:
            return  # the run is over
        if signum == signal.SIGINT and t._stop_flag:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        con.message(f"{signal.Signals(signum).name}: stopping after this step")
        t.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        st = trainer.fit()
    except (ValueError, OSError) as e:  # bad data, disk full...: the status says failed already
        con.close()
        print(f"error: {e}" if isinstance(e, RunWriteError) else f"error: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    finally:  # trainer -> callbacks -> con -> trainer: break the cycle, so the trainer goes with main
        con.trainer = None
    con.close(st.get("iter"))
    if rank == 0:
        print(f"{st.get('state')}: {st.get('message')}", flush=True)
    return 1 if st.get("state") == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
