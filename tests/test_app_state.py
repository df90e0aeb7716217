"""app/state.py, app/resources.py, app/uploads.py and the pure views they use (prompt, model card),
without a running app: defaults, prompt checks, the model and trace caches and uploads. What can be
inspected (discovery, labels) is tests/test_catalog.py."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from app import catalog, resources, state, uploads
from app.views.model_card import card_markdown, model_card
from app.views.prompt import prompt_ids
from gpt.checkpoint import CheckpointError, load
from gpt.config import GPTConfig
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer


@pytest.fixture
def root(app_root: Path) -> Path:
    """A private checkpoints root with a copy of the tiny run (see conftest.app_root)."""
    return app_root


# -- state -------------------------------------------------------------------------------------------
def test_init_state_sets_defaults_and_keeps_values(root: Path) -> None:
    ss: dict = {}
    state.init_state(ss)
    assert set(state.KEYS) <= set(ss)
    assert ss["model_ref"] == str(root / "tiny-run")  # the only run is the default
    assert ss["prompt"] == state.CHAR_PROMPT and ss["layer"] == 0 and ss["head"] == 0 and ss["gen"] == {}
    ss["prompt"], ss["layer"] = "hello", 3
    state.init_state(ss)
    assert ss["prompt"] == "hello" and ss["layer"] == 3


def test_default_prompt_follows_tokenizer() -> None:
    assert state.default_prompt("gpt2") == state.BPE_PROMPT
    assert state.default_prompt("char") == state.CHAR_PROMPT


# -- loading -----------------------------------------------------------------------------------------
def test_load_model_is_cached_until_the_checkpoint_changes(root: Path) -> None:
    ref = str(root / "tiny-run")
    a, b = resources.load_model(ref), resources.load_model(ref)
    assert a is b and a.label == "tiny-run · latest" and a.meta["iter"] == 30
    assert a.config == a.model.config and a.tokenizer.kind == "char"
    # the trainer replaces latest/ at every eval: the app must see the new weights
    model, tok, meta = load(root / "tiny-run" / "snapshots" / "iter_0000010")
    from gpt.checkpoint import save
    save(root / "tiny-run" / "latest", model, tok, meta=meta)
    c = resources.load_model(ref)
    assert c is not a and c.meta["iter"] == 10


def test_load_model_error_is_clear(root: Path) -> None:
    bad = root / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="config.json"):
        resources.load_model(str(bad))
    with pytest.raises(CheckpointError, match="no such file"):
        resources.load_model(str(root / "nope"))


def test_trace_records_only_names_and_is_an_lru(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = resources.load_model(str(root / "tiny-run"))
    ids = tuple(loaded.tokenizer.encode("ROMEO:"))
    names = ("blocks.0.attn.hook_pattern",)
    rec = resources.trace(loaded, ids, names)
    assert rec.names() == list(names)
    assert rec[names[0]].shape == (1, loaded.config.n_head, len(ids), len(ids))
    assert resources.trace(loaded, ids, names) is rec  # cached
    logits, _ = loaded.model(torch.tensor([ids]), rec=resources.record_forward(loaded.model, ids, None))
    full = resources.trace(loaded, ids, ())
    torch.testing.assert_close(full["logits"], logits)  # the recorded logits are the model's
    cache = resources.TraceCache(maxsize=2)
    made = []
    for k in ("a", "b", "a", "c", "b"):
        cache.get((k,), lambda k=k: made.append(k) or k)
    assert made == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c"


# -- prompt view -------------------------------------------------------------------------------------
def test_prompt_ids_cases() -> None:
    tok = CharTokenizer.from_text("abc \n")
    cfg = GPTConfig.preset("tiny", vocab_size=tok.vocab_size)
    empty = prompt_ids(tok, cfg, "")
    assert not empty.ok and "empty" in empty.message
    ok = prompt_ids(tok, cfg, "abc")
    assert ok.ok and ok.ids == tuple(tok.encode("abc")) and ok.message is None and ok.estimate_bytes > 0
    bad = prompt_ids(tok, cfg, "abxyx")
    assert not bad.ok and bad.ids == () and bad.dropped_chars == ("x", "y") and "'x'" in bad.message
    dropped = prompt_ids(tok, cfg, "abxyx", drop_unknown=True)
    assert dropped.ok and dropped.ids == tuple(tok.encode("ab")) and "Dropped 2" in dropped.message
    assert not prompt_ids(tok, cfg, "xyz", drop_unknown=True).ok  # nothing left
    long = prompt_ids(tok, cfg, "abc" * 20)  # 60 tokens > block_size 32
    assert long.ok and long.truncated and len(long.ids) == 32
    assert long.ids == tuple(tok.encode("abc" * 20)[-32:]) and "last 32" in long.message
    huge = prompt_ids(tok, cfg, "abc", limit_bytes=10)
    assert not huge.ok and huge.level == "error" and "shorten" in huge.message


def test_prompt_ids_bpe_keeps_every_character() -> None:
    tok = GPT2Tokenizer()
    cfg = GPTConfig.preset("tiny", vocab_size=tok.vocab_size)
    r = prompt_ids(tok, cfg, "naïve café ☕")
    assert r.ok and r.dropped_chars == () and tok.decode(r.ids) == "naïve café ☕"


# -- model card --------------------------------------------------------------------------------------
def test_model_card(root: Path) -> None:
    loaded = resources.load_model(str(root / "tiny-run"))
    n = loaded.model.get_num_params(non_embedding=False)
    card = model_card(loaded.config, loaded.tokenizer, loaded.meta, n, label=loaded.label)
    assert card["Layers"] == 2 and card["Heads"] == 2 and card["Embedding size"] == 64
    assert card["Iterations trained"] == "30" and card["Tokenizer"].startswith("char")
    assert card["Val loss"] == f"{loaded.meta['val_loss']:.4f}"
    assert f"{n:,}" in card["Parameters"]
    md = card_markdown(card)
    assert "| **Layers** | 2 |" in md and md.count("\n") == len(card) + 1
    bare = model_card(loaded.config, loaded.tokenizer, {"source_format": "hf-gpt2"}, n)
    assert bare["Val loss"] == "—" and bare["Iterations trained"] == "—"
    assert bare["Source"] == "Hugging Face GPT-2"


# -- uploads -----------------------------------------------------------------------------------------
def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_upload_zip_and_pair_load(root: Path) -> None:
    src = root / "tiny-run" / "best"
    files = {f"best/{p.name}": p.read_bytes() for p in src.iterdir()}
    path = uploads.save_upload([("best.zip", _zip(files))])
    assert path.name == "best" and catalog.uploads_dir() in path.parents
    assert resources.load_model(str(path)).meta["iter"] == load(src)[2]["iter"]
    assert catalog.describe(path).startswith("upload · best")
    pair = uploads.save_upload([("w.safetensors", (src / "model.safetensors").read_bytes()),
                                  ("config.json", (src / "config.json").read_bytes())])
    assert resources.load_model(str(pair)).config == load(src)[0].config
    uploads.discard_upload(pair)
    assert not pair.exists() and path.exists()
    from trainers.runs import list_runs
    assert [r["name"] for r in list_runs()] == ["tiny-run"]  # .uploads is never taken for a run


@pytest.mark.parametrize("files, match", [
    ([("evil.zip", _zip({"../../escape.txt": b"x"}))], "unsafe path"),
    ([("evil.zip", _zip({"/etc/passwd": b"x"}))], "unsafe path"),
    ([("broken.zip", b"PK\x03\x04 not really")], "cannot be opened"),
    ([("notes.txt", b"hello")], "cannot tell"),
    ([], "nothing uploaded"),
])
def test_upload_refuses_bad_files(root: Path, files, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        uploads.save_upload(files)
    assert not (root.parent / "escape.txt").exists()
    leftovers = list(catalog.uploads_dir().iterdir()) if catalog.uploads_dir().exists() else []
    assert leftovers == []  # a refused upload leaves nothing behind


def _nanogpt_ckpt(src: Path) -> tuple[bytes, bytes]:
    """(ckpt.pt, meta.pkl) bytes as nanoGPT's train.py / prepare.py write them, for the model at src."""
    import pickle

    model, tok, _ = load(src)
    c = model.config
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "iter_num": 30,
                "model_args": dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                                   block_size=c.block_size, bias=c.bias, vocab_size=c.vocab_size,
                                   dropout=c.dropout)}, buf)
    meta = {"vocab_size": tok.vocab_size, "itos": dict(enumerate(tok.chars)),
            "stoi": {ch: i for i, ch in enumerate(tok.chars)}}
    return buf.getvalue(), pickle.dumps(meta)


def test_upload_nanogpt_ckpt_with_meta(root: Path) -> None:
    ckpt, meta = _nanogpt_ckpt(root / "tiny-run" / "best")
    path = uploads.save_upload([("ckpt.pt", ckpt), ("meta.pkl", meta)])
    loaded = resources.load_model(str(path))
    assert loaded.meta["source_format"] == "nanogpt" and loaded.meta["iter"] == 30
    assert loaded.tokenizer == load(root / "tiny-run" / "best")[1]


def test_hostile_pickle_never_runs(root: Path, tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    torch.save({"model": Evil(), "model_args": {}}, buf)
    path = uploads.save_upload([("ckpt.pt", buf.getvalue())])
    with pytest.raises(CheckpointError, match="weights_only"):
        resources.load_model(str(path))
    ckpt, _ = _nanogpt_ckpt(root / "tiny-run" / "best")
    hostile = uploads.save_upload([("ckpt.pt", ckpt), ("meta.pkl", pickle.dumps(Evil()))])
    with pytest.raises(CheckpointError, match="meta.pkl"):
        resources.load_model(str(hostile))
    assert not marker.exists()
