"""Run folders and checkpoint folders on disk: what they are called, what is in them, and how an
interrupted save is read through and recovered. No torch here; gpt.checkpoint (save and load)
builds on it and re-exports its public names, so callers import them from gpt.checkpoint.

A run folder (written by trainers/, read by app/): <root>/<run>/ with config.json (the run config),
metrics.jsonl, status.json, latest/ (native + optimizer.pt), best/, snapshots/iter_0000000/...,
analysis/ (head scores per snapshot), lens/ (a fitted tuned lens), sae/<hook>/ (sparse autoencoders).
This module is the one place that names those folders
(latest_dir, best_dir, snapshot_dir, analysis_dir, list_snapshots, run_of, resolve_checkpoint).

A save is two renames; a process killed between them leaves complete hidden copies
(.<name>.tmp-*, .<name>.old-*) and no folder. resolve_checkpoint reads through them and says so;
`recover(run_dir)` puts the newest complete copy back, deleting nothing complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from gpt.weights import MAX_JSON_BYTES, CheckpointError, size_words

FORMAT, VERSION = "nanolens", 1
WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.pt"
SNAPSHOT_RE = re.compile(r"iter_(\d+)")
HIDDEN_RE = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-\w[\w-]*")  # save's .<name>.tmp-<pid>-<hex> folders


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints_root() -> Path:
    """$NANOLENS_CHECKPOINTS, else <repo>/checkpoints (not created here)."""
    env = os.environ.get("NANOLENS_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "checkpoints"


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
LATEST, BEST, SNAPSHOTS, ANALYSIS = "latest", "best", "snapshots", "analysis"
LENS, SAE = "lens", "sae"  # a run's tuned lens (gpt.tuned_lens) and its SAEs, one folder per hook (gpt.sae_index)


def latest_dir(run_dir: str | os.PathLike) -> Path:
    """<run>/latest: the last saved state, with optimizer state (what --resume continues)."""
    return Path(run_dir) / LATEST


def best_dir(run_dir: str | os.PathLike) -> Path:
    """<run>/best: the state with the lowest val loss so far."""
    return Path(run_dir) / BEST


def snapshot_dir(run_dir: str | os.PathLike, it: int) -> Path:
    """<run>/snapshots/iter_NNNNNNN: the snapshot kept at iteration `it` (for the Timeline page)."""
    return Path(run_dir) / SNAPSHOTS / f"iter_{int(it):07d}"


def analysis_dir(run_dir: str | os.PathLike) -> Path:
    """<run>/analysis: head scores over validation windows per snapshot (trainers.analyze writes,
    gpt.score_history reads); not created here."""
    return Path(run_dir) / ANALYSIS


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
