"""A Hugging Face folder's own tokenizer.json, through the `tokenizers` library, behind gpt.tokenizer's
interface (encode with errors=, decode, vocab_size, token_str with visible whitespace, kind,
to_dict, unknown_chars), so every page treats it like the char and GPT-2 tokenizers.

The `tokenizers` library (Rust) reads the file as data: a tokenizer.json holds vocabularies, merges and
normalizer / pre-tokenizer / decoder settings, never code. Special tokens in the text are encoded as
ordinary text is, as gpt.tokenizer.GPT2Tokenizer does (add_special_tokens=False: no BOS / EOS added).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from gpt.tokenizer import Tokenizer, UnknownCharsError, _check_errors, visible

MAX_TOKENIZER_BYTES = 64 << 20  # GPT-2's tokenizer.json is 1.4 MB; a vocabulary file is never this big


class HFTokenizer(Tokenizer):
    """The tokenizer a tokenizer.json describes. `unknown_chars`: characters that encode to the
    model's unknown token, or (not being whitespace) to nothing; errors="replace" lets the unknown
    token stand for them where the model has one, else a space (or nothing, when a space is unknown too)."""

    kind = "hf"

    def __init__(self, json_text: str, source: str = "tokenizer.json") -> None:
        from tokenizers import Tokenizer as _Rust

        try:
            self.tok = _Rust.from_str(json_text)
        except Exception as e:  # the library's own Exception type: a bad or unsupported file
            raise ValueError(f"{source}: not a tokenizer.json the `tokenizers` library can read "
                             f"({str(e)[:200]})") from None
        self.json_text = json_text
        self.source = source
        self.digest = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        unk = json.loads(json_text).get("model", {}).get("unk_token")
        self.unk_id = self.tok.token_to_id(unk) if isinstance(unk, str) else None
        self._unknown: dict[str, bool] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> "HFTokenizer":
        """The tokenizer of a tokenizer.json file; ValueError naming the file when it is not one."""
        path = Path(path)
        size = path.stat().st_size
        if not 0 < size <= MAX_TOKENIZER_BYTES:
            raise ValueError(f"{path}: {size} bytes is not a tokenizer.json")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot be read as a tokenizer.json ({e})") from None
        return cls(text, source=str(path))

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def _is_unknown(self, ch: str) -> bool:
        if ch not in self._unknown:
            ids = self.tok.encode(ch, add_special_tokens=False).ids
            self._unknown[ch] = (self.unk_id is not None and self.unk_id in ids) or (not ids and not ch.isspace())
        return self._unknown[ch]

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(c for c in set(text) if self._is_unknown(c))

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        _check_errors(errors)
        unknown = set(self.unknown_chars(text))
        if unknown:
            if errors == "strict":
                raise UnknownCharsError(unknown, 'remove them, or encode with errors="drop" or errors="replace"')
            if errors == "drop" or self.unk_id is None:
                rep = " " if errors == "replace" and not self._is_unknown(" ") else ""
                text = "".join(rep if c in unknown else c for c in text)
            # "replace" with an unknown token: the model's own [UNK] ids stand for them
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(self._check_ids(ids), skip_special_tokens=False)

    def token_str(self, id: int) -> str:
        """The token's text as the decoder gives it (a byte-level piece cut inside a UTF-8
        character shows U+FFFD); the vocabulary's own string where that decodes to nothing."""
        i = self._check_ids([id])[0]
        text = self.tok.decode([i], skip_special_tokens=False)
        return visible(text if text else (self.tok.id_to_token(i) or f"<{i}>"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.json_text}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"
