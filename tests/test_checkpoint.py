"""Checkpoints: native round trips, atomic saves, run folders, nanoGPT import, hostile files."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import gpt.checkpoint as ckpt
from gpt.checkpoint import (
    CheckpointError,
    checkpoints_root,
    list_snapshots,
    load,
    load_optimizer_state,
    resolve_checkpoint,
    save,
)
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer

torch.set_num_threads(1)
CHARS = sorted(set("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
TOK = CharTokenizer(CHARS)


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=len(CHARS), **kw)).eval()


def logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # targets give logits for every position
        return model(idx, targets=torch.zeros_like(idx))[0]


IDX = torch.randint(0, len(CHARS), (2, 16), generator=torch.Generator().manual_seed(1))


def same_weights(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- native ----------------------------------------------------------------------------------------
def test_native_round_trip_fp32_exact(tmp_path: Path) -> None:
    m = tiny()
    p = save(tmp_path / "ck", m, TOK, meta={"iter": 7, "val_loss": 2.5})
    assert sorted(os.listdir(p)) == ["config.json", "model.safetensors"]
    info = json.loads((p / "config.json").read_text())
    assert info["format"] == "nanolens" and info["version"] == 1 and info["model"] == m.config.to_dict()
    from safetensors.torch import load_file
    assert "lm_head.weight" not in load_file(str(p / "model.safetensors"))  # tied: stored once

    m2, tok2, meta = load(p)
    assert same_weights(m, m2) and not m2.training
    assert m2.lm_head.weight is m2.transformer.wte.weight  # re-tied
    assert m2.config == m.config and tok2 == TOK
    assert meta["iter"] == 7 and meta["val_loss"] == 2.5 and "saved_at" in meta
    assert torch.equal(logits(m, IDX), logits(m2, IDX))
    # the weights file and config.json name the same checkpoint
    for q in (p / "model.safetensors", p / "config.json"):
        assert same_weights(m, load(q)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_loads_as_fp32(tmp_path: Path, dtype: torch.dtype) -> None:
    m = tiny()
    full = save(tmp_path / "full", m, TOK)
    half = save(tmp_path / "half", m, TOK, dtype=dtype)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    m2, _, _ = load(half)
    assert all(p.dtype == torch.float32 for p in m2.parameters())
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    for k, v in m.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=tol, atol=tol)
    m3, _, _ = load(full, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m3.parameters())


def test_optimizer_state_round_trip(tmp_path: Path) -> None:
    m = tiny()
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    m.train()
    m(IDX, targets=IDX)[1].backward()
    opt.step()
    p = save(tmp_path / "ck", m, TOK, optimizer=opt)
    state = load_optimizer_state(p)
    assert load_optimizer_state(p / "model.safetensors")["param_groups"] == state["param_groups"]
    m2, _, _ = load(p)
    opt2 = m2.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    opt2.load_state_dict(state)
    ref = opt.state_dict()
    assert state["param_groups"] == ref["param_groups"]
    for i, s in ref["state"].items():
        assert torch.equal(opt2.state_dict()["state"][i]["exp_avg"], s["exp_avg"])
    assert load_optimizer_state(save(tmp_path / "no_opt", m, TOK)) is None


def test_save_refuses_to_replace_other_folders(tmp_path: Path) -> None:
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing"):
        save(other, tiny(), TOK)
    assert (other / "precious.txt").read_text() == "keep me"
    broken = save(tmp_path / "broken", tiny(), TOK)
    (broken / "model.safetensors").unlink()  # ours but incomplete: may be replaced
    assert same_weights(load(save(broken, tiny(9), TOK))[0], tiny(9))
    with pytest.raises(ValueError, match="JSON"):
        save(tmp_path / "x", tiny(), TOK, meta={"bad": object()})
    assert not (tmp_path / "x").exists()


def test_checkpoints_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tmp_path / "elsewhere"))
    assert checkpoints_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("NANOLENS_CHECKPOINTS")
    assert checkpoints_root() == Path(ckpt.__file__).resolve().parent.parent / "checkpoints"


# -- atomic saves ----------------------------------------------------------------------------------
def _crash_in(monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """Make gpt.checkpoint.<name> raise on its (after+1)-th call, and keep rmtree from cleaning
    up, so the folders look as they would after the process died."""
    real = getattr(ckpt if hasattr(ckpt, name) else ckpt.os, name)
    calls = {"n": 0}

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("simulated crash")
        return real(*a, **k)
    monkeypatch.setattr(ckpt if hasattr(ckpt, name) else ckpt.os, name, boom)
    monkeypatch.setattr(ckpt.shutil, "rmtree", lambda *a, **k: None)


def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    old = tiny(0)
    save(run / "latest", old, TOK, meta={"iter": 1})
    save(run / "snapshots" / "iter_0000001", old, TOK, meta={"iter": 1})
    with monkeypatch.context() as mp:
        _crash_in(mp, "_write_json")  # weights written, config.json not
        with pytest.raises(OSError, match="simulated"):
            save(run / "latest", tiny(1), TOK, meta={"iter": 2})
        with pytest.raises(OSError, match="simulated"):
            save(run / "snapshots" / "iter_0000002", tiny(1), TOK, meta={"iter": 2})
    leftovers = [p.name for p in (run / "snapshots").iterdir()] + [p.name for p in run.iterdir()]
    assert any(".tmp-" in n for n in leftovers)  # the crash left its temp folders behind
    for path in (run, run / "latest"):
        m, _, meta = load(path)
        assert meta["iter"] == 1 and same_weights(m, old)
    assert [it for it, _ in list_snapshots(run)] == [1]


def test_crash_between_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented window: old moved aside, new not yet in place. No half checkpoint is
    loaded, and the run is not silently shown as best/ (issue 13, 4): load reads the newest
    complete hidden copy of latest/ (the new one, iter 3) and says so in meta["load_note"]."""
    run = tmp_path / "run"
    save(run / "best", tiny(0), TOK, meta={"iter": 1})
    save(run / "latest", tiny(2), TOK, meta={"iter": 2})
    with monkeypatch.context() as mp:
        _crash_in(mp, "rename", after=1)
        with pytest.raises(OSError, match="simulated"):
            save(run / "latest", tiny(3), TOK, meta={"iter": 3})
    assert not (run / "latest").exists()
    for ref in (run, run / "latest"):
        m, _, meta = load(ref)
        assert meta["iter"] == 3 and same_weights(m, tiny(3))
        assert "latest/ is being replaced" in meta["load_note"] and ".latest.tmp-" in meta["load_note"]
    assert resolve_checkpoint(run).name.startswith(".latest.tmp-")
    assert "load_note" not in load(run / "best")[2]  # nothing to say about an intact folder


