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
Anything that is not a checkpoint raises CheckpointError naming the file and the problem; a config
is checked against the weights before a model is built (gpt/weights.py).

A save is two renames; a process killed between them leaves complete hidden copies
(.<name>.tmp-*, .<name>.old-*) and no folder. `load` reads through them and says so in
meta["load_note"]; `recover(run_dir)` puts the newest complete copy back, deleting nothing complete.
Run folders, their layout helpers and recovery are gpt/layout.py's (re-exported here).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.tokenizer import Tokenizer, tokenizer_from_dict
# CheckpointError and the weights checks live in gpt/weights.py, the run-folder layout and recovery
# in gpt/layout.py; both are re-exported from here, so callers import everything from one place
from gpt.weights import (MAX_JSON_BYTES, TIED, CheckpointError, build_model, check_shapes,
                         error_detail, file_problem, load_state_dict_file, safetensors_shapes,
                         size_words)
from gpt.layout import (  # noqa: F401  (re-exported: the one import place for callers)
    BEST, CONFIG, FORMAT, HIDDEN_RE, LATEST, OPTIMIZER, SNAPSHOT_RE, SNAPSHOTS, VERSION, WEIGHTS,
    _fsync, _is_native, _is_ours, _is_run, _read_json, _resolve, best_dir, checkpoints_root, has_checkpoint,
    hidden_copies, latest_dir, list_snapshots, recover, resolve_checkpoint, run_of, snapshot_dir)

STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
Fits = Callable[[GPTConfig, Path], None]  # raises when a model of that config does not fit the device

# -- saving ----------------------------------------------------------------------------------------
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
    folder at `path` (complete copies remain in the `.tmp-`/`.old-` folders: load reads the newest
    and says so, recover puts it back; list_snapshots ignores them), never a half-written one.
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


# -- loading ---------------------------------------------------------------------------------------
def _load_native(folder: Path, device: str | torch.device, dtype: torch.dtype, fits: Fits | None = None
                 ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    info = _read_json(folder / CONFIG)
    version = info.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{folder / CONFIG}: format version {version!r} is newer than "
                              f"this nanolens reads ({VERSION}); update nanolens")
    meta = info.get("meta") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / CONFIG}: 'meta' must be a JSON object, got {type(meta).__name__}")
    try:
        config = GPTConfig.from_dict(info["model"])
        tokenizer = tokenizer_from_dict(info["tokenizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: bad model or tokenizer entry ({str(e)[:200]})") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{folder / CONFIG}: tokenizer has {tokenizer.vocab_size} tokens, "
                              f"more than the model's vocab_size {config.vocab_size}")
    shapes, nbytes = safetensors_shapes(folder / WEIGHTS)
    check_shapes(config, shapes, folder / WEIGHTS, nbytes)  # before a single tensor is read
    if fits is not None:
        fits(config, folder)
    model = build_model(config, load_state_dict_file(folder / WEIGHTS), folder / WEIGHTS, device, dtype)
    meta = dict(meta)
    meta.update(source_format=FORMAT, source=str(folder))
    return model, tokenizer, meta


def _load_resolved(p: Path, device: str | torch.device, dtype: torch.dtype, tokenizer: Tokenizer | None,
                   fits: Fits | None) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    from gpt import imports  # imports.py uses build_model from here; imported late to avoid a cycle

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
            return imports.load_nanogpt(p, device, dtype, tokenizer, fits)
    elif not p.is_dir():  # never open a device or a pipe: /dev/zero never ends, a FIFO blocks
        raise CheckpointError(f"{p}: not a regular file or folder (a device, pipe or socket); "
                              "give a checkpoint file or folder")
    if _is_native(p):
        return _load_native(p, device, dtype, fits)
    if (p / CONFIG).is_file():
        info = _read_json(p / CONFIG)
        if info.get("format") == FORMAT:
            raise CheckpointError(f"{p}: has config.json but no {WEIGHTS}; the checkpoint is incomplete")
        if info.get("model_type") is not None:
            return imports.load_hf_gpt2(p, info, device, dtype, fits)
    if (p / "ckpt.pt").is_file():  # a nanoGPT out_dir
        return imports.load_nanogpt(p / "ckpt.pt", device, dtype, tokenizer, fits)
    runs = sorted(d.name for d in p.iterdir() if d.is_dir() and _is_run(d))[:5]
    hint = f"; it holds runs {runs}: pass one of them" if runs else ""
    raise CheckpointError(f"{p}: not a checkpoint (expected a nanolens folder with {WEIGHTS} + "
                          f"{CONFIG}, a run folder, a nanoGPT ckpt.pt or a Hugging Face GPT-2 "
                          f"folder){hint}")


def _plain(path: str | os.PathLike, e: BaseException) -> CheckpointError:
    """Any failure inside load as a CheckpointError with a plain reason."""
    if isinstance(e, RecursionError):
        why = "nested too deeply to be a checkpoint"
    elif isinstance(e, MemoryError):
        why = "needs more memory than this machine has"
    elif isinstance(e, OSError):
        why = f"cannot be read ({e.strerror or e})"
    else:
        why = f"cannot be loaded ({error_detail(e)})"
    return CheckpointError(f"{path}: {why}")


def _load_once(path: str | os.PathLike, device: str | torch.device, dtype: torch.dtype, retry: bool,
               tokenizer: Tokenizer | None = None, fits: Fits | None = None
               ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    p = None
    try:
        p, note = _resolve(path)
        model, tok, meta = _load_resolved(p, device, dtype, tokenizer, fits)
    except CheckpointError as e:
        if retry and p is not None and not p.exists():
            raise _Swapped(str(e)) from None
        raise
    except Exception as e:
        raise _plain(path, e) from None
    notes = [n for n in (note, meta.get("load_note")) if n]
    if notes:
        meta["load_note"] = " ".join(notes)
    return model, tok, meta


class _Swapped(CheckpointError):
    """The folder being read was swapped away by a save."""


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         tokenizer: Tokenizer | None = None, fits: Fits | None = None
         ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, meta) from any checkpoint this project understands:
    a native folder (or its model.safetensors / config.json), a run folder (latest, else best,
    else newest snapshot), a nanoGPT ckpt.pt (or its out_dir; tokenizer from a meta.pkl beside
    it or in nanoGPT's data/<dataset>/), or a Hugging Face GPT-2 folder.

    `meta` gains "source_format" and "source", and "load_note" when something needs saying: that
    latest/ was being swapped and its complete hidden copy was loaded, that a run without a
    complete latest/ showed best/ or a snapshot, or where meta.pkl was found. Every failure is a
    CheckpointError with a plain reason; a config is checked against the weights before anything
    is built, so a tiny config file cannot make a huge model.

    `device` / `dtype`: where the model is made and in what (gpt.devices offers the choices).
    `tokenizer`: stands in for the meta.pkl a character nanoGPT ckpt.pt came without (ignored by
    the other formats; gpt.imports.tokenizer_options lists what fits). `fits(config, source)`: called
    once the config is known and before the weights are read (e.g. gpt.devices.require_fits, which
    raises TooLargeError, a CheckpointError, when the model would not fit the device).
    """
    try:
        return _load_once(path, device, dtype, True, tokenizer, fits)
    except _Swapped:  # a save swapped the folder away while we read it: look again, once
        return _load_once(path, device, dtype, False, tokenizer, fits)


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
