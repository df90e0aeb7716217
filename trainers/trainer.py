"""The training loop: nanoGPT's train.py recipe behind a small class with callbacks.

AdamW with decay on >=2-D params, linear warmup then cosine decay to min_lr, gradient
clipping and accumulation, periodic evaluation on train and val, bf16 autocast + TF32 on CUDA,
and DDP when launched by torchrun (RANK/LOCAL_RANK/WORLD_SIZE). Only rank 0 writes the run
folder: config.json, metrics.jsonl, status.json, latest/ (with optimizer state), best/ and
snapshots/. The trainer knows nothing of Streamlit: the app reads those files. Where a run starts
(a new GPT, or latest/) and its checkpoint saves are trainers/runstate.py's; what it reports in the
run folder (config.json, status.json, the ETA, the state it ends in) trainers/runstatus.py's.

Speed (see BENCHMARKS.md, "Trainer"): how the forward and backward run on this machine (autocast,
compile and CUDA graphs, DDP, CPU batch shards on threads) is trainers/engine.py's; the optimizer
step never waits for the device (trainers/step.py): losses are read once per log interval, or
before an eval, a snapshot, a stop or the end.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt import checkpoint as ckpt  # module access, so tests can monkeypatch ckpt.snapshot_dir
from gpt.config import GPTConfig
from trainers import runs, runstate, runstatus
from trainers.config import TrainConfig, check_config, get_lr, is_snapshot_iter
from trainers.engine import Engine, end_process_group, start_process_group
from trainers.machine import resolve_device
from trainers.runfolder import has_trained
from trainers.runlock import RunLock
from trainers.runstatus import ETA_WARMUP
from trainers.step import DeferredStep


@dataclass
class Callbacks:
    """Hooks called on rank 0 only; any may be None."""
    on_log: Callable[[dict[str, Any]], None] | None = None  # every log_interval
    on_eval: Callable[[dict[str, Any]], None] | None = None  # every eval
    on_checkpoint: Callable[[Path], None] | None = None  # after each checkpoint folder is written
    should_stop: Callable[[], bool] | None = None  # polled every iteration; True = stop gracefully
    on_message: Callable[[str], None] | None = None  # human-readable lines; default print


class Trainer:
    """Trainer(train_cfg, model_cfg=None, callbacks=None, resume=False).fit() -> final status.

    model_cfg None builds cfg.model_config(vocab); its vocab_size always comes from the
    tokenizer. resume=True continues <root>/<name> from latest/ with its optimizer state and
    its recorded model, tokenizer and data. Raises ValueError on a bad config before anything
    is written.
    """

    def __init__(self, train_cfg: TrainConfig, model_cfg: GPTConfig | None = None,
                 callbacks: Callbacks | None = None, resume: bool = False) -> None:
        self.cfg, self.model_cfg, self.resumed = train_cfg, model_cfg, resume
        self.cb = callbacks or Callbacks()
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.ddp = "RANK" in os.environ  # under torchrun, as nanoGPT: 1 process on NCCL too
        self.master = self.rank == 0
        device = resolve_device(train_cfg.device)
        if self.ddp and device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.device, self.device_type = device, device.split(":")[0]
        check_config(train_cfg, device=device, world_size=self.world_size)
        if train_cfg.name is None:
            raise ValueError("TrainConfig.name is required: it names the run folder")
        self.run_dir = runs.run_path(train_cfg.name, train_cfg.root)
        self.micro_steps = train_cfg.grad_accum // self.world_size  # per process, as nanoGPT
        self._stop_flag = False
        self.status: dict[str, Any] = {}
        self.engine: Engine | None = None
        self.lock: RunLock | None = None  # the run folder's lock, held by rank 0 (claim)

    # -- small helpers ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step (used by the CLI's SIGTERM/SIGINT handler)."""
        self._stop_flag = True

    def _say(self, msg: str) -> None:
        if self.master:
            (self.cb.on_message or (lambda m: print(m, flush=True)))(msg)

    def _stop_requested(self) -> bool:
        if self._stop_flag:
            return True
        if not self.master:
            return False
        return bool(self.cb.should_stop and self.cb.should_stop()) or \
            (self.run_dir / runs.STOP_FILE).exists()

    def _write_status(self, state: str | None = None, last: bool = False, **fields: Any) -> None:
        """Update status.json (rank 0): every write of it goes through here. The `last` one, a
        failure, is written even on a full disk (runstatus.write_status)."""
        if not self.master or not self.run_dir.is_dir():
            return
        self.status = runstatus.write_status(self.run_dir, self.status, state, last, fields)

    def claim(self, lock: RunLock | None = None) -> None:
        """Hold the run folder's lock (take it, or adopt `lock`) on rank 0 until fit() ends, which
        claims by itself otherwise. Raises before anything is written: RunBusy (a ValueError) when
        another process holds it; ValueError when a new run's folder was trained meanwhile."""
        if not self.master or self.lock is not None:
            return
        if lock is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock.acquire(self.run_dir)
        self.lock = lock
        if not self.resumed and has_trained(self.run_dir):
            self.lock.close()
            self.lock = None
            raise ValueError(f"a run named {self.cfg.name!r} in {self.run_dir.parent} has been trained "
                             f"already; continue it with --resume --name {self.cfg.name}, or pick another name")

    # -- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        if self.ddp:
            start_process_group(self.device_type)
            if self.device_type == "cuda":
                torch.cuda.set_device(self.device)
        if self.device_type == "cuda":  # TF32 matmuls: ~free speed on Ampere+, as nanoGPT
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.last_train: float | None = None
        self.eval_round_s: float | None = None  # the last evaluation, checkpoints included (the ETA's)
        self.snapshot_s = 0.0  # the last snapshot save
        if self.resumed:  # init from latest/, with its optimizer state and counters
            start = runstate.resume(self.run_dir, cfg, self.device, log=self._say)
        else:  # init from scratch
            start = runstate.new_run(cfg, self.model_cfg, self.device, self.world_size, log=self._say)
        model, self.corpus, opt_state = start.model, start.corpus, start.opt_state
        self.model_cfg, self.tokenizer = model.config, self.corpus.tokenizer
        self.start_iter, self.best_val, self.elapsed_prev = start.iter, start.best_val, start.elapsed_s
        self.last_val = start.last_val
        torch.manual_seed(cfg.seed + self.rank + self.start_iter)  # dropout differs per rank
        self.corpus.to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * self.rank + self.start_iter)
        self.raw_model = model.to(self.device).train()
        self.optimizer = self.raw_model.configure_optimizers(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device_type)
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
        self.engine = Engine(self.raw_model, cfg, self.device, self.ddp, self.world_size)
        self.stepper = DeferredStep(self.optimizer, self.engine.params, cfg.grad_clip, self.device,
                                    self.start_iter)
        if self.master:  # config.json, metrics.jsonl and the first status.json
            self.status = runstatus.write_start(self.run_dir, cfg, start.run_cfg, self.model_cfg, self.corpus,
                                                self.device, self.world_size, self.start_iter)
            self._write_status()
        self._say(self.engine.describe(fused_adamw=self.stepper.fused))
        for line in start.describe():
            self._say(line)

    # -- checkpoints and evaluation ---------------------------------------------------------------
    def _save(self, folder: Path, it: int, with_optimizer: bool) -> None:
        """Save the model as it is now to `folder` (a gpt.checkpoint layout folder of this run)."""
        meta = {"iter": it, "val_loss": self.last_val, "train_loss": self.last_train,
                "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
                "run": self.cfg.name, "elapsed_s": round(self._elapsed(), 3)}
        path = runstate.save(folder, self.run_dir, self.raw_model, self.tokenizer, meta,
                             self.optimizer if with_optimizer else None)
        if self.cb.on_checkpoint:
            self.cb.on_checkpoint(path)

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over eval_iters batches of each split, on fixed batches (same every eval)."""
        self.raw_model.eval()
        gen = torch.Generator().manual_seed(self.cfg.seed + 7)
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(self.cfg.eval_iters, device=self.device)  # read once per split
            for k in range(self.cfg.eval_iters):
                X, Y = self.corpus.get_batch(split, self.cfg.batch_size,
                                             self.model_cfg.block_size, gen, self.device)
                losses[k] = self.engine.eval_loss(X, Y)
            out[split] = losses.mean().item()
        self.raw_model.train()
        return out

    def _evaluate(self, it: int) -> bool:
        """Eval, log, save latest/ (and best/); False if the losses are not finite."""
        losses = self.estimate_loss()
        if not (math.isfinite(losses["val"]) and math.isfinite(losses["train"])):
            return False
        row = {"iter": it, "val_loss": losses["val"], "train_loss_eval": losses["train"]}
        runs.append_jsonl(self.run_dir / "metrics.jsonl", row)
        if self.cb.on_eval:
            self.cb.on_eval(row)
        self.last_val = losses["val"]
        improved = losses["val"] < self.best_val
        self.best_val = min(self.best_val, losses["val"])
        self._save(ckpt.latest_dir(self.run_dir), it, with_optimizer=True)
        if improved:
            self._save(ckpt.best_dir(self.run_dir), it, with_optimizer=False)
        self._write_status(iter=it, val_loss=self.last_val, best_val_loss=self.best_val)
        return True

    def _elapsed(self) -> float:
        # a monotonic clock: a wall-clock jump must not make elapsed_s negative (nor tokens/s huge)
        return self.elapsed_prev + time.perf_counter() - self.t_start

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to cfg.max_iters (or a stop request); return the final status dict.

        Divergence ends the run with state "failed" (returned, not raised); any exception marks
        the run failed with its message and is re-raised. Earlier checkpoints are never touched.
        """
        self.claim()  # outside the try: a refused claim must not mark another process's run failed
        self.t_start = time.perf_counter()
        try:
            in_step = False  # True once every rank has left the loop at the same iteration
            self._setup()
            self.t_start = time.perf_counter()  # elapsed_s counts training, not data loading and setup
            status = self._loop()
            in_step = True
            return status
        except BaseException as e:
            state, msg, err = runstatus.ending(e, self.run_dir)
            self._write_status(state, last=True, message=msg)
            if err is not None and err is not e:
                raise err from e
            raise
        finally:
            if self.engine is not None:
                self.engine.close()  # (lets go of the DDP wrapper, which holds the process group)
            if self.master:
                (self.run_dir / runs.STOP_FILE).unlink(missing_ok=True)
            if self.ddp:  # freed here, gloo's threads joined: none may live into interpreter exit
                end_process_group(barrier=in_step)
            if self.lock is not None:  # last: every write of this process is done
                self.lock.close()
                self.lock = None

    def _loop(self) -> dict[str, Any]:
        cfg, it = self.cfg, self.start_iter
        tokens_per_iter = cfg.grad_accum * cfg.batch_size * self.model_cfg.block_size
        t_log, it_log = 0.0, it
        steps_s, steps_n = 0.0, 0  # the ETA's measured step time (after ETA_WARMUP steps)
        X, Y = self._batch()
        while True:
            if it != self.start_iter or not self.resumed:
                if self._eval_due(it):
                    t_eval = time.perf_counter()
                    bad = self.master and not self._evaluate(it)  # rank 0 evaluates
                    if self.ddp:  # the others learn of it here, before anyone steps
                        bad = self._agree(False, bad)[1]
                    if bad:
                        return self._fail(it, math.nan)
                    self.eval_round_s = time.perf_counter() - t_eval
                if self.master and cfg.snapshots and (is_snapshot_iter(it, cfg.snapshot_every) or it == cfg.max_iters):
                    t_snap = time.perf_counter()
                    self._save(ckpt.snapshot_dir(self.run_dir, it), it, with_optimizer=False)
                    self.snapshot_s = time.perf_counter() - t_snap
            if it >= cfg.max_iters:
                self._write_status("finished", iter=it, message=f"finished at iter {it}", eta_s=0)
                return self.status
            lr = get_lr(it, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            loss_sum: torch.Tensor | None = None
            for micro in range(self.micro_steps):
                loss, (X, Y) = self.engine.micro_step(X, Y, self.micro_steps,
                                                      micro == self.micro_steps - 1, self._batch)
                loss_sum = loss if loss_sum is None else loss_sum + loss
            assert loss_sum is not None
            self.stepper.step(loss_sum, it)
            it += 1
            stop = self._stop_requested()
            logged = (it - 1) % cfg.log_interval == 0
            if self._read_due(it, logged, stop):
                bad_it, bad_loss = self._read(it)  # the one host sync per window
                if self.ddp:  # every rank must agree to stop, else the next all-reduce hangs
                    stop, bad = self._agree(stop, bad_it is not None)
                    if bad and bad_it is None:
                        bad_it, bad_loss = it - 1, math.nan  # seen on another rank
                if bad_it is not None:
                    return self._fail(bad_it, bad_loss)
            else:
                stop = False  # (only DDP gets here with a stop request: ranks act on it together)
            dt = time.perf_counter() - t0
            t_log += dt
            if it - self.start_iter > ETA_WARMUP:
                steps_s, steps_n = steps_s + dt, steps_n + 1
            if self.master and logged:
                lossf = self.last_train
                done = it - it_log
                tps = done * tokens_per_iter / max(t_log, 1e-9)
                row = {"iter": it - 1, "train_loss": lossf, "lr": lr, "tokens_per_s": round(tps, 1),
                       "elapsed_s": round(self._elapsed(), 3)}
                runs.append_jsonl(self.run_dir / "metrics.jsonl", row)
                if self.cb.on_log:
                    self.cb.on_log(row)
                eta = runstatus.eta_s(it, cfg, steps_s, steps_n, self.eval_round_s, self.snapshot_s)
                self._write_status("stopping" if stop else "running", iter=it, train_loss=lossf,
                                   tokens_per_s=round(tps, 1), eta_s=eta)
                t_log, it_log = 0.0, it
            if stop:
                if self.master:
                    self._save(ckpt.latest_dir(self.run_dir), it, with_optimizer=True)
                    if cfg.snapshots:
                        self._save(ckpt.snapshot_dir(self.run_dir, it), it, with_optimizer=False)
                msg = f"stopped at iter {it}; resume to continue"
                self._say(msg)
                self._write_status("stopped", iter=it, message=msg, eta_s=None)
                return self.status

    # -- the step and its deferred checks ---------------------------------------------------------
    def _eval_due(self, it: int) -> bool:
        return it % self.cfg.eval_interval == 0 or it == self.cfg.max_iters

    def _read_due(self, it: int, logged: bool, stop: bool) -> bool:
        """Read the losses before anything that reports or saves them; on a schedule that every
        DDP rank computes alike (a local stop request only counts without DDP)."""
        cfg = self.cfg
        return (logged or (stop and not self.ddp) or self._eval_due(it) or it >= cfg.max_iters
                or (cfg.snapshots and is_snapshot_iter(it, cfg.snapshot_every)) or self.stepper.full(it))

    def _read(self, it: int) -> tuple[int | None, float]:
        """(the first non-finite iteration since the last read or None, its loss); the last
        finite loss becomes last_train."""
        vals, bad = self.stepper.read(it)
        if bad is not None:
            return bad, vals[bad - (it - len(vals))]
        if vals:
            self.last_train = vals[-1]
        return None, math.nan

    def _agree(self, stop: bool, bad: bool) -> tuple[bool, bool]:
        """(stop, bad), each True when it is True on any DDP rank."""
        assert self.engine is not None
        return self.engine.agree(stop, bad)  # (on a tensor that outlives the process group)

    def _fail(self, it_bad: int, loss: float) -> dict[str, Any]:
        msg = runstatus.diverged(it_bad, loss, self.run_dir)
        self._say(msg)
        self._write_status("failed", iter=it_bad, message=msg)
        return self.status

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.corpus.get_batch("train", self.cfg.batch_size, self.model_cfg.block_size,
                                     self.gen, self.device)