def test_run_without_latest_says_what_it_shows(tmp_path: Path) -> None:
    """A run with no complete latest/ anywhere shows best/, and says so instead of passing it
    off as latest; with neither, the newest snapshot, said too."""
    run = tmp_path / "run"
    save(run / "snapshots" / "iter_0000000", tiny(0), TOK, meta={"iter": 0})
    assert "newest snapshot (iter 0)" in load(run)[2]["load_note"]
    save(run / "best", tiny(1), TOK, meta={"iter": 5})
    m, _, meta = load(run)
    assert meta["iter"] == 5 and "no complete latest/; showing best/ (iter 5)" in meta["load_note"]
    save(run / "latest", tiny(2), TOK, meta={"iter": 6})
    assert "load_note" not in load(run)[2]


# -- run folders -----------------------------------------------------------------------------------
def test_run_folder_resolution(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {}, "data": {}, "tokenizer": {}}))
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        load(run)
    for it in (20, 3, 100):
        save(run / "snapshots" / f"iter_{it:07d}", tiny(it), TOK, meta={"iter": it})
    (run / "snapshots" / "notes").mkdir()
    assert [it for it, _ in list_snapshots(run)] == [3, 20, 100]
    assert load(run)[2]["iter"] == 100  # no latest/ or best/: newest snapshot
    save(run / "best", tiny(5), TOK, meta={"iter": 5})
    assert load(run)[2]["iter"] == 5
    save(run / "latest", tiny(6), TOK, meta={"iter": 6})
    assert load(run)[2]["iter"] == 6
    assert resolve_checkpoint(run, "best") == run / "best"
    assert resolve_checkpoint(run, 20) == run / "snapshots" / "iter_0000020"
    with pytest.raises(CheckpointError, match=r"\[3, 20, 100\]"):
        resolve_checkpoint(run, 7)
    (tmp_path / "empty").mkdir()
    assert list_snapshots(tmp_path / "empty") == []
    with pytest.raises(CheckpointError, match="pass one of them"):
        load(tmp_path)  # the checkpoints root, not a run


