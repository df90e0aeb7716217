"""Checkpoints: save and load nanolens checkpoints, and load nanoGPT / Hugging Face GPT-2 ones.

A native checkpoint is a folder:
  model.safetensors  the weights; lm_head.weight is NOT stored because it is tied to
                     transformer.wte.weight (safetensors refuses tensors that share memory, and a
                     copy would double the file); `load` re-ties it by building a GPT.
  config.json        {"format": "nanolens", "version": 1, "model": GPTConfig.to_dict(),
                      "tokenizer": Tokenizer.to_dict(), "meta": {...}}
  optimizer.pt       optional, torch.save(optimizer.state_dict()), read with weights_only=True.

Nothing here ever runs code from a file: weights are safetensors or torch.load(weights_only=True),
and nanoGPT's meta.pkl goes through an unpickler that refuses every class (gpt/imports.py).
Anything that is not a checkpoint raises CheckpointError naming the file and the problem.

Run folders (written by trainers/, read by app/): <root>/<run>/ with config.json (the run config),
metrics.jsonl, status.json, latest/ (native + optimizer.pt), best/, snapshots/iter_0000000/...
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT, VERSION = "nanolens", 1
WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.pt"
TIED = ("lm_head.weight", "transformer.wte.weight")  # (dropped on save, kept)
STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SNAPSHOT_RE = re.compile(r"iter_(\d+)")


class CheckpointError(ValueError):
    """A path is not a loadable checkpoint; the message names the file and what is wrong."""


def checkpoints_root() -> Path:
    """$NANOLENS_CHECKPOINTS, else <repo>/checkpoints (not created here)."""
    env = os.environ.get("NANOLENS_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "checkpoints"


# -- saving ----------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def save(path: str | os.PathLike, model: torch.nn.Module, tokenizer: Tokenizer,
         meta: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
         optimizer: torch.optim.Optimizer | dict[str, Any] | None = None) -> Path:
    """Write a native checkpoint folder at `path` atomically and return its path.

    Weights are stored in `dtype` (float32, float16 or bfloat16); `load` gives float32 by default.
    `meta` must be JSON-able ("saved_at" is filled in when absent). `optimizer` is an optimizer or
    its state_dict. Everything is written into a hidden temp folder beside `path` and fsynced; then
    the folder is renamed into place. If `path` exists, it is first renamed aside to a hidden
    `.<name>.old-*` folder and deleted after the swap: a crash between those two renames leaves no
    folder at `path` (complete copies remain in the `.tmp-`/`.old-` folders, which load, list_snapshots
    and resolve_checkpoint ignore), never a half-written one.
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    config: GPTConfig = model.config
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype}")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{config.vocab_size}; they do not belong together")
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or _is_ours(path))):
        raise CheckpointError(f"{path}: exists and is not a nanolens checkpoint; refusing to replace it")
    meta = dict(meta or {})
    meta.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    info = {"format": FORMAT, "version": VERSION, "model": config.to_dict(),
            "tokenizer": tokenizer.to_dict(), "meta": meta}
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must be JSON-able (numbers, strings, lists, dicts): {e}") from None

    from safetensors.torch import save_file

    sd = model.state_dict()
    if TIED[0] in sd and sd[TIED[0]].data_ptr() == sd[TIED[1]].data_ptr():
        del sd[TIED[0]]
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in sd.items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        _fsync(tmp / WEIGHTS)
        if optimizer is not None:
            state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
            with open(tmp / OPTIMIZER, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        _write_json(tmp / CONFIG, info)  # last: a folder with config.json has its weights
        _fsync(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{tag}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- reading ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _is_native(folder: Path) -> bool:
    cfg = folder / CONFIG
    if not (cfg.is_file() and (folder / WEIGHTS).is_file()):
        return False
    try:
        return _read_json(cfg).get("format") == FORMAT
    except CheckpointError:
        return False


def _is_ours(folder: Path) -> bool:
    """A folder whose config.json says nanolens (complete or not): save may replace it."""
    try:
        return _read_json(folder / CONFIG).get("format") == FORMAT
    except CheckpointError:
        return False


# -- the run-folder layout: the one place that names a run's checkpoint folders ----------------------
LATEST, BEST, SNAPSHOTS = "latest", "best", "snapshots"


def latest_dir(run_dir: str | os.PathLike) -> Path:
    """<run>/latest: the last saved state, with optimizer state (what --resume continues)."""
    return Path(run_dir) / LATEST


def best_dir(run_dir: str | os.PathLike) -> Path:
    """<run>/best: the state with the lowest val loss so far."""
    return Path(run_dir) / BEST


def snapshot_dir(run_dir: str | os.PathLike, it: int) -> Path:
    """<run>/snapshots/iter_NNNNNNN: the snapshot kept at iteration `it` (for the Timeline page)."""
    return Path(run_dir) / SNAPSHOTS / f"iter_{int(it):07d}"


def has_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a complete native checkpoint (config.json says nanolens, weights there)."""
    return _is_native(Path(folder))


def run_of(ref: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint ref belongs to: the ref itself when it is a run, its parent for
    <run>/latest and <run>/best, its grandparent for <run>/snapshots/iter_N. None otherwise."""
    if not ref:
        return None
    p = Path(ref).expanduser()
    if p.parent.name == SNAPSHOTS and SNAPSHOT_RE.fullmatch(p.name):
        cand = p.parent.parent
    elif p.name in (LATEST, BEST):
        cand = p.parent
    else:
        cand = p
    return cand if cand.is_dir() and _is_run(cand) and not _is_native(cand) else None


def _is_run(folder: Path) -> bool:
    """A run folder: checkpoint subfolders, or (before the first save) a run config.json."""
    if any((folder / d).is_dir() for d in (LATEST, BEST, SNAPSHOTS)):
        return True
    try:
        return "train" in _read_json(folder / CONFIG) and not _is_native(folder)
    except CheckpointError:
        return False


def list_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(iter, folder)] of the complete snapshots/iter_* checkpoints of a run, sorted by iter."""
    snap = Path(run_dir) / SNAPSHOTS
    if not snap.is_dir():
        return []
    out = []
    for p in snap.iterdir():
        m = SNAPSHOT_RE.fullmatch(p.name)  # leftover .iter_*.tmp-* folders do not match
        if m and p.is_dir() and _is_native(p):
            out.append((int(m.group(1)), p))
    return sorted(out)


def resolve_checkpoint(path: str | os.PathLike, which: str | int = "latest") -> Path:
    """The checkpoint that `path` names.

    For a run folder: which="latest" gives latest/, else best/, else the newest snapshot;
    "best" gives best/; an int gives snapshots/iter_<n:07d>. Any other path is returned as is
    (when it exists) for `load` to detect. CheckpointError when there is no such checkpoint.
    """
    p = Path(path)
    if not p.exists():
        left = sorted(x.name for x in p.parent.glob(f".{p.name}.*-*") if (x / WEIGHTS).is_file())
        hint = (f"; an interrupted save left {left} beside it: rename the newest to {p.name!r} to "
                "recover it") if left else ""
        raise CheckpointError(f"{p}: no such file or folder{hint}")
    if not (p.is_dir() and _is_run(p) and not _is_native(p)):
        return p
    snaps = list_snapshots(p)
    if isinstance(which, int) and not isinstance(which, bool):
        for it, sp in snaps:
            if it == which:
                return sp
        raise CheckpointError(f"{p}: no snapshot for iter {which}; "
                              f"available: {[it for it, _ in snaps] or 'none'}")
    if which not in ("latest", "best"):
        raise CheckpointError(f"which must be 'latest', 'best' or an iteration number, got {which!r}")
    order = [latest_dir(p), best_dir(p)] if which == "latest" else [best_dir(p)]
    for c in order:
        if _is_native(c):
            return c
    if which == "latest" and snaps:
        return snaps[-1][1]
    what = "best/" if which == "best" else "complete latest/, best/ or snapshots/iter_*"
    raise CheckpointError(f"{p}: run folder has no checkpoint yet (no {what})")


def error_detail(e: BaseException) -> str:
    """The informative line of an exception; torch's weights_only errors wrap it in advice to
    set weights_only=False, which nanolens never does."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boiler)] or lines or [""]
    return f"{type(e).__name__}: {useful[0][:300]}"


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a torch file read with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # SafetensorError, UnpicklingError, RuntimeError (bad zip), EOFError...
        raise CheckpointError(f"{path}: cannot be read as weights ({error_detail(e)})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return sd


def build_model(config: GPTConfig, sd: dict[str, torch.Tensor], source: Path,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
    """A GPT with weights `sd` (nanoGPT key names); CheckpointError naming `source` and the first
    missing / unexpected / mis-shaped key. lm_head.weight may be absent (tied) or equal to wte."""
    model = GPT(config)
    sd = dict(sd)
    if TIED[0] in sd:
        if TIED[1] in sd and not torch.equal(sd[TIED[0]], sd[TIED[1]]):
            raise CheckpointError(f"{source}: lm_head.weight differs from transformer.wte.weight; "
                                  "only models with tied embeddings are supported")
        del sd[TIED[0]]
    expected = {k: v for k, v in model.state_dict().items() if k != TIED[0]}
    missing = [k for k in expected if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: missing weights {missing[:5]}"
                              f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}")
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected weights {unexpected[:5]} for this config")
    for k, v in expected.items():
        if sd[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(sd[k].shape)}, the config "
                                  f"needs {tuple(v.shape)}")
        if not sd[k].is_floating_point():  # NaNs are allowed: a diverged run is worth inspecting
            raise CheckpointError(f"{source}: {k} is {sd[k].dtype}, expected floating point")
    sd[TIED[0]] = sd[TIED[1]]
    model.load_state_dict(sd, strict=True)  # copies (and casts) into the tied parameters
    return model.to(device=device, dtype=dtype).eval()


def _load_native(folder: Path, device: str | torch.device, dtype: torch.dtype
                 ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    info = _read_json(folder / CONFIG)
    version = info.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{folder / CONFIG}: format version {version!r} is newer than "
                              f"this nanolens reads ({VERSION}); update nanolens")
    try:
        config = GPTConfig.from_dict(info["model"])
        tokenizer = tokenizer_from_dict(info["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: bad model or tokenizer entry ({e})") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{folder / CONFIG}: tokenizer has {tokenizer.vocab_size} tokens, "
                              f"more than the model's vocab_size {config.vocab_size}")
    model = build_model(config, load_state_dict_file(folder / WEIGHTS), folder / WEIGHTS, device, dtype)
    meta = dict(info.get("meta") or {})
    meta.update(source_format=FORMAT, source=str(folder))
    return model, tokenizer, meta


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
         ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, meta) from any checkpoint this project understands:
    a native folder (or its model.safetensors / config.json), a run folder (latest, else best,
    else newest snapshot), a nanoGPT ckpt.pt (or its out_dir; tokenizer from a meta.pkl beside
    it), or a Hugging Face GPT-2 folder. `meta` gains "source_format" and "source"."""
    from gpt import imports  # imports.py uses build_model from here; imported late to avoid a cycle

    p = resolve_checkpoint(path)
    if p.is_file():
        if p.name in (WEIGHTS, CONFIG, "pytorch_model.bin") and (p.parent / CONFIG).is_file():
            p = p.parent
        elif p.name == OPTIMIZER:
            raise CheckpointError(f"{p}: this is optimizer state, not a model; load its folder")
        elif p.name == "meta.pkl":
            raise CheckpointError(f"{p}: this is nanoGPT's tokenizer file; load the ckpt.pt beside it")
        elif p.suffix == ".safetensors":
            raise CheckpointError(f"{p}: a safetensors file needs its config.json beside it")
        else:
            return imports.load_nanogpt(p, device, dtype)
    if _is_native(p):
        return _load_native(p, device, dtype)
    if (p / CONFIG).is_file():
        info = _read_json(p / CONFIG)
        if info.get("format") == FORMAT:
            raise CheckpointError(f"{p}: has config.json but no {WEIGHTS}; the checkpoint is incomplete")
        if info.get("model_type") is not None:
            return imports.load_hf_gpt2(p, info, device, dtype)
    if (p / "ckpt.pt").is_file():  # a nanoGPT out_dir
        return imports.load_nanogpt(p / "ckpt.pt", device, dtype)
    runs = sorted(d.name for d in p.iterdir() if d.is_dir() and _is_run(d))[:5]
    hint = f"; it holds runs {runs}: pass one of them" if runs else ""
    raise CheckpointError(f"{p}: not a checkpoint (expected a nanolens folder with {WEIGHTS} + "
                          f"{CONFIG}, a run folder, a nanoGPT ckpt.pt or a Hugging Face GPT-2 "
                          f"folder){hint}")


def load_optimizer_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The optimizer state_dict saved with a checkpoint (a run folder means latest/), or None.
    For a nanoGPT ckpt.pt, its "optimizer" entry."""
    p = resolve_checkpoint(path)
    if p.is_file() and p.name in (WEIGHTS, CONFIG):
        p = p.parent
    if p.is_dir() and not (p / OPTIMIZER).is_file() and (p / "ckpt.pt").is_file():
        p = p / "ckpt.pt"  # a nanoGPT out_dir
    if p.is_file() and p.name != OPTIMIZER:
        from gpt import imports
        return imports.nanogpt_optimizer_state(p)
    f = p if p.is_file() else p / OPTIMIZER
    if not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{f}: cannot be read as optimizer state ({error_detail(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: expected an optimizer state_dict, got {type(state).__name__}")
    return state
