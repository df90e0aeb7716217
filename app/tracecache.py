"""What app.resources builds its caches from, none of it a cache itself: TraceCache (the thread-safe
LRU behind the trace and analysis caches), record_forward (the value a trace entry holds) and
checkpoint_stamp (the part of every key that makes a rewritten checkpoint a new entry).

The cache instances live in app.resources (the one owner of caches); this module keeps no state.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Hashable, Iterable

import torch

from gpt.checkpoint import CONFIG, WEIGHTS, CheckpointError, resolve_checkpoint
from gpt.model import GPT
from gpt.record import Recorder

if TYPE_CHECKING:
    from gpt.edit import Edits


class TraceCache:
    """A thread-safe LRU of at most `maxsize` entries. The value is made outside the lock (two
    sessions asking for the same new key may both compute it; the second result simply replaces
    the first)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], object]) -> object:
        """The value kept under `key`, made with make() (and kept, evicting the oldest) when missing."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()


def record_forward(model: GPT, ids: Iterable[int], names: Iterable[str] | None,
                   edit: "Edits | None" = None) -> Recorder:
    """One recorded forward of `ids` (batch 1) keeping only `names` (None: everything), under `edit`.
    The ids go to the model's device; the recording is kept on the CPU in fp32 (Recorder's
    defaults) whatever the model's device and dtype, so views can call .numpy() on it."""
    rec = Recorder(names=None if names is None else list(names), dtype=torch.float32, device="cpu")
    device = next(model.parameters()).device
    idx = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, T)
    with torch.no_grad():
        model(idx, rec=rec, edit=edit)
    return rec


def checkpoint_stamp(ref: str) -> str:
    """`<resolved checkpoint>@<newest mtime_ns>` of the checkpoint a ref names and of the files
    load reads beside it (config.json, weights, ckpt.pt, meta.pkl), so load_model never serves a
    stale model: a running run replaces latest/ at each eval, and a meta.pkl put beside a ckpt.pt
    must be read. Works for everything gpt.checkpoint.load accepts (a nanoGPT out_dir has no
    config.json); CheckpointError when the ref cannot be read."""
    p = resolve_checkpoint(ref)
    folder = p if p.is_dir() else p.parent
    try:
        stamps = [f.stat().st_mtime_ns for f in (p, folder, *(folder / n for n in (
            CONFIG, WEIGHTS, "ckpt.pt", "meta.pkl", "pytorch_model.bin"))) if f == p or f.exists()]
    except OSError as e:
        raise CheckpointError(f"{p}: cannot be read ({e.strerror or e})") from None
    return f"{p}@{max(stamps)}"
