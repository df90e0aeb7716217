"""Train a sparse autoencoder (gpt.sae) on one hook of a run's model, on activations streamed from
the run's own corpus; write it, its metrics and its feature index to <run>/sae/<name>/.

    python -m trainers.train_sae --run NAME --hook blocks.2.hook_resid_post [--steps N] [--k 32]

Each step samples `batch_tokens // block` windows of the training split at offsets drawn from a
generator seeded with (seed, step), so a resumed job sees exactly the batches it would have seen.
The model's activation at the hook (unedited, no grad) is the SAE's input. Every LOG_EVERY steps a
row goes to metrics.jsonl (normalised MSE, FVE, L0, dead fraction: latents that fired on none of
the last dead_tokens training tokens); every eval_every steps and at the end an "eval" row on
held-out validation windows: FVE, L0, dead (never fired there) and CE loss recovered =
(CE_zero - CE_sae) / (CE_zero - CE_clean), with the hook's activation replaced by the SAE's
reconstruction (sae) or by zeros (zero). At the end the feature index (gpt.sae_index).

Job-folder machinery as the other background jobs (trainers/jobcli.py): an exclusive flock on
<sae>/.lock for the job's life, status.json replaced atomically, STOP / SIGTERM / SIGINT stop it
after its step, and state.safetensors (SAE, Adam moments, step, dead counters; one file replaced
atomically) every save_every steps and at a stop, so a job killed at any point (kill -9 included)
resumes from its last state; metrics rows past that state are dropped on resume.
trainers/sae_runs.py starts and stops it detached, for the app.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from gpt.checkpoint import load, resolve_checkpoint
from gpt.edit import Edits
from gpt.sae import SAE, SAEConfig, SAEError, check_hook, save_sae
from gpt.sae_index import build_index, sae_path, save_index
from trainers.jobcli import (STATUS, BadSettings, StopRequested, check_stop, clear_stop, failure_recorded,
                             job_lock, job_parser, last_status, parse_job_args, run_job, write_status)
from trainers.runfolder import append_jsonl, read_json, write_json_atomic
from trainers.sae_state import METRICS, STATE
from trainers.sae_state import load_state as _load_state
from trainers.sae_state import save_state as _save_state
from trainers.sae_state import truncate_metrics as _truncate_metrics

CONFIG, LOG = "config.json", "train_sae.log"  # (status.json and STOP: trainers.jobcli's names)
LOG_EVERY = 10


@dataclass
class SAETrainConfig:
    """Everything a job needs; written to <sae>/config.json, and a resumed job reads it back."""
    hook: str = "blocks.2.hook_resid_post"
    expansion: int = 4
    k: int = 32
    kind: str = "topk"
    l1_coef: float = 5.0
    steps: int = 600
    batch_tokens: int = 2048
    lr: float = 2e-3
    dead_tokens: int = 200_000
    eval_every: int = 200
    save_every: int = 50
    val_windows: int = 32
    index_windows: int = 64
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAETrainConfig":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _windows(split: torch.Tensor, n: int, T: int, g: torch.Generator) -> torch.Tensor:
    ix = torch.randint(len(split) - T - 1, (n,), generator=g)  # (n,)
    return split[ix[:, None] + torch.arange(T + 1)].long()  # (n, T+1)


class _Reached(Exception):
    """Raised by the edit at the hook to end the forward there (the later blocks are not needed)."""

    def __init__(self, act: torch.Tensor) -> None:
        super().__init__()
        self.act = act


def _stop_at(act: torch.Tensor) -> torch.Tensor:
    raise _Reached(act)


@torch.no_grad()
def hook_acts(model: torch.nn.Module, ids: torch.Tensor, hook: str) -> torch.Tensor:
    """The unedited model's activation at `hook` on ids (B, T), as (B*T, C) float32. The forward
    stops at the hook (an edit there raises with the value a Recorder would store), which halves
    the cost for a middle layer; tests check it equals Recorder's."""
    try:
        model(ids, edit=Edits({hook: _stop_at}, key=("stop_at", hook)))
    except _Reached as r:
        return r.act.float().reshape(-1, r.act.size(-1))  # (B*T, C)
    raise SAEError(f"the forward never reached {hook}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, sae: SAE, val: torch.Tensor, chunk: int = 8) -> dict[str, float]:
    """Held-out figures on val windows (N, T+1): fve, mse (normalised), l0, dead (fraction of
    latents that never fire), ce_clean, ce_sae, ce_zero, ce_recovered."""
    from gpt.sae import splice_edit

    zero = Edits({sae.hook: lambda a: torch.zeros_like(a)}, key=("zero", sae.hook))
    splice = splice_edit(sae)
    err = tot = l0 = 0.0
    fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool, device=val.device)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    xs = []
    for s in range(0, val.size(0), chunk):
        x, y = val[s:s + chunk, :-1], val[s:s + chunk, 1:].contiguous()
        xs.append(hook_acts(model, x, sae.hook))
        for name, e in (("clean", None), ("sae", splice), ("zero", zero)):
            ce[name] += float(model(x, targets=y, edit=e)[1]) * x.size(0)
    X = torch.cat(xs)  # (N*T, C)
    mu = X.mean(0)
    for s in range(0, X.size(0), 8192):
        x = X[s:s + 8192]
        x_hat, z = sae(x)
        err += float((x - x_hat).pow(2).sum())
        tot += float((x - mu).pow(2).sum())
        l0 += float((z > 0).sum())
        fired |= (z > 0).any(0)
    ce = {k: v / val.size(0) for k, v in ce.items()}
    rec = (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]) if ce["zero"] != ce["clean"] else float("nan")
    return {"fve": 1 - err / tot, "mse": err / tot, "l0": l0 / X.size(0), "dead": float((~fired).float().mean()),
            "ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"], "ce_recovered": rec}


