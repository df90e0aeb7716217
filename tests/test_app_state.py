"""app/state.py, app/resources, app/uploads.py and the pure views they use (prompt, model card),
without a running app: defaults, prompt checks, the model and trace caches and uploads. What can be
inspected (discovery, labels) is tests/test_catalog.py."""
from __future__ import annotations

import io
import json
import os
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
    ([], "no file was received.*at most 50 MB"),
])
def test_upload_refuses_bad_files(root: Path, files, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        uploads.save_upload(files)
    assert not (root.parent / "escape.txt").exists()
    leftovers = list(catalog.uploads_dir().iterdir()) if catalog.uploads_dir().exists() else []
    assert leftovers == []  # a refused upload leaves nothing behind


def _nanogpt_ckpt(src: Path, dataset: str | None = None) -> tuple[bytes, bytes]:
    """(ckpt.pt, meta.pkl) bytes as nanoGPT's train.py / prepare.py write them, for the model at src
    (with config["dataset"] when given)."""
    import pickle

    model, tok, _ = load(src)
    c = model.config
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "iter_num": 30,
                "model_args": dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                                   block_size=c.block_size, bias=c.bias, vocab_size=c.vocab_size,
                                   dropout=c.dropout), **({"config": {"dataset": dataset}} if dataset else {})}, buf)
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


