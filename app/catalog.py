"""What can be inspected: the bundled model, the runs with their latest / best / snapshots, uploads
and paths; a label for each, and which one is the default.

This is the app's one reader of the run-folder layout. The layout itself (latest/, best/,
snapshots/iter_N, which folder is a run) is named only in gpt.checkpoint, which the trainer writes
with; the runs and their states come from trainers.runs.list_runs. Pages never build a run path:
they ask here. No Streamlit and no torch here, so tests and the router import it cheaply.

  bundled_paths() -> [Path]                the bundled models, the default first: $NANOLENS_BUNDLED
                                           (os.pathsep-separated), else <repo>/checkpoints/<BUNDLED_NAMES>
  bundled_path() -> Path | None            the default bundled model (shakespeare-char)
  has_checkpoint(path) -> bool             something load() may accept (run, folder, ckpt.pt, HF folder)
  default_ref() -> str | None              bundled, else the newest run with a checkpoint
  describe(ref) -> str                     "bundled · x", "run · latest", "run · iter 500", "upload · f"
  entries(snapshots=True) -> [Entry]       everything pickable without typing a path
  sources() -> [Source]                    the bundled models and the runs, for two-level pickers
  checkpoints(source) -> [Entry]           one source's latest, best and snapshots (newest first)
  timeline_runs(current_ref) -> [Source]   runs that kept snapshots, the current and the bundled first
  snapshots(run) -> [(iter, Path)]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gpt.checkpoint import (CheckpointError, SNAPSHOT_RE, best_dir, checkpoints_root, has_checkpoint as
                            _is_checkpoint, latest_dir, list_snapshots, resolve_checkpoint, run_of)
from trainers.runs import list_runs

REPO = Path(__file__).resolve().parents[1]
# <repo>/checkpoints/<these> are the bundled models: the first (the default, what the app opens on)
# a character-level Shakespeare model, the second one that grows an induction head while it trains
BUNDLED_NAMES = ("shakespeare-char", "shakespeare-induction")
BUNDLED_NAME = BUNDLED_NAMES[0]
BUNDLED_SOURCE = "(bundled model)"  # the source key of the default bundled model in two-level pickers
UPLOADS = ".uploads"  # under the checkpoints root; hidden, so never listed as a run
# what reading a hand-edited or half-written run folder can raise: such a run lists no checkpoints
# (trainers.runs.list_runs shows it as "unreadable"), and no page goes down with it
UNREADABLE = (OSError, ValueError, RecursionError)


@dataclass(frozen=True)
class Entry:
    """One thing that can be inspected. ref: what to give resources.load_model; label: what the
    user reads; which: "bundled" | "latest" | "best" | "iter N" (its name within its source)."""

    ref: str
    label: str
    which: str


@dataclass(frozen=True)
class Source:
    """The bundled model or one run. key: BUNDLED_SOURCE or the run's name; path: its folder."""

    key: str
    label: str
    path: Path


