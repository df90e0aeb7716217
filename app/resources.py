"""Every st.cache_resource of the app, in one place, plus the "which model is chosen" helpers.

Factories stay tiny and the logic lives in imported modules (gpt.checkpoint, gpt.record,
app.views.prompt), because editing a decorated function's source makes a second cache entry.
Cached objects are shared by all sessions, so they are never mutated after creation (models are
in eval mode and only run under torch.no_grad) and the trace cache has its own lock.

API for pages:
  load_model(ref) -> Loaded          CheckpointError (with a clear message) when it cannot load.
  current_model() -> Loaded | None   the model of session_state["model_ref"].
  require_model() -> Loaded          shows "No model yet" guidance and st.stop()s when none.
  show_no_model()                    that guidance alone.
  trace(loaded, ids, names) -> Recorder   LRU cache (16) of recorded forwards, keyed by (model, ids, names).
  prompt_ids(loaded, text, drop_unknown=False, names=None) -> PromptIds   (app.views.prompt)
  save_upload([(name, bytes)]) -> Path, discard_upload(path), uploads_dir()   (Model page)
  cpu_tokens_per_s(), run_sample(ckpt, iter) -> str                        (Train page)
  clear_caches()                                                          (tests)
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

import streamlit as st
import torch

from app import state
from app.views.prompt import PromptIds
from app.views.prompt import prompt_ids as _prompt_ids
from gpt.checkpoint import CheckpointError, checkpoints_root, load, resolve_checkpoint
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import Tokenizer
from trainers.metrics import MetricsTail

APP_DIR = Path(__file__).resolve().parent
MODEL_ERROR = "model_error"  # session_state: why the chosen model could not be loaded
TRACE_ENTRIES = 16
NO_MODEL = "No model yet: train one or load one."


@dataclass(frozen=True, eq=False)
class Loaded:
    """A loaded model and everything a page needs to describe it. Shared between sessions: read-only.
    Hashes by identity (eq=False), so it can key a dict or an lru_cache cheaply."""

    model: GPT
    tokenizer: Tokenizer
    meta: dict[str, Any]
    ref: str  # what the user chose (run folder, checkpoint folder, file)
    label: str  # short display name (state.describe_ref)
    config: GPTConfig
    stamp: str = field(default="", compare=False)  # resolved checkpoint + its mtime (cache key)


def checkpoint_stamp(ref: str) -> str:
    """`<resolved checkpoint>@<mtime_ns>`: changes whenever the checkpoint a ref names is rewritten
    (a running run replaces latest/ at each eval), so load_model never serves a stale model."""
    p = resolve_checkpoint(ref)
    try:
        mtime = max((p / "config.json").stat().st_mtime_ns, p.stat().st_mtime_ns) if p.is_dir() \
            else p.stat().st_mtime_ns
    except OSError as e:
        raise CheckpointError(f"{p}: cannot be read ({e})") from None
    return f"{p}@{mtime}"


def _make_loaded(ref: str, stamp: str) -> Loaded:
    model, tok, meta = load(ref)
    return Loaded(model=model, tokenizer=tok, meta=meta, ref=ref, label=state.describe_ref(ref),
                  config=model.config, stamp=stamp)


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _load_cached(ref: str, stamp: str) -> Loaded:
    return _make_loaded(ref, stamp)


def load_model(ref: str) -> Loaded:
    """The model at `ref` (anything gpt.checkpoint.load accepts), cached by (ref, checkpoint mtime).
    Raises CheckpointError naming the file and the problem; errors are not cached."""
    ref = str(ref)
    return _load_cached(ref, checkpoint_stamp(ref))


def current_model() -> Loaded | None:
    """The model chosen in this session (session_state["model_ref"]); when none is chosen yet, the
    default (state.default_model_ref). None when there is none or it failed to load; the reason is
    kept in session_state["model_error"] for show_no_model. A still-untouched default prompt is
    switched to the one that suits the model's tokenizer."""
    ss = st.session_state
    if state.MODEL_REF not in ss:
        state.init_state()
    if ss.get(state.MODEL_REF) is None:
        ss[state.MODEL_REF] = state.default_model_ref()
    ref = ss.get(state.MODEL_REF)
    if ref is None:
        return None
    try:
        loaded = load_model(ref)
    except CheckpointError as e:
        ss[MODEL_ERROR] = str(e)
        return None
    ss.pop(MODEL_ERROR, None)
    want = state.default_prompt(loaded.tokenizer.kind)
    if ss.get(state.PROMPT) in state.DEFAULT_PROMPTS and ss.get(state.PROMPT) != want:
        try:
            ss[state.PROMPT] = want
        except st.errors.StreamlitAPIException:  # the prompt widget is already on the page
            pass
    return loaded


