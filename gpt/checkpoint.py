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
# CheckpointError and the weights checks live in gpt/weights.py; they are re-exported from here
from gpt.weights import (MAX_JSON_BYTES, TIED, CheckpointError, build_model, check_shapes,
                         error_detail, file_problem, load_state_dict_file, safetensors_shapes,
                         size_words)

FORMAT, VERSION = "nanolens", 1
WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.pt"
STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SNAPSHOT_RE = re.compile(r"iter_(\d+)")
HIDDEN_RE = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-\w[\w-]*")  # save's .<name>.tmp-<pid>-<hex> folders


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


# -- reading ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:  # a config is a few KB; never read a huge file whole
            raise CheckpointError(f"{path}: {size_words(path.stat().st_size)}, too large for a config file")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a config file") from None
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


# -- interrupted saves: hidden copies, reading through them, recovering them ------------------------
def _newness(folder: Path) -> tuple[int, int]:
    """How new a complete checkpoint is: its meta iter (-1 when absent), then config.json's mtime."""
    try:
        meta = _read_json(folder / CONFIG).get("meta")
        it = meta.get("iter") if isinstance(meta, dict) else None
        return (it if isinstance(it, int) and not isinstance(it, bool) else -1,
                (folder / CONFIG).stat().st_mtime_ns)
    except (CheckpointError, OSError):
        return (-1, 0)


def _iter_words(folder: Path) -> str:
    it = _newness(folder)[0]
    return f" (iter {it})" if it >= 0 else ""


def _hidden_of(parent: Path) -> dict[str, list[Path]]:
    """{name: [its .<name>.tmp-* / .<name>.old-* folders]} in `parent` (complete or not)."""
    out: dict[str, list[Path]] = {}
    try:
        for p in parent.iterdir():
            m = HIDDEN_RE.fullmatch(p.name)
            if m and p.is_dir() and not p.is_symlink():
                out.setdefault(m["name"], []).append(p)
    except OSError:
        pass
    return out


def hidden_copies(target: str | os.PathLike) -> list[Path]:
    """The complete copies of `target` that a save in progress, or one killed between its two
    renames, has beside it (.<name>.tmp-*, .<name>.old-*), newest first."""
    t = Path(target)
    return sorted((p for p in _hidden_of(t.parent).get(t.name, []) if _is_native(p)),
                  key=_newness, reverse=True)


def _swapped(name: str, copy: Path) -> str:
    return (f"{name}/ is being replaced (a save in progress, or one that was interrupted); loaded "
            f"its complete copy {copy.name}{_iter_words(copy)}")


def _resolve(path: str | os.PathLike, which: str | int = "latest") -> tuple[Path, str | None]:
    """(the checkpoint `path` names, a note when it is not exactly the folder asked for, else None)."""
    p = Path(path)
    try:
        exists = p.exists()
    except OSError as e:  # ENAMETOOLONG and friends
        raise CheckpointError(f"{p}: cannot be read ({e.strerror or e})") from None
    if not exists:
        copies = hidden_copies(p)
        if copies:
            return copies[0], _swapped(p.name, copies[0]) + "."
        raise CheckpointError(f"{p}: no such file or folder")
    if not (p.is_dir() and _is_run(p) and not _is_native(p)):
        return p, None
    if isinstance(which, int) and not isinstance(which, bool):
        snaps = list_snapshots(p)
        for it, sp in snaps:
            if it == which:
                return sp, None
        copies = hidden_copies(snapshot_dir(p, which))
        if copies:
            return copies[0], _swapped(f"{SNAPSHOTS}/{snapshot_dir(p, which).name}", copies[0]) + "."
        raise CheckpointError(f"{p}: no snapshot for iter {which}; "
                              f"available: {[it for it, _ in snaps] or 'none'}")
    if which not in ("latest", "best"):
        raise CheckpointError(f"which must be 'latest', 'best' or an iteration number, got {which!r}")
    for name in [LATEST, BEST] if which == "latest" else [BEST]:
        folder = p / name
        found = folder if _is_native(folder) else next(iter(hidden_copies(folder)), None)
        if found is None:
            continue
        notes = [f"{p.name} has no complete latest/; showing best/{_iter_words(found)} instead."
                 if name != which else "", _swapped(name, found) + "." if found != folder else ""]
        return found, " ".join(n for n in notes if n) or None
    snaps = list_snapshots(p)
    if which == "latest" and snaps:
        return snaps[-1][1], (f"{p.name} has no latest/ or best/ yet; showing its newest snapshot "
                              f"(iter {snaps[-1][0]}).")
    what = "best/" if which == "best" else "complete latest/, best/ or snapshots/iter_*"
    raise CheckpointError(f"{p}: run folder has no checkpoint yet (no {what})")