# -- uploads: limits, labels, messages, cleanup (issues 12 and 13) --------------------------------------
def test_upload_limit_is_the_servers() -> None:
    """The limit the messages name is the one Streamlit enforces."""
    import tomllib

    config = tomllib.loads((Path(catalog.REPO) / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == uploads.UPLOAD_LIMIT_MB == 50


def test_over_limit_upload_names_the_limit(root: Path) -> None:
    """A file over the limit never reaches the callback (the browser refuses it), so "no file"
    names the limit too; a too-big file handed over directly is refused by name."""
    with pytest.raises(CheckpointError, match="ckpt.pt: over the upload limit; each file may be at most 50 MB"):
        uploads.save_upload([("ckpt.pt", bytes((50 << 20) + 1))])
    assert not catalog.uploads_dir().exists() or not any(catalog.uploads_dir().iterdir())


def test_zip_bomb_refused_before_writing(root: Path) -> None:
    """A zip of about 200 KB that inflates past 4 x the upload limit writes nothing (it wrote
    1 GiB before the cap was 4 GiB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb/model.safetensors", "w", force_zip64=True) as f:
            for _ in range(uploads.MAX_UNZIPPED_BYTES // (1 << 20) + 1):
                f.write(bytes(1 << 20))
    assert len(buf.getvalue()) < 1 << 20
    with pytest.raises(CheckpointError, match=r"inflates to more than 200 MB \(4 times the upload limit\)"):
        uploads.save_upload([("bomb.zip", buf.getvalue())])
    assert not any(catalog.uploads_dir().iterdir())


def test_zip_entry_never_inflates_past_its_declared_size(root: Path) -> None:
    """Why the bomb check can use the declared sizes: a header that understates an entry gives a
    damaged-zip error, never more bytes than declared."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x/a.bin", bytes(3 << 20))
    data = bytearray(buf.getvalue())
    cd = data.rindex(b"PK\x01\x02")  # the central directory entry: uncompressed size at +24
    data[cd + 24:cd + 28] = (1000).to_bytes(4, "little")
    with pytest.raises(CheckpointError, match="damaged"):
        uploads._extract_zip(bytes(data), root / "x")
    assert (root / "x" / "x" / "a.bin").stat().st_size <= 1000


def test_upload_is_labelled_by_the_names_uploaded(root: Path) -> None:
    ckpt, meta = _nanogpt_ckpt(root / "tiny-run" / "best")
    path = uploads.save_upload([("shakespeare-char.pt", ckpt), ("meta.pkl", meta)])
    assert catalog.describe(path) == "upload · shakespeare-char.pt + meta.pkl"
    assert resources.load_model(str(path)).label == "upload · shakespeare-char.pt + meta.pkl"
    src = root / "tiny-run" / "best"
    z = uploads.save_upload([("my best.zip", _zip({f"best/{p.name}": p.read_bytes() for p in src.iterdir()}))])
    assert catalog.describe(z) == "upload · my best.zip"


def test_upload_without_meta_pkl_asks_for_it(root: Path) -> None:
    ckpt, _ = _nanogpt_ckpt(root / "tiny-run" / "best", dataset="shakespeare_char")
    path = uploads.save_upload([("model.pt", ckpt)])
    with pytest.raises(CheckpointError) as e:
        resources.load_model(str(path))
    msg = uploads.explain(path, e.value)
    assert msg == ("model.pt: this is a character-level nanoGPT model, and its vocabulary is in nanoGPT's "
                   "data/shakespeare_char/meta.pkl; upload meta.pkl together with it.")


@pytest.mark.parametrize("data, says", [
    (b"", "weights.pt: empty (0 bytes)"),
    (b"just some text, not weights", "weights.pt: not a PyTorch zip or pickle file"),
])
def test_bad_upload_is_explained_in_the_users_names(root: Path, data: bytes, says: str) -> None:
    path = uploads.save_upload([("weights.pt", data)])
    with pytest.raises(CheckpointError) as e:
        resources.load_model(str(path))
    msg = uploads.explain(path, e.value)
    assert msg.startswith(says) and ".uploads" not in msg and "ckpt.pt" not in msg


@pytest.mark.parametrize("outcome", ["refused", "raised"])
def test_try_upload_discards_on_any_failure(root: Path, outcome: str) -> None:
    ckpt, meta = _nanogpt_ckpt(root / "tiny-run" / "best")
    seen = []

    def use(path: str) -> bool:
        seen.append(path)
        assert Path(path).is_file()  # saved before use
        if outcome == "raised":
            raise RuntimeError("a bug in use")
        return False
    if outcome == "raised":
        with pytest.raises(RuntimeError):
            uploads.try_upload([("ckpt.pt", ckpt), ("meta.pkl", meta)], use)
    else:
        assert uploads.try_upload([("ckpt.pt", ckpt), ("meta.pkl", meta)], use) is None
    assert seen and list(catalog.uploads_dir().iterdir()) == []


def test_loaded_uploads_are_pruned(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest KEEP_UPLOADS loaded uploads stay, none older than MAX_AGE_DAYS, never the one
    in use, never a training text."""
    import time

    text = uploads.save_text_upload("corpus.txt", b"hello")
    ckpt, meta = _nanogpt_ckpt(root / "tiny-run" / "best")
    made = []
    for i in range(uploads.KEEP_UPLOADS + 3):
        p = uploads.save_upload([("ckpt.pt", ckpt)])
        side = p.parent.parent / f"{p.parent.name}.json"
        info = json.loads(side.read_text())
        info["saved_at"] = time.time() - 3600 * (20 - i)  # older first, hours apart
        side.write_text(json.dumps(info))
        made.append(p)
    stale = made[-2]  # among the newest, but 8 days old
    side = stale.parent.parent / f"{stale.parent.name}.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "saved_at": time.time() - 8 * 86400}))
    in_use = made[0]  # the oldest, still inspected
    gone = uploads.prune_uploads(in_use=[in_use])
    left = [p for p in made if p.exists()]
    assert set(left) == {in_use, *made[-uploads.KEEP_UPLOADS - 1:]} - {stale}
    assert sorted(gone) == sorted(p.parent for p in made if p not in left)
    assert text.is_file() and all(not (g.parent / f"{g.name}.json").exists() for g in gone)


def _hf_folder(folder: Path) -> Path:
    """A Hugging Face GPT-2 folder (config.json + model.safetensors, Conv1D weights as (in, out))."""
    from safetensors.torch import save_file

    from gpt.model import GPT

    torch.manual_seed(0)
    cfg = GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=2, n_embd=8, activation="gelu_tanh")
    conv = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    sd = {k: (v.t() if k.endswith(conv) else v).contiguous() for k, v in GPT(cfg).state_dict().items()
          if k != "lm_head.weight"}
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 8, "n_embd": 8,
                                                    "n_layer": 1, "n_head": 2, "vocab_size": 50257}))
    return folder


def test_app_loads_everything_load_loads(root: Path, tmp_path: Path) -> None:
    """Issue 12, 2: a nanoGPT out_dir (ckpt.pt + meta.pkl, no config.json) failed in the app
    because its checkpoint stamp read a config.json; every form load accepts loads in the app."""
    ckpt, meta = _nanogpt_ckpt(root / "tiny-run" / "best")
    out = tmp_path / "out-shakespeare-char"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(ckpt)
    (out / "meta.pkl").write_bytes(meta)
    native = root / "tiny-run" / "best"
    for ref in (out, out / "ckpt.pt", native, native / "model.safetensors", native / "config.json",
                root / "tiny-run", _hf_folder(tmp_path / "hf")):
        model, tok, _ = load(ref)
        loaded = resources.load_model(str(ref))
        assert loaded.tokenizer == tok and loaded.config == model.config, ref
        assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                     model.state_dict().values()))


def test_stamp_follows_meta_pkl_beside_ckpt(root: Path, tmp_path: Path) -> None:
    """Putting meta.pkl beside a ckpt.pt (or replacing it) gives a new stamp, so a new load."""
    ckpt, meta = _nanogpt_ckpt(root / "tiny-run" / "best")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(ckpt)
    before = resources.checkpoint_stamp(str(out))
    (out / "meta.pkl").write_bytes(meta)
    os.utime(out / "meta.pkl", ns=(10**19, 10**19))  # (mtimes can tie on a fast disk)
    assert resources.checkpoint_stamp(str(out)) != before


def test_stamp_of_unreadable_refs_is_a_checkpoint_error(root: Path) -> None:
    with pytest.raises(CheckpointError, match="File name too long"):
        resources.checkpoint_stamp(str(root / ("x" * 300)))