# -- nanoGPT import --------------------------------------------------------------------------------
def _write_nanogpt(folder: Path, model: GPT, tok: CharTokenizer | None, mask_buffers: bool = False) -> Path:
    """A ckpt.pt exactly as nanoGPT's train.py writes it (compiled model: '_orig_mod.' keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    if mask_buffers:  # nanoGPT before flash attention registered a causal mask per layer
        for i in range(c.n_layer):
            sd[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(
                torch.ones(c.block_size, c.block_size)).view(1, 1, c.block_size, c.block_size)
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                      bias=c.bias, vocab_size=c.vocab_size, dropout=c.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({"model": sd, "optimizer": opt.state_dict(), "model_args": model_args, "iter_num": 250,
                "best_val_loss": torch.tensor(1.5), "config": {"dataset": "shakespeare_char"}},
               folder / "ckpt.pt")
    if tok is not None:
        stoi = {ch: i for i, ch in enumerate(tok.chars)}
        itos = {i: ch for i, ch in enumerate(tok.chars)}
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": tok.vocab_size, "itos": itos, "stoi": stoi}, f)
    return folder / "ckpt.pt"


@pytest.mark.parametrize("mask_buffers", [False, True])
def test_nanogpt_import(tmp_path: Path, mask_buffers: bool) -> None:
    m = tiny(4)
    path = _write_nanogpt(tmp_path / "out", m, TOK, mask_buffers)
    for p in (path, path.parent):  # the file or nanoGPT's out_dir
        m2, tok, meta = load(p)
        assert torch.equal(logits(m, IDX), logits(m2, IDX))
        assert isinstance(tok, CharTokenizer) and tok.chars == TOK.chars
        assert type(meta["best_val_loss"]) is float and meta["best_val_loss"] == 1.5
        assert meta["iter"] == 250 and meta["source_format"] == "nanogpt"
        assert m2.config.activation == "gelu"
    for p in (path, path.parent):
        assert set(load_optimizer_state(p)) == {"state", "param_groups"}


def test_nanogpt_tokenizer_without_meta_pkl(tmp_path: Path) -> None:
    path = _write_nanogpt(tmp_path / "a", tiny(), None)
    with pytest.raises(CheckpointError, match=r"shakespeare_char/meta\.pkl.*ckpt\.pt"):
        load(path)
    torch.manual_seed(0)  # nanoGPT pads GPT-2's vocabulary to 50304 for speed
    padded = GPT(GPTConfig(block_size=8, vocab_size=50304, n_layer=1, n_head=1, n_embd=8))
    _, tok, _ = load(_write_nanogpt(tmp_path / "b", padded, None))
    assert isinstance(tok, GPT2Tokenizer)


# -- hostile and broken files ----------------------------------------------------------------------
class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Open:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_Shell, _Open])
def test_hostile_pickles_never_run(tmp_path: Path, payload) -> None:
    # control: an ordinary unpickler really would run the payload
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    out = _write_nanogpt(tmp_path / "meta", tiny(), None).parent
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 65, "itos": payload(marker)}, f)
    with pytest.raises(CheckpointError, match="meta.pkl"):
        load(out)
    bad = tmp_path / "ckpt" / "ckpt.pt"
    bad.parent.mkdir()
    torch.save({"model": payload(marker), "model_args": {}}, bad)
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load(bad)
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load_optimizer_state(bad)
    assert not marker.exists()


def test_random_bytes_and_truncation(tmp_path: Path) -> None:
    junk = tmp_path / "ckpt.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load(junk)
    good = save(tmp_path / "good", tiny(), TOK)
    weights = (good / "model.safetensors").read_bytes()
    for name, data in (("cut", weights[: len(weights) // 2]), ("noise", os.urandom(len(weights)))):
        p = save(tmp_path / name, tiny(), TOK)
        (p / "model.safetensors").write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}/model.safetensors"):
            load(p)
    cut = _write_nanogpt(tmp_path / "cutpt", tiny(), TOK)
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load(cut)
    (good / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load(good)
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "missing")


def test_wrong_shapes_and_missing_keys(tmp_path: Path) -> None:
    p = save(tmp_path / "ck", tiny(), TOK)
    info = json.loads((p / "config.json").read_text())
    info["model"]["n_embd"] = 32
    (p / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: transformer\.wte\.weight has shape"):
        load(p)
    info["model"].update(n_embd=64, n_layer=3)
    (p / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"missing weights \['transformer\.h\.2\."):
        load(p)
    info["model"].update(n_layer=1)
    (p / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"unexpected weights \['transformer\.h\.1\."):
        load(p)
    info["model"].update(n_layer=2)
    (p / "config.json").write_text(json.dumps(info))
    from safetensors.torch import load_file, save_file
    sd = load_file(str(p / "model.safetensors"))
    sd["transformer.h.9.extra"] = sd.pop("transformer.h.1.ln_2.weight")  # as many tensors, one renamed
    save_file(sd, str(p / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing weights \['transformer\.h\.1\.ln_2\.weight'\]$"):
        load(p)


# -- absurd checkpoints: a CheckpointError with a plain reason, and nothing built (issue 13, 6) ----
def _with_model_config(tmp_path: Path, **changes) -> Path:
    """A real tiny checkpoint whose config.json claims other model settings."""
    p = save(tmp_path / "ck", tiny(), TOK)
    info = json.loads((p / "config.json").read_text())
    info["model"].update(changes)
    (p / "config.json").write_text(json.dumps(info))
    return p


@pytest.fixture
def never_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a GPT is constructed: an absurd config must be refused before that."""
    import gpt.weights

    def refuse(config):
        raise AssertionError(f"a GPT was built for {config}")
    monkeypatch.setattr(gpt.weights, "GPT", refuse)