def resolve_checkpoint(path: str | os.PathLike, which: str | int = "latest") -> Path:
    """The checkpoint that `path` names.

    For a run folder: which="latest" gives latest/, else best/, else the newest snapshot;
    "best" gives best/; an int gives snapshots/iter_<n:07d>. Where the folder asked for is missing
    because a save is swapping it (or was killed mid-swap), its newest complete hidden copy is
    given instead (load says so in meta["load_note"]). Any other path is returned as is (when it
    exists) for `load` to detect. CheckpointError when there is no such checkpoint.
    """
    return _resolve(path, which)[0]


def recover(run_dir: str | os.PathLike) -> list[str]:
    """Put a run folder right after a process was killed inside `save`; call it only while no
    process writes the run (resume does, before it trains).

    For latest/, best/ and each snapshot, the newest complete copy among the folder itself and
    the hidden copies an interrupted save left (.<name>.tmp-*, .<name>.old-*) is put in place.
    Then the hidden leftovers that are incomplete, or no newer than what is now in place, are
    removed: a complete copy is removed only once one at least as new is in place, so nothing
    is lost. A folder in the way that is not a nanolens checkpoint is left alone, with its
    copies. Returns one line per folder restored, e.g. "best/: restored .best.tmp-12-ab (iter 40)".
    """
    d = Path(run_dir)
    restored = []
    for parent in (d, d / SNAPSHOTS):
        for name, hidden in sorted(_hidden_of(parent).items()):
            target = parent / name
            complete = [p for p in hidden if _is_native(p)]
            newest = max(complete, key=_newness, default=None)
            if newest is not None and (not _is_native(target) or _newness(newest) > _newness(target)):
                if target.exists() or target.is_symlink():
                    if not (target.is_dir() and (_is_ours(target) or not any(target.iterdir()))):
                        continue  # not ours: touch nothing here
                    aside = parent / f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    os.rename(target, aside)
                    hidden.append(aside)
                os.rename(newest, target)
                hidden.remove(newest)
                where = f"{SNAPSHOTS}/{name}/" if parent != d else f"{name}/"
                restored.append(f"{where}: restored the complete copy {newest.name}{_iter_words(target)}")
            for p in hidden:  # incomplete, or no newer than the complete copy now in place
                shutil.rmtree(p, ignore_errors=True)
            _fsync(parent)
    return restored


# -- loading ---------------------------------------------------------------------------------------
def _load_native(folder: Path, device: str | torch.device, dtype: torch.dtype
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
    model = build_model(config, load_state_dict_file(folder / WEIGHTS), folder / WEIGHTS, device, dtype)
    meta = dict(meta)
    meta.update(source_format=FORMAT, source=str(folder))
    return model, tokenizer, meta


def _load_resolved(p: Path, device: str | torch.device, dtype: torch.dtype
                   ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
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
            return imports.load_nanogpt(p, device, dtype)
    elif not p.is_dir():  # never open a device or a pipe: /dev/zero never ends, a FIFO blocks
        raise CheckpointError(f"{p}: not a regular file or folder (a device, pipe or socket); "
                              "give a checkpoint file or folder")
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


def _load_once(path: str | os.PathLike, device: str | torch.device, dtype: torch.dtype, retry: bool
               ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    p = None
    try:
        p, note = _resolve(path)
        model, tok, meta = _load_resolved(p, device, dtype)
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


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
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
    """
    try:
        return _load_once(path, device, dtype, retry=True)
    except _Swapped:  # a save swapped the folder away while we read it: look again, once
        return _load_once(path, device, dtype, retry=False)


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
