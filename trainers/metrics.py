"""Reading a run's metrics.jsonl while it grows, in constant work per new row.

The Train page polls a live run every second. Re-reading the whole file each time costs time and
memory in proportion to the run's length: a 30-minute tiny run writes ~30,000 rows, and parsing them
all into dicts every second makes the server's memory creep up (the allocator keeps the high-water
mark of each tick's throw-away rows; see BENCHMARKS.md, "Live chart"). `MetricsTail` parses only the
bytes appended since its last look and keeps each loss series as two flat float arrays (16 bytes a
point), so a poll costs what the new rows cost. A file that was replaced (a resumed run rewrites it
without the rows it redoes) or that shrank is read again from its start.
"""
from __future__ import annotations

import json
import math
import os
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the chart's series and the metrics.jsonl key each one reads (trainer.py writes these)
SERIES = {"train": "train_loss", "val": "val_loss", "train (eval)": "train_loss_eval"}


@dataclass(frozen=True)
class Metrics:
    """What a run has logged so far. series: {"train" | "val" | "train (eval)": (iters, losses)},
    two array('d') of equal length each, in file order, finite values only."""
    series: dict[str, tuple[array, array]]
    rows: int  # complete rows parsed (malformed lines are skipped, not counted)
    last_tokens_per_s: float | None  # the newest row's tokens_per_s, if any row had one


class MetricsTail:
    """MetricsTail(run_dir).update() -> Metrics, a copy taken under the lock (Streamlit serves
    sessions from several threads, and they may share one tail through a resource cache)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir, "metrics.jsonl")
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self._ident, self._offset, self._partial = ident, 0, b""
        self.series: dict[str, tuple[array, array]] = {k: (array("d"), array("d")) for k in SERIES}
        self.rows = 0
        self.last_tokens_per_s: float | None = None

    def update(self) -> Metrics:
        """Parse what was appended since the last call; return everything so far. A missing file
        means no rows yet."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    ident = (st.st_dev, st.st_ino)
                    if ident != self._ident or st.st_size < self._offset:
                        self._reset(ident)  # a new file (replaced on resume) or a truncated one
                    f.seek(self._offset)
                    chunk = f.read()
            except OSError:
                self._reset(None)
                chunk = b""
            self._offset += len(chunk)
            *lines, self._partial = (self._partial + chunk).split(b"\n")  # the last may be half-written
            for line in lines:
                self._add(line)
            return Metrics({k: (xs[:], ys[:]) for k, (xs, ys) in self.series.items()}, self.rows,
                           self.last_tokens_per_s)

    def _add(self, line: bytes) -> None:
        try:
            row: dict[str, Any] = json.loads(line)
        except (ValueError, RecursionError):
            return
        it = _finite(row.get("iter")) if isinstance(row, dict) else None
        if it is None:
            return
        self.rows += 1
        for name, key in SERIES.items():
            v = _finite(row.get(key))
            if v is not None:
                xs, ys = self.series[name]
                xs.append(it)
                ys.append(v)
        tps = _finite(row.get("tokens_per_s"))
        if tps is not None and tps > 0:
            self.last_tokens_per_s = tps


def _finite(v: Any) -> float | None:
    """v as a float when it is a finite number (not a bool: a hand-edited file may hold anything,
    and an integer of 400 digits is valid JSON that float() cannot take), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def loss_series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{"train": (iters, losses), "val": (...), "train (eval)": (...)} from metrics.jsonl rows all
    at once; rows without a finite value for a series are skipped. The reference that MetricsTail's
    incremental reading must agree with (the live page reads through MetricsTail)."""
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in SERIES}
    for r in rows:
        it = _finite(r.get("iter"))
        for series, key in SERIES.items():
            v = _finite(r.get(key))
            if v is not None and it is not None:
                out[series][0].append(it)
                out[series][1].append(v)
    return out