@pytest.mark.parametrize("field, value", [("block_size", 10**9), ("n_embd", 10**6)])
def test_huge_size_in_config_is_refused_before_building(tmp_path: Path, never_build, field, value) -> None:
    p = _with_model_config(tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the config describes [\d,]+ parameters"
                                              r" .* but the file has .*do not belong together"):
        load(p)


@pytest.mark.parametrize("n_layer", [10_000, 10**7])
def test_many_layers_in_a_small_config_cost_nothing(tmp_path: Path, never_build, n_layer: int) -> None:
    """The issue's 1 KB config with n_layer 10000 (11 s, +470 MB before) and 1e7 (7.3 GB)."""
    p = _with_model_config(tmp_path, n_layer=n_layer)
    assert (p / "config.json").stat().st_size < 1024
    with pytest.raises(CheckpointError, match="parameters"):
        load(p)


def test_many_layers_in_a_nanogpt_checkpoint_cost_nothing(tmp_path: Path, never_build) -> None:
    """A ckpt.pt's tensors are already in memory, so its model_args are checked against them: the
    first missing keys are named without listing a billion."""
    path = tmp_path / "out" / "ckpt.pt"
    m = tiny()
    path.parent.mkdir()
    c = m.config
    torch.save({"model": m.state_dict(), "model_args": dict(
        n_layer=10**9, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size, bias=c.bias,
        vocab_size=c.vocab_size, dropout=0.0)}, path)
    with pytest.raises(CheckpointError, match=r"missing weights \['transformer\.h\.2\.ln_1\.weight'.*"
                                              r"the config needs [\d,]+ tensors, the file has 28"):
        load(path)


def test_deeply_nested_config_json(tmp_path: Path) -> None:
    p = save(tmp_path / "ck", tiny(), TOK)
    (p / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"config\.json: JSON nested too deeply"):
        load(p)


def test_meta_that_is_not_an_object(tmp_path: Path) -> None:
    p = save(tmp_path / "ck", tiny(), TOK)
    info = json.loads((p / "config.json").read_text())
    info["meta"] = [1]
    (p / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"config\.json: 'meta' must be a JSON object, got list"):
        load(p)


def test_dev_zero_is_not_opened() -> None:
    with pytest.raises(CheckpointError, match=r"^/dev/zero: not a regular file or folder"):
        load("/dev/zero")


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    """Opening a FIFO for reading would block forever; it is refused before any open."""
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file or folder"):
        load(fifo)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load(tmp_path)  # a folder whose ckpt.pt is a FIFO


def test_path_too_long(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 300)
    with pytest.raises(CheckpointError, match="File name too long"):
        load(long)
    with pytest.raises(CheckpointError, match="File name too long"):
        resolve_checkpoint(long)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"n_layer": 3, "n_head": 4, "block_size": 8}])
def test_expected_shapes_match_the_model(kw) -> None:
    """The shapes checked before building are GPT's own (tied lm_head left out), in its order."""
    from gpt.weights import expected_shapes, param_count

    m = tiny(**kw)
    want = [(k, tuple(v.shape)) for k, v in m.state_dict().items() if k != "lm_head.weight"]
    assert list(expected_shapes(m.config)) == want
    assert param_count(m.config) == m.get_num_params(non_embedding=False)