def show_no_model() -> None:
    """The guidance shown when there is no model: why (if a load failed) and where to get one."""
    err = st.session_state.get(MODEL_ERROR)
    if err:
        st.error(f"The chosen model could not be loaded: {err}")
    st.info(NO_MODEL)
    for page, label, icon in (
            ("screens/train.py", "Train a model (the tiny preset takes under a minute)", "model_training"),
            ("screens/model.py", "Load a checkpoint: a run, a path or an upload", "folder_open")):
        if (APP_DIR / page).is_file():  # st.page_link refuses pages that are not registered
            st.page_link(page, label=label, icon=f":material/{icon}:")
    st.caption(f"The bundled model is looked for in `checkpoints/{state.BUNDLED_NAME}` "
               "(or set NANOLENS_BUNDLED to a checkpoint path).")


def require_model() -> Loaded:
    """The current model; if there is none, show the guidance and stop this page's script."""
    loaded = current_model()
    if loaded is None:
        show_no_model()
        st.stop()
    return loaded


# -- recorded forwards --------------------------------------------------------------------------------
class TraceCache:
    """A thread-safe LRU of Recorders. The forward runs outside the lock (two sessions asking for the
    same new key may both compute it; the second result simply replaces the first)."""

    def __init__(self, maxsize: int = TRACE_ENTRIES) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, Recorder] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Recorder]) -> Recorder:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        rec = make()
        with self._lock:
            self._items[key] = rec
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return rec

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@st.cache_resource
def _trace_cache() -> TraceCache:
    return TraceCache()


def record_forward(model: GPT, ids: Iterable[int], names: Iterable[str] | None) -> Recorder:
    """One recorded forward of `ids` (batch 1) keeping only `names` (None: everything)."""
    rec = Recorder(names=None if names is None else list(names))
    idx = torch.tensor([list(ids)], dtype=torch.long)  # (1, T)
    with torch.no_grad():
        model(idx, rec=rec)
    return rec


def trace(loaded: Loaded, ids: tuple[int, ...], names: tuple[str, ...]) -> Recorder:
    """The Recorder of `loaded.model` run on `ids`, recording only `names` (names or globs; an empty
    tuple means every site). Cached (LRU, 16 entries, shared by sessions): treat it as read-only."""
    ids, names = tuple(int(i) for i in ids), tuple(names)
    key = (loaded.ref, loaded.stamp, ids, names)
    return _trace_cache().get(key, lambda: record_forward(loaded.model, ids, names or None))


def prompt_ids(loaded: Loaded, text: str, drop_unknown: bool = False,
               names: Iterable[str] | None = None) -> PromptIds:
    """app.views.prompt.prompt_ids for this model: ids to run, or a message saying why not."""
    return _prompt_ids(loaded.tokenizer, loaded.config, text, drop_unknown=drop_unknown, names=names)


# -- training page ------------------------------------------------------------------------------------
def measure_tokens_per_s(steps: int = 3, batch_size: int = 8) -> float:
    """Training tokens/s of the tiny preset on this machine (AdamW steps, current torch threads)."""
    from gpt.config import GPTConfig as _C

    cfg = _C.preset("tiny")
    model = GPT(cfg)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=gen)  # (B, T)
    times = []
    for i in range(steps + 1):  # the first step warms up allocators
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return batch_size * cfg.block_size / max(min(times), 1e-6)


@st.cache_resource(show_spinner="Measuring this machine's training speed…")
def cpu_tokens_per_s() -> float:
    """measure_tokens_per_s(), once per process (the Train page's time estimates scale it)."""
    return measure_tokens_per_s()


