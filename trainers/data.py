"""Corpora, tokenization with an on-disk cache, and random training batches.

`--data` is a corpus name (`shakespeare`, `shakespeare-repeats`, `python-docs`) or the path of a
UTF-8 .txt file. Tiny Shakespeare comes from the user cache, else from ../shared (checked by sha256,
no network), else it is downloaded once; offline, it falls back to python-docs and says so.
`shakespeare-repeats` is Tiny Shakespeare with repeated spans (repeat_spans), the text on which a
small model grows an induction head. Encoded token ids are cached by sha256(text + tokenizer) so a
restart does not tokenize again.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gpt.tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
CORPORA = ("shakespeare", "shakespeare-repeats", "python-docs")
MAX_FILE_BYTES = 200 * 1024 ** 2
DOWNLOAD_TIMEOUT_S = 10.0
TRAIN_FRACTION = 0.9
# shakespeare-repeats (repeat_spans): spans of REPEAT_MIN..REPEAT_MAX characters, each followed with
# probability REPEAT_P by REPEAT_MARK and a copy of itself; train and val parts get their own seed
REPEAT_MIN, REPEAT_MAX, REPEAT_P, REPEAT_MARK = 20, 100, 0.5, "|"
REPEAT_SEEDS = {"train": 16, "val": 17}


class DataError(ValueError):
    """A corpus that cannot be used; the message says why and what to do."""


def cache_dir() -> Path:
    """$NANOLENS_CACHE, else $XDG_CACHE_HOME/nanolens, else ~/.cache/nanolens."""
    if os.environ.get("NANOLENS_CACHE"):
        return Path(os.environ["NANOLENS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nanolens"


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- corpora --------------------------------------------------------------------------------------
def python_docs_text() -> str:
    """The stdlib's pydoc topics (the text behind help('FOR') etc.), always there offline."""
    from pydoc_data.topics import topics
    return "".join(topics[k] for k in sorted(topics))


def _cached_shakespeare() -> Path | None:
    """The cached copy if it is the right file, else a copy of ../shared's (no network), else None."""
    cached = cache_dir() / "tinyshakespeare.txt"
    if cached.is_file() and _sha256(cached.read_bytes()) == SHAKESPEARE_SHA256:
        return cached
    if SHARED_SHAKESPEARE.is_file():
        raw = SHARED_SHAKESPEARE.read_bytes()
        if _sha256(raw) == SHAKESPEARE_SHA256:
            _atomic_write_bytes(cached, raw)
            return cached
    return None


def default_data() -> str:
    """`shakespeare` when it is available without the network, else `python-docs`."""
    return "shakespeare" if _cached_shakespeare() is not None else "python-docs"


FALLBACK_NOTE = "falling back to python-docs (the stdlib's pydoc topics, always available offline)"


def _download_shakespeare(log: Callable[[str], None], then: str = FALLBACK_NOTE) -> Path | None:
    """Download Tiny Shakespeare into the cache; on failure log why and `then` (what happens next)."""
    cached = cache_dir() / "tinyshakespeare.txt"
    log(f"downloading Tiny Shakespeare from {SHAKESPEARE_URL} ...")
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=DOWNLOAD_TIMEOUT_S) as r:
            raw = r.read(MAX_FILE_BYTES)
    except (OSError, ValueError) as e:  # URLError and socket timeouts are OSErrors
        log(f"could not download Tiny Shakespeare ({e}); {then}")
        return None
    if _sha256(raw) != SHAKESPEARE_SHA256:
        log(f"the downloaded Tiny Shakespeare does not have the expected sha256; {then}")
        return None
    _atomic_write_bytes(cached, raw)
    return cached


def repeat_spans(text: str, seed: int) -> str:
    """`text` cut into consecutive spans of REPEAT_MIN..REPEAT_MAX characters, each followed with
    probability REPEAT_P by REPEAT_MARK and a copy of itself: "...Before we proceed|Before we
    proceed any further...". A repeat lies within 201 characters, inside any context window of a
    few hundred, which is what makes copying from context pay off (an induction head forms).

    Deterministic: lengths and coin flips come from random.Random(seed).random(), whose sequence
    Python keeps the same across versions. Every piece between two marks is a substring of `text`
    (a copy ends where the next span, the text that followed the original, begins), so the
    transform adds no text that was not there. ValueError if `text` holds the mark already."""
    if REPEAT_MARK in text:
        raise ValueError(f"the text holds {REPEAT_MARK!r} already; repeats would be ambiguous")
    rng = random.Random(seed)
    width = REPEAT_MAX - REPEAT_MIN + 1
    out: list[str] = []
    i = 0
    while i < len(text):
        span = text[i:i + REPEAT_MIN + int(rng.random() * width)]
        out.append(span)
        if rng.random() < REPEAT_P:
            out += (REPEAT_MARK, span)
        i += len(span)
    return "".join(out)


