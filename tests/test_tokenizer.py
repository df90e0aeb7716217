"""Tokenizers: round trips, GPT-2 ids, unknown-character handling, serialisation, display."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt.tokenizer import (
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    UnknownCharsError,
    invisible,
    tokenizer_from_dict,
    visible,
)

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
CHAR = CharTokenizer.from_text(CORPUS)
VOCAB = sorted(set(CORPUS))


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


# -- character tokenizer ---------------------------------------------------------------------------
def test_char_vocab_is_sorted_set_like_nanogpt() -> None:
    assert CHAR.chars == VOCAB
    assert CHAR.vocab_size == len(VOCAB)
    # nanoGPT: stoi = {ch: i for i, ch in enumerate(chars)}
    assert CHAR.encode("a") == [VOCAB.index("a")]


@given(st.text(alphabet=st.sampled_from(VOCAB), max_size=200))
def test_char_round_trip(text: str) -> None:
    ids = CHAR.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < CHAR.vocab_size for i in ids)
    assert CHAR.decode(ids) == text


def test_char_unknown_chars_are_named() -> None:
    with pytest.raises(UnknownCharsError) as ei:
        CHAR.encode("Speak, é\tnow")
    err = ei.value
    assert isinstance(err, ValueError)
    assert sorted(err.chars) == err.chars and set(err.chars) == {"é", "\t", "n", "o", "w"} - set(VOCAB)
    for c in err.chars:
        assert repr(c) in str(err)
    assert "errors=" in str(err)  # says what to do
    assert CHAR.unknown_chars("Speak, é\tnow") == err.chars


def test_char_drop_and_replace() -> None:
    text = "Speak é\tspeak"
    bad = set(CHAR.unknown_chars(text))
    assert bad == {"é", "\t"}
    dropped = CHAR.decode(CHAR.encode(text, errors="drop"))
    assert dropped == "".join(c for c in text if c not in bad)
    replaced = CHAR.decode(CHAR.encode(text, errors="replace"))
    assert len(replaced) == len(text)
    assert replaced == "".join(" " if c in bad else c for c in text)  # space is in this vocab


def test_char_replace_without_space_uses_first_char() -> None:
    tok = CharTokenizer(["b", "a", "c"])
    assert tok.replacement == "b"
    assert tok.decode(tok.encode("a z", errors="replace")) == "abb"


def test_char_rejects_bad_vocab_and_ids() -> None:
    with pytest.raises(ValueError, match="unique"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="single"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="outside"):
        CHAR.decode([CHAR.vocab_size])
    with pytest.raises(ValueError, match="errors"):
        CHAR.encode("a", errors="ignore")


# -- GPT-2 -----------------------------------------------------------------------------------------
def test_gpt2_known_ids(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257
    assert gpt2.decode([gpt2.eot_id]) == "<|endoftext|>"


def test_gpt2_special_text_is_ordinary(gpt2: GPT2Tokenizer) -> None:
    ids = gpt2.encode("a<|endoftext|>b")
    assert gpt2.eot_id not in ids
    assert gpt2.decode(ids) == "a<|endoftext|>b"


def test_gpt2_cached_encoding(gpt2: GPT2Tokenizer) -> None:
    assert GPT2Tokenizer().enc is gpt2.enc


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_gpt2_round_trip(text: str) -> None:
    tok = GPT2Tokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_gpt2_lone_surrogate(gpt2: GPT2Tokenizer) -> None:
    text = "ok\ud800ok"
    with pytest.raises(UnknownCharsError) as ei:
        gpt2.encode(text)
    assert ei.value.chars == ["\ud800"]
    assert gpt2.decode(gpt2.encode(text, errors="drop")) == "okok"
    assert gpt2.decode(gpt2.encode(text, errors="replace")) == "ok\ufffdok"


# -- display ---------------------------------------------------------------------------------------
def test_token_str_whitespace_visible(gpt2: GPT2Tokenizer) -> None:
    assert CHAR.token_str(CHAR.stoi[" "]) == "·"
    assert CHAR.token_str(CHAR.stoi["\n"]) == "⏎"
    assert CharTokenizer(["\t"]).token_str(0) == "⇥"
    strs = [gpt2.token_str(i) for i in gpt2.encode(" world\n\tx")]
    assert strs[0] == "·world"
    assert "".join(strs).replace("·", " ").replace("⏎", "\n").replace("⇥", "\t") == " world\n\tx"
    for s in strs:
        assert not any(c.isspace() for c in s)


def test_token_str_partial_utf8_bytes(gpt2: GPT2Tokenizer) -> None:
    ids = gpt2.encode("😀")  # 4 UTF-8 bytes; GPT-2 splits it across tokens
    assert len(ids) > 1
    shown = [gpt2.token_str(i) for i in ids]
    joined = "".join(shown)
    assert "\ufffd" not in joined
    for byte in "😀".encode("utf-8"):
        assert f"<0x{byte:02X}>" in joined
    assert gpt2.token_str(gpt2.encode("€")[0]) == "€"
    assert gpt2.token_str(gpt2.eot_id) == "<|endoftext|>"


# -- serialisation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: CHAR, lambda: CharTokenizer(["z", "\n", "é"]), GPT2Tokenizer])
def test_to_dict_round_trip(make) -> None:
    tok: Tokenizer = make()
    d = json.loads(json.dumps(tok.to_dict()))  # really JSON-able
    back = tokenizer_from_dict(d)
    assert type(back) is type(tok) and back.kind == tok.kind
    assert back == tok
    assert back.vocab_size == tok.vocab_size
    text = tok.decode(range(min(tok.vocab_size, 300)))
    assert back.encode(text) == tok.encode(text)


def test_from_dict_errors() -> None:
    with pytest.raises(ValueError, match="kind"):
        tokenizer_from_dict({})
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "sentencepiece"})
    with pytest.raises(ValueError, match="chars"):
        tokenizer_from_dict({"kind": "char"})


@given(st.text(alphabet=st.characters(blacklist_characters="·⏎⇥␍<")))
def test_invisible_undoes_visible(s: str) -> None:
    """What the app shows (visible) reads back as the same text (invisible), control characters
    shown as <U+XXXX> included; "<" is left out since a typed "<U+0041>" means "A"."""
    assert invisible(visible(s)) == s