def sample_text(model: GPT, tokenizer: Tokenizer, n_tokens: int = 100, seed: int = 1337) -> str:
    """~n_tokens of text generated from a newline (char models) or <|endoftext|> (GPT-2)."""
    from gpt.generate import generate

    if tokenizer.kind == "gpt2":
        start, n_tokens = [50256], max(1, n_tokens // 3)  # a BPE token is ~3 characters
    else:
        start = tokenizer.encode("\n", errors="drop") or [0]
    ids = generate(model, start, n_tokens, temperature=0.8, seed=seed)
    return tokenizer.decode(ids[len(start):])


@st.cache_resource(max_entries=16)
def metrics_tail(run_dir: str) -> MetricsTail:
    """One incremental reader of <run_dir>/metrics.jsonl per run, shared by sessions (it locks)."""
    return MetricsTail(run_dir)


@st.cache_data(max_entries=64, show_spinner=False)
def run_sample(ckpt: str, it: int) -> str:
    """sample_text of the checkpoint folder `ckpt` saved at iteration `it` (the key: a new eval
    writes a new iter, so the sample refreshes then and only then)."""
    model, tok, _ = load(ckpt)
    return sample_text(model, tok)


# -- uploads -------------------------------------------------------------------------------------------
UPLOADS = ".uploads"  # under the checkpoints root; hidden, so it is never listed as a run
MAX_UNZIPPED_BYTES = 4 << 30  # a zip that inflates past this is refused (zip bomb)
MAX_ZIP_ENTRIES = 10_000
UPLOAD_HELP = ("upload a .zip of a checkpoint folder, a model .safetensors together with its "
               "config.json, or a nanoGPT ckpt.pt (with its meta.pkl for a character model)")


def uploads_dir() -> Path:
    return checkpoints_root() / UPLOADS


def _extract_zip(data: bytes, dest: Path) -> None:
    """Unpack `data` into `dest`, refusing absolute or '..' paths, links and zip bombs."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"the uploaded .zip cannot be opened ({e})") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"the uploaded .zip has {len(infos)} entries; a checkpoint has a few")
    total = 0
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0].endswith(":")):
            raise CheckpointError(f"the uploaded .zip holds an unsafe path {info.filename!r}; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CheckpointError(f"the uploaded .zip holds a link {info.filename!r}; refused")
        if info.is_dir() or not name.parts or name.parts[0] == "__MACOSX":
            continue
        total += info.file_size
        if total > MAX_UNZIPPED_BYTES:
            raise CheckpointError("the uploaded .zip inflates to more than "
                                  f"{MAX_UNZIPPED_BYTES >> 30} GiB; refused")
        target = dest.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:  # CRC errors, truncation
            raise CheckpointError(f"the uploaded .zip is damaged at {info.filename!r} ({e})") from None


def save_upload(files: list[tuple[str, bytes]]) -> Path:
    """Save uploaded (file name, bytes) into a fresh folder under <checkpoints root>/.uploads and
    return the path to give load_model: the folder (a zip's single top folder, a safetensors +
    config.json pair) or the ckpt.pt. CheckpointError when the files are not a known combination;
    the folder is removed again in that case."""
    if not files:
        raise CheckpointError(f"nothing uploaded: {UPLOAD_HELP}")
    by_ext: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in files:
        by_ext.setdefault(Path(name).suffix.lower(), []).append((Path(name).name, data))
    stem = re.sub(r"[^\w.-]+", "-", Path(files[0][0]).stem)[:40] or "upload"
    dest = uploads_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True)
    try:
        exts = set(by_ext)
        if exts == {".zip"} and len(by_ext[".zip"]) == 1:
            _extract_zip(by_ext[".zip"][0][1], dest)
            found = dest
            while True:  # descend through a zip's single top folder
                entries = [p for p in found.iterdir() if p.name != "__MACOSX"]
                if len(entries) == 1 and entries[0].is_dir():
                    found = entries[0]
                    continue
                return found
        if exts == {".safetensors", ".json"} and all(len(v) == 1 for v in by_ext.values()):
            (dest / "model.safetensors").write_bytes(by_ext[".safetensors"][0][1])
            (dest / "config.json").write_bytes(by_ext[".json"][0][1])
            return dest
        if exts in ({".pt"}, {".pt", ".pkl"}, {".ckpt"}, {".ckpt", ".pkl"}) and \
                all(len(v) == 1 for v in by_ext.values()):
            if ".pkl" in by_ext:
                (dest / "meta.pkl").write_bytes(by_ext[".pkl"][0][1])
            (dest / "ckpt.pt").write_bytes(next(v for k, v in by_ext.items() if k != ".pkl")[0][1])
            return dest / "ckpt.pt"
        got = ", ".join(n for n, _ in files)
        raise CheckpointError(f"cannot tell what {got} is: {UPLOAD_HELP}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def discard_upload(path: str | os.PathLike) -> None:
    """Remove the upload folder that `path` (from save_upload) lives in; other paths are left alone."""
    root = uploads_dir().resolve()
    p = Path(path).resolve()
    if root in p.parents:
        shutil.rmtree(root / p.relative_to(root).parts[0], ignore_errors=True)


def clear_caches() -> None:
    """Drop every cached model and trace (tests; or after deleting runs)."""
    _load_cached.clear()
    _trace_cache().clear()
    _trace_cache.clear()


__all__ = ["Loaded", "load_model", "current_model", "require_model", "show_no_model", "trace",
           "prompt_ids", "PromptIds", "clear_caches", "checkpoint_stamp", "NO_MODEL",
           "save_upload", "discard_upload", "uploads_dir"]