def shakespeare_repeats(raw: str) -> tuple[str, int]:
    """(text, n_train): the raw text split 90/10 first, then each part through repeat_spans with
    its own seed, so the validation part holds only (repeated) text of the raw last 10%.
    text[:n_train] is the training part."""
    n = int(len(raw) * TRAIN_FRACTION)
    train = repeat_spans(raw[:n], REPEAT_SEEDS["train"])
    return train + repeat_spans(raw[n:], REPEAT_SEEDS["val"]), len(train)


def read_text_file(path: str | os.PathLike) -> str:
    """A user's text file, with a clear DataError when it is missing, empty, binary or too large."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist; pass --data shakespeare, "
                        "--data python-docs or the path of a UTF-8 .txt file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"data file {str(p)!r} is {size / 1024 ** 2:.0f} MB, more than the "
                        f"{MAX_FILE_BYTES // 1024 ** 2} MB limit; use a smaller excerpt")
    raw = p.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"data file {str(p)!r} looks binary (it contains NUL bytes); "
                        "pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(p)!r} is not UTF-8 (bad byte at offset {e.start}); "
                        "convert it, e.g. `iconv -t UTF-8`") from None
    if not text.strip():
        raise DataError(f"data file {str(p)!r} is empty; pass a file with some text")
    return text


def load_text(data: str, log: Callable[[str], None] = print) -> tuple[str, dict[str, Any]]:
    """(text, source) for a corpus name or file path; `source` is what config.json records."""
    if data == "shakespeare":
        path = _cached_shakespeare() or _download_shakespeare(log)
        if path is not None:
            text = path.read_text(encoding="utf-8")
            return text, {"name": "shakespeare", "path": str(path), "sha256": SHAKESPEARE_SHA256}
        text = python_docs_text()
        return text, {"name": "python-docs", "fallback_from": "shakespeare",
                      "sha256": _sha256(text.encode())}
    if data == "shakespeare-repeats":
        where = cache_dir() / "tinyshakespeare.txt"
        path = _cached_shakespeare() or _download_shakespeare(log, then="cannot build it")
        if path is None:
            raise DataError(f"--data shakespeare-repeats needs Tiny Shakespeare, which is neither in "
                            f"{where} nor in {SHARED_SHAKESPEARE} and could not be downloaded; put a "
                            "copy in one of them, or use --data shakespeare or python-docs")
        text, n_train = shakespeare_repeats(path.read_text(encoding="utf-8"))
        return text, {"name": "shakespeare-repeats", "path": str(path), "raw_sha256": SHAKESPEARE_SHA256,
                      "sha256": _sha256(text.encode()), "train_chars": n_train,
                      "repeats": {"min": REPEAT_MIN, "max": REPEAT_MAX, "p": REPEAT_P,
                                  "mark": REPEAT_MARK, "seeds": REPEAT_SEEDS}}
    if data == "python-docs":
        text = python_docs_text()
        return text, {"name": "python-docs", "sha256": _sha256(text.encode())}
    if not (data.endswith(".txt") or Path(data).expanduser().is_file()):
        raise DataError(f"unknown --data {data!r}: use one of {list(CORPORA)} or the path of "
                        "a UTF-8 .txt file")
    text = read_text_file(data)
    p = Path(data).expanduser().resolve()
    return text, {"name": "file", "path": str(p), "sha256": _sha256(text.encode())}


# -- tokenization ---------------------------------------------------------------------------------
def make_tokenizer(kind: str, text: str) -> Tokenizer:
    """`char`: vocabulary = the corpus's sorted characters (nanoGPT shakespeare_char); `gpt2`: BPE."""
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise DataError(f"unknown tokenizer {kind!r}; use char or gpt2")


def _encode_chars(text: str, tok: Tokenizer) -> np.ndarray:
    """Vectorised char encoding (a Python loop over 200 MB of text would take minutes)."""
    vocab = np.array([ord(tok.decode([i])) for i in range(tok.vocab_size)], dtype=np.uint32)
    order = np.argsort(vocab)
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    pos = np.searchsorted(vocab[order], cps).clip(0, len(vocab) - 1)
    found = vocab[order][pos] == cps
    if not found.all():
        bad = text[int(np.argmin(found))]
        tok.encode(bad)  # raises the tokenizer's UnknownCharsError, which names the characters
        raise DataError(f"character {bad!r} is not in the tokenizer's vocabulary")
    return order[pos]