def has_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` names something that looks loadable (a run with a checkpoint, a checkpoint
    folder, a nanoGPT out_dir or ckpt.pt, a Hugging Face folder); loading may still fail."""
    try:
        p = resolve_checkpoint(Path(path))
    except (CheckpointError, *UNREADABLE):
        return False
    return p.is_file() or (p / "config.json").is_file() or (p / "ckpt.pt").is_file()


def bundled_paths() -> list[Path]:
    """The bundled models that hold a checkpoint, the default first: the paths in $NANOLENS_BUNDLED
    when it is set (separated by os.pathsep; "" means: no bundled model), else <repo>/checkpoints/
    <name> for each of BUNDLED_NAMES."""
    env = os.environ.get("NANOLENS_BUNDLED")
    if env is not None:
        paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    else:
        paths = [REPO / "checkpoints" / name for name in BUNDLED_NAMES]
    out: list[Path] = []
    for p in paths:
        if p.exists() and has_checkpoint(p) and not any(_is_bundled(p, q) for q in out):
            out.append(p)
    return out


def bundled_path() -> Path | None:
    """The default bundled model (the first of bundled_paths()), or None."""
    return next(iter(bundled_paths()), None)


def bundled_key(i: int, path: Path) -> str:
    """The source key of the i-th bundled model: BUNDLED_SOURCE for the default, else
    "(bundled model) <folder name>" (never a run name: those have no spaces or parentheses)."""
    return BUNDLED_SOURCE if i == 0 else f"{BUNDLED_SOURCE} {path.name}"


def _is_bundled(p: Path, bundled: Path | None) -> bool:
    return bundled is not None and p.resolve() == bundled.resolve()


def _newest_mtime(run: Path) -> float:
    """When a run last wrote something a reader cares about (its status, metrics or latest/)."""
    times = [f.stat().st_mtime for f in (run / "status.json", run / "metrics.jsonl", latest_dir(run))
             if f.exists()]
    return max(times, default=run.stat().st_mtime)


def newest_run() -> Path | None:
    """The most recently updated run folder under the checkpoints root that holds a checkpoint."""
    root = checkpoints_root()
    if not root.is_dir():
        return None
    # hidden folders (.uploads, half-written .tmp-*) are not runs
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and has_checkpoint(p)]
    return max(runs, key=_newest_mtime) if runs else None


def default_ref() -> str | None:
    """The bundled model if any, else the newest run with a checkpoint, else None."""
    p = bundled_path() or newest_run()
    return str(p) if p is not None else None


def describe(ref: str | os.PathLike) -> str:
    """A short label for a model ref: "bundled · shakespeare-char", "<run> · latest",
    "<run> · best", "<run> · iter 500", "upload · ckpt.pt + meta.pkl" (the names the user
    uploaded), else the path's last two parts. A run without a complete latest/ is labelled by
    what loading it shows ("<run> · best (no latest/)"), never passed off as latest."""
    from app import uploads  # (app.uploads imports this module)

    p = Path(ref).expanduser()
    for bundled in bundled_paths():
        if _is_bundled(p, bundled):
            return f"bundled · {bundled.name}"
    try:
        parts = p.resolve().relative_to(checkpoints_root().resolve()).parts
    except (ValueError, OSError):
        parts = ()
    if parts and parts[0] == UPLOADS:
        names = uploads.upload_names(p)
        if names:
            return f"upload · {' + '.join(names[:3])}{' …' if len(names) > 3 else ''}"
        return f"upload · {parts[1]}" if len(parts) > 1 else "uploads"
    if len(parts) == 1:
        return f"{parts[0]} · {_run_shows(p)}"
    if len(parts) == 2 and p.resolve() in (latest_dir(p.parent).resolve(), best_dir(p.parent).resolve()):
        return f"{parts[0]} · {parts[1]}"
    if len(parts) == 3 and run_of(p) is not None and SNAPSHOT_RE.fullmatch(parts[2]):
        return f"{parts[0]} · iter {int(SNAPSHOT_RE.fullmatch(parts[2]).group(1))}"
    return "/".join(p.parts[-2:]) if len(p.parts) > 1 else str(p)


def _run_shows(run: Path) -> str:
    """Which checkpoint loading a run folder gives, for describe: "latest" (also while latest/ is
    being swapped: its hidden copy is the latest), else "best (no latest/)" or "iter N (no latest/)"."""
    try:
        p = resolve_checkpoint(run)
    except (CheckpointError, *UNREADABLE):
        return "latest"
    if p == best_dir(run):
        return "best (no latest/)"
    its = [it for it, sp in list_snapshots(run) if sp == p]
    return f"iter {its[0]} (no latest/)" if its else "latest"


def snapshots(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(iter, folder)] of a run's complete snapshots, oldest first; [] when they cannot be read."""
    try:
        return list_snapshots(run)
    except UNREADABLE:
        return []


def _complete(folder: Path) -> bool:
    """Whether `folder` is a complete checkpoint that can be read."""
    try:
        return _is_checkpoint(folder)
    except UNREADABLE:
        return False


def _run_entries(run: Path, name: str, snaps: bool) -> list[Entry]:
    """A run's latest (the run folder itself, which follows latest/), best and snapshots (newest
    first); only those that exist and can be read."""
    out = []
    if _complete(latest_dir(run)):
        out.append(Entry(str(run), f"{name} · latest", "latest"))
    if _complete(best_dir(run)):
        out.append(Entry(str(best_dir(run)), f"{name} · best", "best"))
    if snaps:
        out += [Entry(str(p), f"{name} · iter {it}", f"iter {it}") for it, p in reversed(snapshots(run))]
    return out


def _bundled_sources() -> list[Source]:
    return [Source(bundled_key(i, b), f"bundled · {b.name}", b) for i, b in enumerate(bundled_paths())]


def sources() -> list[Source]:
    """The bundled models (the default first), then each run under the checkpoints root, newest
    first; a bundled model's run folder is not listed again as a run."""
    out = _bundled_sources()
    for r in list_runs():
        d = Path(r["path"])
        if not any(_is_bundled(d, b.path) for b in out):
            out.append(Source(r["name"], r["name"], d))
    return out


def checkpoints(source: str) -> list[Entry]:
    """The checkpoints of one source (a bundled key or a run name): for a bundled model its own
    entry, for a run its latest, best and snapshots, newest snapshot first. [] when it is gone."""
    for b in _bundled_sources():
        if source == b.key:
            return [Entry(str(b.path), b.label, "bundled")]
    if source.startswith(BUNDLED_SOURCE):
        return []  # a bundled model that is gone
    run = checkpoints_root() / source
    return _run_entries(run, source, snaps=True) if run.is_dir() else []


def entries(snapshots: bool = True) -> list[Entry]:
    """Everything the app can inspect without a path or an upload: the bundled models, then each
    run (newest first) with its latest, best and (if `snapshots`) every snapshot that exists.
    A run that has no checkpoint yet is left out."""
    bundled = _bundled_sources()
    out = [Entry(str(b.path), b.label, "bundled") for b in bundled]
    for s in sources()[len(bundled):]:
        out += _run_entries(s.path, s.key, snapshots)
    return out


def timeline_runs(current_ref: str | None) -> list[Source]:
    """Every run with at least one snapshot: the current model's run first (the Timeline opens on
    the model being inspected), then the bundled models' runs, then the others newest first. Each
    folder appears once; a bundled run keeps its "bundled" label when it is the current one."""
    out: list[Source] = []
    seen: set[Path] = set()

    def add(run: Path | None, label: str) -> None:
        if run is not None and run.resolve() not in seen and snapshots(run):
            seen.add(run.resolve())
            out.append(Source(run.name, label, run))

    b_runs = [r for r in (run_of(b) for b in bundled_paths()) if r is not None]
    cur = run_of(current_ref)
    if cur is not None:
        bundled = any(_is_bundled(cur, r) for r in b_runs)
        add(cur, f"bundled · {cur.name}" if bundled else f"{cur.name} (current model)")
    for r in b_runs:
        add(r, f"bundled · {r.name}")
    for s in sources():
        try:
            add(run_of(s.path), s.key)
        except UNREADABLE:
            continue
    return out


def uploads_dir() -> Path:
    """Where uploaded checkpoints and training texts are kept (app/uploads.py writes there)."""
    return checkpoints_root() / UPLOADS
