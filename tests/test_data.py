"""trainers.data: corpora (cache, ../shared copy, offline fallback), user files, token cache, batches."""
from __future__ import annotations

import hashlib
import urllib.request

import numpy as np
import pytest
import torch

from gpt.tokenizer import CharTokenizer, GPT2Tokenizer
from trainers import data as D


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache, and no network: any download attempt fails like an offline machine."""
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path / "cache"))
    calls = []

    def offline(*a, **k):
        calls.append(a)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return calls


def test_cache_dir_env_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NANOLENS_CACHE")
    assert D.cache_dir() == tmp_path / "xdg" / "nanolens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert D.cache_dir().parts[-2:] == (".cache", "nanolens")


def test_python_docs_is_the_pydoc_topics_in_key_order():
    from pydoc_data.topics import topics
    text, src = D.load_text("python-docs")
    first = sorted(topics)[0]
    assert text.startswith(topics[first]) and len(text) == sum(map(len, topics.values()))
    assert src["name"] == "python-docs" and src["sha256"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.skipif(not D.SHARED_SHAKESPEARE.is_file(),
                    reason="../shared/data/tinyshakespeare.txt is absent (only the repo is checked out)")
def test_shakespeare_copied_from_shared_without_network(cache):
    assert D.default_data() == "shakespeare"  # copies it into the cache as a side effect
    text, src = D.load_text("shakespeare")
    assert cache == []  # no download was attempted
    assert src["name"] == "shakespeare" and len(text) == 1115394
    assert (D.cache_dir() / "tinyshakespeare.txt").read_bytes() == D.SHARED_SHAKESPEARE.read_bytes()


def test_shakespeare_offline_falls_back_to_python_docs(cache, monkeypatch, tmp_path):
    monkeypatch.setattr(D, "SHARED_SHAKESPEARE", tmp_path / "absent.txt")
    msgs: list[str] = []
    assert D.default_data() == "python-docs"  # the default path never touches the network
    assert cache == []
    text, src = D.load_text("shakespeare", log=msgs.append)
    assert len(cache) == 1  # tried once, with the canonical URL
    assert cache[0][0] == D.SHAKESPEARE_URL
    assert src == {"name": "python-docs", "fallback_from": "shakespeare", "sha256": src["sha256"]}
    assert any("python-docs" in m and "could not download" in m for m in msgs)
    assert text == D.python_docs_text()


def test_shared_copy_with_wrong_sha_is_not_used(monkeypatch, tmp_path):
    fake = tmp_path / "tinyshakespeare.txt"
    fake.write_text("not the real thing\n" * 100)
    monkeypatch.setattr(D, "SHARED_SHAKESPEARE", fake)
    _, src = D.load_text("shakespeare", log=lambda m: None)
    assert src["name"] == "python-docs"


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"hello\x00world" * 10, "binary"),
    (b"caf\xe9 au lait" * 10, "not UTF-8"),
])
def test_bad_user_files_get_clear_errors(tmp_path, content, match):
    f = tmp_path / "corpus.txt"
    f.write_bytes(content)
    with pytest.raises(D.DataError, match=match):
        D.Corpus.load(str(f), "char", block_size=8)


def test_missing_and_unknown_data(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(D.DataError, match="unknown --data 'shakespear'"):
        D.load_text("shakespear")


def test_too_large_file_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_FILE_BYTES", 1000)
    f = tmp_path / "big.txt"
    f.write_text("a" * 1001)
    with pytest.raises(D.DataError, match="MB limit"):
        D.load_text(str(f))


def test_file_shorter_than_a_block_refused(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("abcdefghij" * 10)  # 100 chars: val split has 10 tokens
    with pytest.raises(D.DataError, match="block_size\\+1 = 33"):
        D.Corpus.load(str(f), "char", block_size=32)
    assert len(D.Corpus.load(str(f), "char", block_size=8).val) == 10


def test_split_and_token_cache(tmp_path, monkeypatch):
    f = tmp_path / "c.txt"
    text = "".join(chr(97 + (i * 7) % 26) for i in range(5000))
    f.write_text(text)
    c = D.Corpus.load(str(f), "char", block_size=16)
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    assert torch.equal(c.train, torch.from_numpy(ids[:4500]).int())  # first 90% is train
    assert torch.equal(c.val, torch.from_numpy(ids[4500:]).int())
    files = list((D.cache_dir() / "tokens").glob("*.npy"))
    assert len(files) == 1 and np.load(files[0]).dtype == np.uint16
    # a restart reads the cache instead of tokenizing again
    monkeypatch.setattr(D, "_encode_chars", lambda *a: pytest.fail("tokenized again"))
    monkeypatch.setattr(CharTokenizer, "encode", lambda *a, **k: pytest.fail("tokenized again"))
    c2 = D.Corpus.load(str(f), "char", block_size=16)
    assert torch.equal(c2.train, c.train)


def test_vectorised_char_encoding_matches_tokenizer():
    text = "héllo wörld ✓ 👍\n\tend" * 3
    tok = CharTokenizer.from_text(text)
    assert D._encode_chars(text, tok).tolist() == tok.encode(text)
    with pytest.raises(ValueError, match="Z"):
        D._encode_chars("abZ", CharTokenizer.from_text("ab"))


def test_gpt2_tokens_use_uint16_and_large_vocab_uint32():
    text = "The quick brown fox jumps over the lazy dog. " * 20
    arr = D.encode_cached(text, GPT2Tokenizer())
    assert arr.dtype == np.uint16 and arr.tolist() == GPT2Tokenizer().encode(text)
    big = CharTokenizer([chr(0x4E00 + i) for i in range(70000)])
    arr = D.encode_cached(chr(0x4E00) + chr(0x4E00 + 69999), big)
    assert arr.dtype == np.uint32 and arr.tolist() == [0, 69999]


def test_get_batch_windows_shift_and_reproducibility():
    ids = np.arange(1000, dtype=np.uint16) % 50
    c = D.Corpus(ids, CharTokenizer([chr(65 + i) for i in range(50)]), {"name": "test"})
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = c.get_batch("train", 4, 16, g1, "cpu")
    x2, y2 = c.get_batch("train", 4, 16, g2, "cpu")
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert torch.equal((x[:, 1:] - x[:, :-1]) % 50, torch.ones(4, 15, dtype=torch.long))  # contiguous
    xv, _ = c.get_batch("val", 64, 16, g1, "cpu")
    assert set(xv.flatten().tolist()) <= set((np.arange(900, 1000) % 50).tolist())


# -- shakespeare-repeats --------------------------------------------------------------------------
def strip_repeats(out: str, text: str) -> list[int]:
    """Walk `out` (repeat_spans of `text`) piece by piece between marks, checking that removing
    each mark with the copy after it gives back `text` exactly, in order; return the copies'
    lengths. A piece after a mark is a copy of the text just before it followed by what came next
    in `text`, so it must equal text[pos - L : pos - L + len(piece)] for the copy length L."""
    pieces = out.split(D.REPEAT_MARK)
    assert text.startswith(pieces[0])
    pos, lengths = len(pieces[0]), []
    for piece in pieces[1:]:
        fits = [n for n in range(1, D.REPEAT_MAX + 1) if text[pos - n:pos - n + len(piece)] == piece]
        assert fits, f"the piece at {pos} is not a copy followed by the text that came next: {piece[:60]!r}"
        lengths.append(fits[0])
        pos += len(piece) - fits[0]
    assert pos == len(text)  # everything covered, nothing added
    return lengths


def test_repeat_spans_is_deterministic_and_only_repeats():
    text = D.python_docs_text()[:60000].replace(D.REPEAT_MARK, "/")  # any text without the mark
    out = D.repeat_spans(text, seed=5)
    assert out == D.repeat_spans(text, seed=5) and out != D.repeat_spans(text, seed=6)
    lengths = strip_repeats(out, text)
    assert len(out) == len(text) + sum(lengths) + len(lengths)  # each mark adds itself and a copy
    assert all(D.REPEAT_MIN <= n <= D.REPEAT_MAX for n in lengths[:-1])  # (the last span may be short)
    spans = len(text) / ((D.REPEAT_MIN + D.REPEAT_MAX) / 2)  # about this many spans
    assert 0.4 < len(lengths) / spans < 0.6  # about half of them repeated
    with pytest.raises(ValueError, match="holds '\\|' already"):
        D.repeat_spans("a|b", seed=0)


@pytest.mark.skipif(not D.SHARED_SHAKESPEARE.is_file(),
                    reason="../shared/data/tinyshakespeare.txt is absent (only the repo is checked out)")
def test_shakespeare_repeats_split_before_repeating(cache):
    c = D.Corpus.load("shakespeare-repeats", "char", block_size=256, log=lambda m: None)
    assert cache == []  # read from ../shared through the cache, no download attempted
    raw = D.SHARED_SHAKESPEARE.read_text(encoding="utf-8")
    n = int(len(raw) * D.TRAIN_FRACTION)
    tok = c.tokenizer
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == len(set(raw) | {D.REPEAT_MARK})
    train, val = tok.decode(c.train.tolist()), tok.decode(c.val.tolist())
    assert len(c.train) == c.source["train_chars"] and c.source["name"] == "shakespeare-repeats"
    # the validation split is the raw last 10% with repeats, and nothing else: no training text
    assert strip_repeats(val, raw[n:]) and strip_repeats(train, raw[:n])
    assert len(val) > len(raw) - n and train.count(D.REPEAT_MARK) > 1000  # the repeats are there
    again = D.Corpus.load("shakespeare-repeats", "char", block_size=256, log=lambda m: None)
    assert torch.equal(again.train, c.train) and torch.equal(again.val, c.val)  # deterministic
    assert again.source["sha256"] == c.source["sha256"]


def test_shakespeare_repeats_without_tiny_shakespeare_says_what_to_do(cache, monkeypatch, tmp_path):
    monkeypatch.setattr(D, "SHARED_SHAKESPEARE", tmp_path / "absent.txt")
    with pytest.raises(D.DataError, match="needs Tiny Shakespeare.*put a copy in one of them"):
        D.load_text("shakespeare-repeats", log=lambda m: None)
    assert len(cache) == 1  # one download tried (here: offline), never a fallback to other text