def encode_cached(text: str, tok: Tokenizer) -> np.ndarray:
    """Token ids of `text` (uint16 while the vocab fits, else uint32), cached on disk."""
    dtype = np.uint16 if tok.vocab_size < 65536 else np.uint32
    key = _sha256(text.encode() + b"\0" + json.dumps(tok.to_dict(), sort_keys=True).encode())
    path = cache_dir() / "tokens" / f"{key[:32]}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.dtype == dtype:
                return arr
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    single_chars = tok.kind == "char" and all(len(tok.decode([i])) == 1 for i in range(tok.vocab_size))
    ids = _encode_chars(text, tok) if single_chars else np.asarray(tok.encode(text))
    arr = ids.astype(dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens.", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache only costs a re-tokenization next time
        print(f"warning: could not cache tokens in {path.parent}: {e}", file=sys.stderr)
    return arr


# -- the dataset ----------------------------------------------------------------------------------
class Corpus:
    """Token ids split 90/10 into train/val (or at `n_train`), sampled as random windows.

    The ids live on the training device when they fit (corpora are small), so a batch is
    an index gather on the GPU rather than a host-to-device copy per iteration.
    """

    def __init__(self, ids: np.ndarray, tokenizer: Tokenizer, source: dict[str, Any],
                 n_train: int | None = None) -> None:
        n = int(len(ids) * TRAIN_FRACTION) if n_train is None else n_train
        # int32 halves memory against int64 and every vocab fits; batches are cast to long.
        self.train = torch.from_numpy(ids[:n].astype(np.int32))
        self.val = torch.from_numpy(ids[n:].astype(np.int32))
        self.tokenizer = tokenizer
        self.source = dict(source, tokens=int(len(ids)), train_tokens=n, val_tokens=len(ids) - n)

    @classmethod
    def load(cls, data: str, tokenizer: str | Tokenizer = "char", block_size: int | None = None,
             log: Callable[[str], None] = print) -> "Corpus":
        """Read, tokenize (cached) and split; DataError if a split is shorter than block_size+1.
        A corpus whose source names `train_chars` (shakespeare-repeats) is split there: its two
        parts are tokenized apart, so no token straddles the split."""
        text, source = load_text(data, log)
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else make_tokenizer(tokenizer, text)
        source = dict(source, tokenizer=tok.kind)
        if "train_chars" in source:
            k = source["train_chars"]
            train, val = encode_cached(text[:k], tok), encode_cached(text[k:], tok)
            corpus = cls(np.concatenate([train, val]), tok, source, n_train=len(train))
        else:
            corpus = cls(encode_cached(text, tok), tok, source)
        if block_size is not None:
            need = block_size + 1
            shortest = min(len(corpus.train), len(corpus.val))
            if shortest < need:
                raise DataError(
                    f"the data has {corpus.source['tokens']} tokens; its 10% validation split "
                    f"({len(corpus.val)}) and 90% train split need at least block_size+1 = {need} "
                    f"tokens each; use a longer text or a smaller --block-size")
        return corpus

    def to(self, device: str | torch.device) -> "Corpus":
        """Move the ids to `device` if they take under a quarter of its free memory."""
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if (self.train.numel() + self.val.numel()) * 4 < free // 4:
                self.train, self.val = self.train.to(device), self.val.to(device)
            else:  # keep on the host; pinned so the per-batch copy can be asynchronous
                self.train, self.val = self.train.pin_memory(), self.val.pin_memory()
        elif device.type == "mps":
            self.train, self.val = self.train.to(device), self.val.to(device)
        return self

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  generator: torch.Generator, device: str | torch.device = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y LongTensors (B, T) on `device`; y is x shifted by one token.

        Offsets come from the CPU `generator`, so the same seed gives the same batches everywhere.
        Nothing here waits for the device: the offsets travel from pinned memory asynchronously
        (a plain .to() would synchronize, stalling the step between forward and backward).
        """
        data = {"train": self.train, "val": self.val}[split]
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
        if data.device.type == "cuda":
            ix = ix.pin_memory().to(data.device, non_blocking=True)
        else:
            ix = ix.to(data.device)
        offsets = ix[:, None] + torch.arange(block_size + 1, device=data.device)  # (B, T+1)
        window = data[offsets]  # (B, T+1)
        x, y = window[:, :-1], window[:, 1:]  # (B, T) each
        if x.device != torch.device(device):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        return x.long(), y.long()