# -- a garbage, empty or cut file says what it is (issue 12, 3) ------------------------------------
def _message(path: Path, bad: Path | None = None) -> str:
    """The message of loading `path`, which names the bad file (`bad`, default `path`) once."""
    with pytest.raises(CheckpointError) as e:
        load(path)
    msg = str(e.value)
    assert msg.count(str(bad or path)) == 1, msg
    for internal in ("IndexError", "EOFError", "pop from empty list", "Ran out of input", "Traceback"):
        assert internal not in msg, msg
    return msg


def test_empty_ckpt_pt(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").write_bytes(b"")
    assert _message(tmp_path / "ckpt.pt").endswith("ckpt.pt: empty (0 bytes)")


def test_garbage_ckpt_pt(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").write_bytes(b"hello, this is a text file\n" * 10)
    assert "not a PyTorch zip or pickle file (it starts with 'hello, t')" in _message(tmp_path / "ckpt.pt")


def test_truncated_ckpt_pt_zip_and_pickle(tmp_path: Path) -> None:
    zipped = _write_nanogpt(tmp_path / "zip", tiny(), TOK)
    zipped.write_bytes(zipped.read_bytes()[:5000])
    assert "zip archive of 5.0 KB, but not a complete PyTorch checkpoint (truncated" in _message(zipped)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": tiny().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:40])
    assert "a pickle of 40 bytes that is truncated or damaged" in _message(legacy)


def test_empty_and_cut_safetensors(tmp_path: Path) -> None:
    p = save(tmp_path / "ck", tiny(), TOK)
    weights = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(b"")
    assert _message(p).endswith("model.safetensors: empty (0 bytes)")
    (p / "model.safetensors").write_bytes(weights[:-100])
    assert "model.safetensors: truncated (its tensors need" in _message(p)


def test_empty_meta_pkl(tmp_path: Path) -> None:
    out = _write_nanogpt(tmp_path / "out", tiny(), TOK).parent
    (out / "meta.pkl").write_bytes(b"")
    assert "meta.pkl: empty (0 bytes)" in _message(out / "ckpt.pt", out / "meta.pkl")


# -- nanoGPT's meta.pkl where nanoGPT keeps it (issue 12, 2) ----------------------------------------
@pytest.mark.parametrize("base", ["repo", "out"])
def test_meta_pkl_found_in_nanogpt_data_folder(tmp_path: Path, base: str) -> None:
    """nanoGPT's train.py runs in its repo: out-x/ckpt.pt and data/<dataset>/meta.pkl side by side."""
    m = tiny(4)
    out = _write_nanogpt(tmp_path / "repo" / "out-x", m, TOK).parent
    data = (tmp_path / "repo" if base == "repo" else out) / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    os.rename(out / "meta.pkl", data / "meta.pkl")
    for ref in (out, out / "ckpt.pt"):
        m2, tok, meta = load(ref)
        assert tok.chars == TOK.chars and torch.equal(logits(m, IDX), logits(m2, IDX))
        assert meta["load_note"] == f"The vocabulary is nanoGPT's meta.pkl found at {data / 'meta.pkl'}."


def test_meta_pkl_missing_says_where_it_looked(tmp_path: Path) -> None:
    from gpt.imports import MissingTokenizerError

    path = _write_nanogpt(tmp_path / "repo" / "out-x", tiny(), None)
    with pytest.raises(MissingTokenizerError) as e:
        load(path.parent)
    assert e.value.dataset == "shakespeare_char" and e.value.where == "data/shakespeare_char/meta.pkl"
    assert f"under {path.parent} and {path.parent.parent}" in str(e.value)


def test_dataset_name_never_leads_out(tmp_path: Path) -> None:
    """The dataset name comes from the file: a path in it is ignored, not followed."""
    path = _write_nanogpt(tmp_path / "repo" / "out-x", tiny(), None)
    ck = torch.load(path, weights_only=True)
    ck["config"]["dataset"] = "../../elsewhere"
    torch.save(ck, path)
    (tmp_path / "elsewhere").mkdir()
    with open(tmp_path / "elsewhere" / "meta.pkl", "wb") as f:
        pickle.dump({"itos": dict(enumerate(TOK.chars))}, f)
    with pytest.raises(CheckpointError, match="its dataset's meta.pkl"):
        load(path)
