"""Head scores over training: the analysis/ folder of a run, read and written.

The analysis job (python -m trainers.analyze) scores every head of every snapshot over N held-out
validation windows (gpt.dataset_scores) and writes, in <run>/analysis/ (gpt.layout.analysis_dir):

  meta.json            {"version": 1, "n_windows": N, "block": T, "seed": s, "data": corpus name,
                        "scores": [score names], "top_k": k, "created_at": "...", ...}
  windows.json         {"ids": [[token ids of window 0], ...]}: the N windows (T ids each), so
                        examples can be shown without the corpus
  iter_0001000.json    one per snapshot (7-digit iter, as snapshots/iter_NNNNNNN):
                        {"iter": 1000, "scores": {name: [[score of layer l, head h for h] for l]},
                         "top": {name: [[[[window index, score], ... up to k, best first] for h] for l]}}
                        (a score no window defines is null; induction_random's top lists are empty)
  status.json          the job's state and progress (trainers/analysis_runs.py)

Every file is written atomically (a temp file beside it, fsynced, then os.replace), so a reader sees
the old file or the new one, never half of one; a snapshot whose file exists is done, which is how
the job resumes. read_history is pure (no Streamlit), usable from a notebook:

    h = read_history("checkpoints/shakespeare-char")
    h.scores["induction_random"][:, 1, 2]     # (S,) layer 1 head 2 across h.iters
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt.dataset_scores import SCORE_NAMES
from gpt.layout import analysis_dir

VERSION = 1
META, WINDOWS, STATUS = "meta.json", "windows.json", "status.json"
ITER_RE = re.compile(r"iter_(\d{7})\.json")  # (temp files start with a dot and never match)
MAX_BYTES = 256 * 2 ** 20  # windows.json of 256 GPT-2 windows of 1024 tokens is about 1.5 MB
Top = list[list[list[tuple[int, float]]]]  # [L][H] lists of (window index, score), best first


@dataclass
class ScoreHistory:
    """The analysis of one run. iters: analysed snapshot iterations, ascending; scores: {name:
    (S, L, H) float32} with S = len(iters), in iter order (NaN where a score is undefined); top:
    {name: per snapshot, [L][H] lists of (window index, score)}; windows: the N windows' token ids;
    meta: meta.json."""
    iters: list[int]
    scores: dict[str, torch.Tensor]
    top: dict[str, list[Top]]
    windows: list[list[int]]
    meta: dict[str, Any] = field(default_factory=dict)


def iter_path(run_dir: str | os.PathLike, it: int) -> Path:
    """<run>/analysis/iter_NNNNNNN.json: the scores of the snapshot at iteration `it`."""
    return analysis_dir(run_dir) / f"iter_{int(it):07d}.json"


def done_iters(run_dir: str | os.PathLike) -> list[int]:
    """The iterations that have a result file (by name only, not read), ascending."""
    try:
        names = os.listdir(analysis_dir(run_dir))
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := ITER_RE.fullmatch(n)))


# -- reading ---------------------------------------------------------------------------------------
def _load(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{path}: {path.stat().st_size / 2 ** 20:.0f} MB, too large for an analysis file")
        obj = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda _c: None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not readable JSON ({str(e)[:120]}); run the analysis again with --fresh") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds {type(obj).__name__}, not a JSON object; run the analysis again with --fresh")
    return obj


def _count(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _score(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """meta.json checked (version 1, counts, score names); None when there is none. ValueError
    naming the file when it is malformed."""
    path = analysis_dir(run_dir) / META
    if not path.is_file():
        return None
    m = _load(path)
    bad = [k for k in ("n_windows", "block", "top_k") if not _count(m.get(k), 1)]
    if m.get("version") != VERSION:
        bad.append(f"version (expected {VERSION})")
    if not _count(m.get("seed")):
        bad.append("seed")
    names = m.get("scores")
    if not (isinstance(names, list) and names and all(n in SCORE_NAMES for n in names)):
        bad.append(f"scores (a list of {', '.join(SCORE_NAMES)})")
    if bad:
        raise ValueError(f"{path}: bad or missing {', '.join(bad)}; run the analysis again with --fresh")
    return m


def read_windows(run_dir: str | os.PathLike, meta: dict[str, Any]) -> list[list[int]]:
    """windows.json's ids: meta's n_windows lists of meta's block token ids. ValueError naming the
    file when it is missing or does not match."""
    path = analysis_dir(run_dir) / WINDOWS
    if not path.is_file():
        raise ValueError(f"{path} is missing though meta.json is there; run the analysis again with --fresh")
    ids = _load(path).get("ids")
    N, T = meta["n_windows"], meta["block"]
    if not (isinstance(ids, list) and len(ids) == N and
            all(isinstance(w, list) and len(w) == T and all(_count(i) for i in w) for w in ids)):
        raise ValueError(f"{path}: expected {N} windows of {T} token ids under \"ids\"; "
                         "run the analysis again with --fresh")
    return ids


def _grid(v: Any, shape: tuple[int, int] | None, ok: Any) -> tuple[int, int] | None:
    """The (L, H) of a [L][H] nested list whose cells all pass ok(), matching `shape` when given."""
    if not (isinstance(v, list) and v and all(isinstance(r, list) and r for r in v)):
        return None
    got = (len(v), len(v[0]))
    if any(len(r) != got[1] for r in v) or (shape is not None and got != shape):
        return None
    return got if all(ok(c) for r in v for c in r) else None


def read_iter(path: str | os.PathLike, names: list[str], n_windows: int,
              shape: tuple[int, int] | None = None) -> tuple[int, dict[str, torch.Tensor], dict[str, Top]]:
    """(iter, {name: (L, H)}, {name: [L][H] top lists}) of one result file, every score name in
    `names` present with the same (L, H) (`shape` when given) and window indices < n_windows.
    ValueError naming the file when anything is off."""
    path = Path(path)
    d = _load(path)
    m = ITER_RE.fullmatch(path.name)
    if not (m and d.get("iter") == int(m.group(1))):
        raise ValueError(f"{path}: its \"iter\" ({d.get('iter')!r}) does not match its name")
    sc, tp = d.get("scores"), d.get("top")
    if not (isinstance(sc, dict) and isinstance(tp, dict)):
        raise ValueError(f"{path}: needs \"scores\" and \"top\" objects; run the analysis again")
    is_top = lambda c: isinstance(c, list) and all(  # noqa: E731
        isinstance(e, list) and len(e) == 2 and _count(e[0]) and e[0] < n_windows and _score(e[1]) for e in c)
    scores, top = {}, {}
    for name in names:
        shape = _grid(sc.get(name), shape, _score)
        if shape is None or _grid(tp.get(name), shape, is_top) is None:
            raise ValueError(f"{path}: scores or top of {name!r} missing, or not [layer][head] lists of "
                             f"numbers and [window, score] pairs of one shape; run the analysis again")
        scores[name] = torch.tensor([[math.nan if c is None else float(c) for c in r] for r in sc[name]],
                                    dtype=torch.float32)  # (L, H)
        top[name] = [[[(int(i), math.nan if s is None else float(s)) for i, s in c] for c in r] for r in tp[name]]
    return d["iter"], scores, top


def read_history(run_dir: str | os.PathLike) -> ScoreHistory | None:
    """Every analysed snapshot of the run at run_dir, in iter order; None when it has no analysis/
    or no result file yet. ValueError naming the file when one is malformed (meta.json,
    windows.json or an iter file). Never writes."""
    iters = done_iters(run_dir)
    if not iters:
        return None
    meta = read_meta(run_dir)
    if meta is None:
        raise ValueError(f"{analysis_dir(run_dir) / META} is missing though results are there; "
                         "run the analysis again with --fresh")
    windows = read_windows(run_dir, meta)
    names, shape = list(meta["scores"]), None
    per: list[tuple[dict[str, torch.Tensor], dict[str, Top]]] = []
    for it in iters:
        _, s, t = read_iter(iter_path(run_dir, it), names, meta["n_windows"], shape)
        shape = tuple(s[names[0]].shape)
        per.append((s, t))
    return ScoreHistory(iters=iters, scores={n: torch.stack([s[n] for s, _ in per]) for n in names},  # (S, L, H)
                        top={n: [t[n] for _, t in per] for n in names}, windows=windows, meta=meta)


# -- writing (the job) -------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    """Strict JSON values: tensors and tuples become lists, NaN and infinities null."""
    if isinstance(v, torch.Tensor):
        return _plain(v.tolist())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as compact strict JSON at `path`: written and fsynced in a hidden temp file beside it
    (.<name>.*.tmp), then moved into place with os.replace, so no reader sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide it from other readers
            f.write(json.dumps(_plain(obj), separators=(",", ":"), allow_nan=False))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_meta(run_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """meta.json: `meta` (n_windows, block, seed, data, scores, top_k, created_at, ...) with
    "version" set."""
    write_atomic(analysis_dir(run_dir) / META, dict(meta, version=VERSION))


def write_windows(run_dir: str | os.PathLike, windows: torch.Tensor | list[list[int]]) -> None:
    """windows.json: the (N, T) window ids."""
    write_atomic(analysis_dir(run_dir) / WINDOWS, {"ids": windows})


def write_iter(run_dir: str | os.PathLike, it: int, scores: dict[str, torch.Tensor],
               top: dict[str, Top]) -> Path:
    """iter_NNNNNNN.json of the snapshot at `it`: scores {name: (L, H)} and top {name: [L][H] lists
    of (window index, score)}. Returns its path."""
    path = iter_path(run_dir, it)
    write_atomic(path, {"iter": int(it), "scores": scores, "top": top})
    return path