def _lr(cfg: SAETrainConfig, step: int) -> float:
    """Constant after a 20-step warmup, decaying linearly to 0 over the last 20% of steps."""
    warm = min(1.0, (step + 1) / 20)
    tail = min(1.0, (cfg.steps - step) / max(1.0, 0.2 * cfg.steps))
    return cfg.lr * warm * tail


# -- the job ------------------------------------------------------------------------------------------
def train_sae(run_dir: str | os.PathLike, cfg: SAETrainConfig | None = None, name: str | None = None,
              fresh: bool = False, should_stop: Callable[[], bool] = lambda: False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the SAE <run>/sae/<name> (name defaults to the hook); return the final
    status. cfg None: the saved config.json (resume) or the defaults. SAEError (a ValueError) when
    it cannot run: no such run, a bad hook, busy, or a corpus that cannot be had offline."""
    from trainers.analyze import AnalysisError, validation_windows
    from trainers.runfolder import get_dict, load_json

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SAEError(f"no run named {run_dir.name!r} in {run_dir.parent}")
    saved = read_json(sae_path(run_dir, name or (cfg or SAETrainConfig()).hook) / CONFIG)
    if cfg is None:
        cfg = SAETrainConfig.from_dict(saved) if saved and not fresh else SAETrainConfig()
    d = sae_path(run_dir, name or cfg.hook)
    with job_lock(d, SAEError, busy=f"the SAE {d.name!r} of run {run_dir.name!r} is already training; stop it, or wait",
                  unwritable="copy the run to a folder you can write"):
        if fresh:
            for f in (STATE, METRICS, "sae.json", "sae.safetensors", "index.json", "index.safetensors"):
                (d / f).unlink(missing_ok=True)
        ckpt = resolve_checkpoint(run_dir)
        model, tok, _ = load(ckpt)
        model = model.to(cfg.device).eval()
        check_hook(cfg.hook, model.config.n_layer)
        write_json_atomic(d / CONFIG, dict(asdict(cfg), checkpoint=str(ckpt)))
        run_cfg = load_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        try:
            from trainers.data import Corpus
            T = model.config.block_size
            val, data, _ = validation_windows(run_cfg, tok, cfg.val_windows, T + 1, cfg.seed + 1, log)
            index_ids, _, _ = validation_windows(run_cfg, tok, cfg.index_windows, T, cfg.seed + 2, log)
            corpus = Corpus.load(get_dict(run_cfg, "train")["data"], tok, log=lambda _m: None)
        except AnalysisError as e:
            raise SAEError(str(e)) from None

        def failed(msg: str) -> None:  # at the step status.json last said
            write_status(d, "failed", msg, step=int((read_json(d / STATUS) or {}).get("step") or 0), total=cfg.steps)

        with failure_recorded(SAEError, failed):
            return _loop(d, model, ckpt, corpus.train, val.to(cfg.device), index_ids.to(cfg.device), cfg, data,
                         should_stop, log)


def _loop(d: Path, model: torch.nn.Module, ckpt: Path, train: torch.Tensor, val: torch.Tensor,
          index_ids: torch.Tensor, cfg: SAETrainConfig, data: str, should_stop: Callable[[], bool],
          log: Callable[[str], None]) -> dict[str, Any]:
    C, T = model.config.n_embd, model.config.block_size
    scfg = SAEConfig(d_in=C, n_latents=C * cfg.expansion, k=cfg.k, kind=cfg.kind, l1_coef=cfg.l1_coef)
    torch.manual_seed(cfg.seed)
    sae = SAE(scfg, cfg.hook, {"run": d.parent.parent.name, "data": data}).to(cfg.device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    since = torch.zeros(scfg.n_latents, dtype=torch.long, device=cfg.device)  # tokens since each last fired
    step = 0
    if (d / STATE).is_file():
        step, since = _load_state(d, sae, opt, cfg.device)
        _truncate_metrics(d, step)  # rows logged after the state a kill lost
        log(f"resuming at step {step}")
    B = max(1, cfg.batch_tokens // T)
    log(f"SAE on {cfg.hook} of {ckpt}: {scfg.kind}, {scfg.n_latents} latents (x{cfg.expansion}), k={scfg.k}, "
        f"{cfg.steps} steps of {B * T} tokens from {data}, device {cfg.device}, {torch.get_num_threads()} threads")
    t0, step_t0 = time.monotonic(), step
    write_status(d, "running", f"step {step}/{cfg.steps}", step=step, total=cfg.steps)
    try:
        while step < cfg.steps:
            check_stop(d, should_stop)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            ids = _windows(train, B, T, g)[:, :-1].to(cfg.device)  # (B, T)
            x = hook_acts(model, ids, cfg.hook)  # (B*T, C)
            if step == 0:
                sae.init_bias(x)
            out = sae.losses(x, dead=since >= cfg.dead_tokens)
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            sae.remove_parallel_grad()
            opt.step()
            sae.normalize_decoder()
            fired = (out["z"] > 0).any(0)
            since = torch.where(fired, torch.zeros_like(since), since + x.size(0))
            step += 1
            if step % LOG_EVERY == 0 or step == cfg.steps:
                el = time.monotonic() - t0
                append_jsonl(d / METRICS, {
                    "kind": "train", "step": step, "tokens": step * B * T, "mse": float(out["mse"].detach()),
                    "fve": 1 - float(out["mse"].detach()), "l0": float((out["z"] > 0).sum(-1).float().mean()),
                    "dead": float((since >= cfg.dead_tokens).float().mean()), "aux": float(out["aux"].detach()),
                    "lr": _lr(cfg, step - 1), "tokens_per_s": (step - step_t0) * B * T / max(el, 1e-9)})
                write_status(d, "running", f"step {step}/{cfg.steps}", step=step, total=cfg.steps)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ev = evaluate(model, sae.eval(), val)
                sae.train()
                append_jsonl(d / METRICS, {"kind": "eval", "step": step, **ev})
                log(f"step {step}: held-out FVE {ev['fve']:.3f}, L0 {ev['l0']:.1f}, dead {ev['dead']:.3f}, "
                    f"CE recovered {ev['ce_recovered']:.3f}")
            if step % cfg.save_every == 0 and step < cfg.steps:
                _save_state(d, sae, opt, step, since)
    except StopRequested:
        _save_state(d, sae, opt, step, since)
        save_sae(sae.eval(), d, checkpoint=ckpt, extra={"step": step, "finished": False})
        clear_stop(d)
        return last_status(d, "stopped", f"stopped at step {step}/{cfg.steps}; start it again to resume",
                           step=step, total=cfg.steps)
    el = time.monotonic() - t0
    write_status(d, "running", "building the feature index", step=step, total=cfg.steps)
    ev = evaluate(model, sae.eval(), val)
    save_sae(sae, d, checkpoint=ckpt, extra={"step": step, "finished": True, "eval": ev,
                                             "train_seconds": round(el, 1), "tokens": step * B * T})
    save_index(d, build_index(model, sae, index_ids, meta={"hook": cfg.hook, "data": data}))
    _save_state(d, sae, opt, step, since)
    clear_stop(d)
    msg = (f"trained {step} steps ({step * B * T:,} tokens) in {el:.0f} s: held-out FVE {ev['fve']:.3f}, "
           f"L0 {ev['l0']:.1f}, dead {ev['dead']:.1%}, CE loss recovered {ev['ce_recovered']:.3f}")
    return last_status(d, "finished", msg, step=step, total=cfg.steps, eval=ev)


# -- the CLI ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m trainers.train_sae", (
        "Train a sparse autoencoder on one hook of a run's model (activations streamed from the run's corpus) "
        "into <run>/sae/<name>/. Resumes where it stopped; SIGTERM, Ctrl-C or <sae>/STOP stop it."))
    p.add_argument("--hook", help="e.g. blocks.2.hook_resid_post (default that, or the saved config's)")
    p.add_argument("--name", help="the SAE's folder name under <run>/sae (default: the hook)")
    dflt = SAETrainConfig()
    for f in fields(SAETrainConfig):
        if f.name != "hook":
            p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(dflt, f.name)),
                           help=f"(default {getattr(dflt, f.name)}, or the saved config's)")
    return parse_job_args(p, argv, "delete this SAE's results and start over")


def main(argv: list[str] | None = None) -> int:
    """The CLI; exit 0 (finished or stopped), 1 (refused or failed), 2 (bad flags)."""
    from trainers.runs import run_path

    args = parse_args(argv)

    def job(_threads: int, should_stop: Callable[[], bool], log: Callable[[str], None]) -> dict[str, Any]:
        # (a ValueError is exit 1: SAEError, a bad run name)
        run_dir = run_path(args.run, args.root)
        name = args.name or args.hook
        saved = read_json(sae_path(run_dir, name or SAETrainConfig().hook) / CONFIG) if not args.fresh else None
        base = asdict(SAETrainConfig.from_dict(saved)) if saved else asdict(SAETrainConfig())
        given = {f.name: getattr(args, f.name) for f in fields(SAETrainConfig) if getattr(args, f.name, None) is not None}
        cfg = SAETrainConfig.from_dict({**base, **given})
        if cfg.steps < 1 or cfg.batch_tokens < 1 or cfg.expansion < 1:
            raise BadSettings("--steps, --batch-tokens and --expansion must be at least 1")
        return train_sae(run_dir, cfg, name=name, fresh=args.fresh, should_stop=should_stop, log=log)

    return run_job(args.threads, "this step", job, report=lambda st: print(json.dumps(st.get("eval", {})), flush=True))


if __name__ == "__main__":
    sys.exit(main())
