"""The bundled model's SAE against the issue's goals, on held-out text: FVE >= 0.90 at L0 <= 32,
dead latents <= 10%, CE loss recovered >= 0.9; optionally a fresh training run, timed.

    .venv/bin/python -m bench.bench_sae                      # the shipped SAE, held out
    .venv/bin/python -m bench.bench_sae --train              # also train one afresh (a temp copy), timed
    .venv/bin/python -m bench.bench_sae --train --device cuda --steps 600   # tokens/s on a GPU

Held out: 64 windows of 256 tokens from the validation split at seed 100 (the job itself evaluates
on 32 windows at seed 1 and builds its index at seed 2). Dead: latents that fire on none of those
16,384 tokens. CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), where the hook's
activation is replaced by the SAE's reconstruction (sae) or by zeros (zero).

SAELens side by side (`$SAELENS_PYTHON`: the python of a separate venv with sae-lens; see
bench.peers.saelens_python):

    SAELENS_PYTHON=.devwork/saelens-venv/bin/python .venv/bin/python -m bench.bench_sae [--train]

caches the activations our trainer trains on (`cache_activations`: the same windows in the same
order, from trainers.train_sae's own sampling and hook_acts) in a temp dir, runs bench/saelens_peer.py
there (SAELens's TopKTrainingSAE + SAETrainer, same width, k, steps, batch, lr and schedule; the
options that differ are listed in its docstring), loads the weights it writes into our SAE class
(`sae_from_peer`; SAELens's inference weights are the same maths), checks that our forward of them
reproduces SAELens's own reconstruction of 2048 held-out activations (to 1e-5), and evaluates both
SAEs with the same code (held_out). Our side is the fresh run with --train, else the shipped SAE
(trained with the same defaults on the same token stream). Without the variable the comparison is
skipped, and the script says so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench import machine, set_threads, table, verdict

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "checkpoints" / "shakespeare-char"
PEER_SCRIPT = ROOT / "bench" / "saelens_peer.py"
HOOK = "blocks.2.hook_resid_post"
GOALS = {"fve": (0.90, ">="), "l0": (32, "<="), "dead": (0.10, "<="), "ce_recovered": (0.9, ">=")}
PEER_KEYS = {"W_enc": 2, "b_enc": 1, "W_dec": 2, "b_dec": 1}  # SAELens's names and ranks, as ours
PARITY_ATOL = 1e-5
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "WANDB_SILENT": "true", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def held_out_windows(run_dir: Path, windows: int = 64, seed: int = 100) -> tuple[Any, torch.Tensor]:
    """(the run's model in eval mode, `windows` fresh validation windows (windows, T+1))."""
    from gpt.checkpoint import load, resolve_checkpoint
    from trainers.analyze import validation_windows
    from trainers.runfolder import load_json

    model, tok, _ = load(resolve_checkpoint(run_dir))
    model.eval()
    val, _, _ = validation_windows(load_json(run_dir / "config.json"), tok, windows, model.config.block_size + 1,
                                   seed, lambda _m: None)
    return model, val


def held_out(run_dir: Path, sae: "Path | Any", windows: int = 64, seed: int = 100) -> dict[str, float]:
    """trainers.train_sae.evaluate of `sae` (an SAE, or the folder of one) on `windows` fresh
    validation windows of the run in run_dir: the same code for our SAE and the peer's."""
    from gpt.sae import load_sae
    from trainers.train_sae import evaluate

    model, val = held_out_windows(run_dir, windows, seed)
    if isinstance(sae, (str, os.PathLike)):
        sae = load_sae(sae, model=model, hook=HOOK)
    else:
        sae.check_model(model.config, HOOK)
    return evaluate(model, sae, val)


# -- the activations both trainers see --------------------------------------------------------------
def activation_batches(model: torch.nn.Module, train: torch.Tensor, cfg: Any) -> Iterator[torch.Tensor]:
    """The (B*T, C) float32 activations at cfg.hook that trainers.train_sae trains on at steps
    0..cfg.steps-1, in order: the same seeded windows (its _windows with the generator seeded as its
    loop seeds it) through the same hook_acts. cfg: a trainers.train_sae.SAETrainConfig."""
    from trainers.train_sae import _windows, hook_acts

    T = model.config.block_size
    B = max(1, cfg.batch_tokens // T)
    for step in range(cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # as train_sae._loop seeds step `step`
        ids = _windows(train, B, T, g)[:, :-1].to(cfg.device)  # (B, T)
        yield hook_acts(model, ids, cfg.hook)  # (B*T, C)


def cache_activations(run_dir: Path, cfg: Any, path: Path) -> dict[str, Any]:
    """Write the activations of `activation_batches` for the run in run_dir to `path` (safetensors,
    "acts" (steps*B*T, C) float32, in training order); return {"rows", "d_in", "batch", "seconds",
    "cpu_s"} (wall and CPU seconds: the model forwards that our trainer runs inside its loop).
    SAEError when the run's corpus cannot be had offline."""
    from safetensors.torch import save_file

    from gpt.checkpoint import load, resolve_checkpoint
    from gpt.sae import SAEError, check_hook
    from trainers.data import Corpus
    from trainers.runfolder import get_dict, load_json

    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    model, tok, _ = load(resolve_checkpoint(run_dir))
    model = model.to(cfg.device).eval()
    check_hook(cfg.hook, model.config.n_layer)
    try:
        corpus = Corpus.load(get_dict(load_json(run_dir / "config.json"), "train")["data"], tok, log=lambda _m: None)
    except (ValueError, OSError, KeyError) as e:
        raise SAEError(f"the run's training corpus cannot be read ({e}); it is needed to cache activations") from None
    acts = None  # (steps*B*T, C), filled batch by batch: one copy in memory, not two
    for i, x in enumerate(activation_batches(model, corpus.train, cfg)):  # x (B*T, C)
        if acts is None:
            acts = torch.empty(cfg.steps * x.size(0), x.size(1))
        acts[i * x.size(0):(i + 1) * x.size(0)] = x.cpu()
    if acts is None:
        raise SAEError(f"steps must be at least 1, got {cfg.steps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"acts": acts}, str(path), metadata={"hook": cfg.hook, "steps": str(cfg.steps)})
    return {"rows": acts.size(0), "d_in": acts.size(1), "batch": acts.size(0) // cfg.steps,
            "seconds": time.monotonic() - t0, "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0.ru_utime}


# -- the peer's weights in our SAE --------------------------------------------------------------------
def sae_from_peer(path: Path, k: int, hook: str = HOOK) -> Any:
    """Our SAE (eval mode, no grad) holding the weights in the peer's file: SAELens's inference
    state dict, W_enc (d_in, n), b_enc (n,), W_dec (n, d_in), b_dec (d_in,), decoder norms folded, so
    that our forward ((x - b_dec) @ W_enc + b_enc, TopK k, ReLU, z @ W_dec + b_dec) is SAELens's.
    SAEError, saying what to do, when the file is missing or holds other tensors."""
    from safetensors.torch import load_file

    from gpt.sae import SAE, SAEConfig, SAEError

    try:
        t = load_file(str(path))
    except (OSError, ValueError) as e:
        raise SAEError(f"{path} cannot be read ({e}); run the SAELens peer again") from None
    if sorted(t) != sorted(PEER_KEYS) or any(t[n].dim() != r for n, r in PEER_KEYS.items()):
        raise SAEError(f"{path} holds {sorted((n, tuple(v.shape)) for n, v in t.items())}, not SAELens's "
                       "W_enc (d_in, n), b_enc (n), W_dec (n, d_in), b_dec (d_in); run the SAELens peer again")
    d_in, n = t["W_enc"].shape
    if t["W_dec"].shape != (n, d_in) or t["b_enc"].shape != (n,) or t["b_dec"].shape != (d_in,):
        raise SAEError(f"{path}: the shapes of W_enc, b_enc, W_dec, b_dec do not agree; run the SAELens peer again")
    sae = SAE(SAEConfig(d_in=d_in, n_latents=n, k=k), hook, {"peer": "SAELens"})
    sae.load_state_dict({name: v.float() for name, v in t.items()}, strict=True)
    return sae.eval().requires_grad_(False)


def run_peer(python: Path, work: Path, cfg: Any, width: int, batch: int, log: Callable[[str], None] = print,
             timeout: float = 3600.0) -> dict[str, Any]:
    """Run bench/saelens_peer.py with `python` on work/acts.safetensors and work/probe.safetensors
    with cfg's (SAETrainConfig) k, lr, steps and seed, `width` latents and `batch` tokens a step, one
    thread, offline; return its peer.json. RuntimeError with the tail of its log on failure."""
    out = work / "peer"
    cmd = [str(python), str(PEER_SCRIPT), "--acts", str(work / "acts.safetensors"), "--probe",
           str(work / "probe.safetensors"), "--out", str(out), "--width", str(width), "--k", str(cfg.k),
           "--lr", str(cfg.lr), "--batch", str(batch), "--steps", str(cfg.steps), "--seed", str(cfg.seed),
           "--threads", "1"]
    log("  " + " ".join(cmd))
    with open(work / "peer.log", "w") as f:
        p = subprocess.run(cmd, cwd=work, env={**os.environ, **OFFLINE_ENV}, stdin=subprocess.DEVNULL, stdout=f,
                           stderr=subprocess.STDOUT, timeout=timeout)
    if p.returncode != 0:
        tail = (work / "peer.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the SAELens peer exited with {p.returncode}:\n{tail}")
    return json.loads((out / "peer.json").read_text())


def train_fresh(steps: int | None, device: str) -> dict[str, float]:
    """Train the default SAE on a temp copy of the bundled run; wall and CPU seconds, tokens/s."""
    from trainers.train_sae import SAETrainConfig, train_sae

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "shakespeare-char"
        run.mkdir()
        for name in ("config.json", "latest", "best"):
            src = BUNDLED / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, run / name)
        cfg = SAETrainConfig(hook=HOOK, device=device, **({"steps": steps} if steps else {}))
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        st = train_sae(run, cfg, log=lambda m: print("  " + m, flush=True))
        wall = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        rows = [json.loads(x) for x in (run / "sae" / HOOK / "metrics.jsonl").read_text().splitlines()]
        tps = [r["tokens_per_s"] for r in rows if r.get("kind") == "train"]
        out = held_out(run, run / "sae" / HOOK) if device == "cpu" else dict(st["eval"])
        out.update(wall_s=wall, cpu_s=(cpu1.ru_utime - cpu0.ru_utime), tokens=st["step"] * cfg.batch_tokens,
                   tokens_per_s=tps[-1] if tps else float("nan"))
        return out


def report(name: str, ev: dict[str, float]) -> list[list[str]]:
    rows = []
    for k, (target, op) in GOALS.items():
        ok = ev[k] >= target if op == ">=" else ev[k] <= target
        rows.append([name, k, f"{ev[k]:.3f}", f"{op} {target}", verdict(ok)])
    return rows


def side_by_side(python: Path, ours: dict[str, float], ours_name: str, log: Callable[[str], None] = print
                 ) -> dict[str, Any]:
    """Train SAELens (with `python`) on the cached activations of the bundled run, check the parity of
    its weights in our SAE, evaluate it held out; return {"peer": its held-out figures + timing,
    "info": its peer.json, "parity": max |ours - SAELens| on the probe, "cache": cache_activations'}."""
    from safetensors.torch import load_file, save_file

    from trainers.train_sae import SAETrainConfig, hook_acts

    cfg = SAETrainConfig(hook=HOOK)
    with tempfile.TemporaryDirectory(prefix="nanolens-saelens-") as tmp:
        work = Path(tmp)
        log(f"  caching {cfg.steps} x {cfg.batch_tokens} activations at {HOOK} ...")
        cache = cache_activations(BUNDLED, cfg, work / "acts.safetensors")
        model, val = held_out_windows(BUNDLED)
        probe = torch.cat([hook_acts(model, val[s:s + 4, :-1], HOOK) for s in range(0, 8, 4)])  # (2048, C)
        save_file({"x": probe.contiguous()}, str(work / "probe.safetensors"))
        log(f"  cached {cache['rows']:,} x {cache['d_in']} in {cache['seconds']:.0f} s; training SAELens ...")
        info = run_peer(python, work, cfg, cache["d_in"] * cfg.expansion, cache["batch"], log)
        sae = sae_from_peer(work / "peer" / "peer.safetensors", cfg.k)
        theirs = load_file(str(work / "peer" / "recon.safetensors"))["recon"]  # (2048, C)
        with torch.no_grad():
            mine = sae(probe)[0]
        parity = float((mine - theirs).abs().max())
        peer = held_out(BUNDLED, sae)
    peer.update(wall_s=info["wall_s"], cpu_s=info["cpu_s"], tokens=info["tokens"], tokens_per_s=info["tokens_per_s"])
    return {"peer": peer, "info": info, "parity": parity, "cache": cache, "ours": ours, "ours_name": ours_name}


def print_side_by_side(r: dict[str, Any]) -> None:
    """Both SAEs' held-out figures and training cost, one column each."""
    o, p, info = r["ours"], r["peer"], r["info"]
    rows = [[k, f"{o[k]:.3f}", f"{p[k]:.3f}", f"{op} {t}"] for k, (t, op) in GOALS.items()]
    rows += [[k, f"{o[k]:.3f}", f"{p[k]:.3f}", ""] for k in ("ce_clean", "ce_sae", "ce_zero")]

    def cost(d: dict[str, Any], key: str, fmt: str) -> str:
        return format(d[key], fmt) if isinstance(d.get(key), (int, float)) else "n/a"

    rows += [["train wall s (1 thread)", cost(o, "wall_s", ".0f"), cost(p, "wall_s", ".0f"), ""],
             ["train CPU s", cost(o, "cpu_s", ".0f"), cost(p, "cpu_s", ".0f"), ""],
             ["tokens", cost(o, "tokens", ","), cost(p, "tokens", ","), ""],
             ["tokens/s", cost(o, "tokens_per_s", ",.0f"), cost(p, "tokens_per_s", ",.0f"), ""]]
    print(table(["figure (held out)", r["ours_name"], f"SAELens {info['sae_lens']}", "goal"], rows))
    print(f"caching the activations (the model forward to {HOOK}, which our trainer runs inside its loop and "
          f"SAELens reads from the cache) took {r['cache']['seconds']:.0f} s wall, {r['cache']['cpu_s']:.0f} s CPU")
    print(f"parity: our forward of SAELens's weights vs its own reconstruction of 2048 held-out activations: "
          f"max |diff| {r['parity']:.2e} ({verdict(r['parity'] <= PARITY_ATOL)} at {PARITY_ATOL:g})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.peers import saelens_how_to_get, saelens_python

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", action="store_true", help="also train a fresh SAE with the defaults, timed")
    p.add_argument("--steps", type=int, help="steps of the fresh run (default: the job's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    set_threads(a.threads)
    print(json.dumps(machine()))
    shipped = held_out(BUNDLED, BUNDLED / "sae" / HOOK)
    rows = report("shipped", shipped)
    result: dict[str, Any] = {"shipped": shipped}
    ours, ours_name = dict(shipped), "ours (shipped)"
    meta = json.loads((BUNDLED / "sae" / HOOK / "sae.json").read_text())
    ours.update(wall_s=meta.get("train_seconds"), tokens=meta.get("tokens"))
    if a.train:
        fresh = train_fresh(a.steps, a.device)
        rows += report(f"fresh ({a.device})", fresh)
        print(f"fresh run: {fresh['tokens']:,} tokens in {fresh['wall_s']:.0f} s wall, {fresh['cpu_s']:.0f} s CPU, "
              f"{fresh['tokens_per_s']:,.0f} tokens/s (last logged)")
        result["fresh"] = fresh
        if a.device == "cpu" and not a.steps:
            ours, ours_name = fresh, "ours (fresh)"
    print(table(["SAE", "figure", "measured", "goal", "verdict"], rows))
    py = saelens_python()
    if py is None:
        print(saelens_how_to_get())
        return result
    if a.device != "cpu" or a.threads != 1 or a.steps:
        print("SAELens: the side by side runs with the defaults on the CPU, 1 thread; drop --device, --threads "
              "and --steps to run it")
        return result
    print(f"SAELens side by side, with {py}:")
    if ours_name == "ours (shipped)":
        print(f"  our training time is the shipped SAE's own record ({ours['wall_s']} s wall, when it was trained; "
              "BENCHMARKS.md has an idle-machine figure); pass --train to time a fresh run here")
    try:
        r = side_by_side(py, ours, ours_name)
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as e:
        print(f"SAELens: the side-by-side run failed: {e}")
        return result
    print_side_by_side(r)
    result["saelens"] = {k: r[k] for k in ("peer", "info", "parity", "cache")}
    return result


if __name__ == "__main__":
    main()
