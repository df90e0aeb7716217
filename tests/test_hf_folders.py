"""Hugging Face GPT-2 folders of any size and vocabulary (issue 17, part 2): GPT-2's vocabulary
without a tokenizer.json, a 97-token vocabulary with its own tokenizer.json (built here with the
`tokenizers` library), and GPT-2-medium's real shape stored in fp16 all load with logits equal to
transformers' GPT2LMHeadModel's within 1e-4 (compared in fp32); a folder too large for the memory
limit is refused before its weights are read; a character ckpt.pt without meta.pkl takes a
tokenizer chosen by hand.

The folders are written directly (config.json by transformers' GPT2Config, weights by safetensors
in Hugging Face's key layout), and the reference is GPT2LMHeadModel.from_pretrained on that same
folder: an independent reader of the same files.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpt import devices
from gpt.checkpoint import CheckpointError, load, save
from gpt.hf_tokenizer import HFTokenizer
from gpt.imports import (MissingTokenizerError, chosen_tokenizer, missing_meta_reason,
                         tokenizer_options)
from gpt.tokenizer import SHAKESPEARE_CHARS, GPT2Tokenizer, UnknownCharsError, tokenizer_from_dict

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
CHARS97 = [chr(c) for c in range(32, 127)] + ["\n"]  # 96 characters, and [UNK] makes 97


@pytest.fixture(scope="module", autouse=True)
def no_progress_bars():
    """from_pretrained's tqdm bar starts tqdm's monitor thread, which would outlive the session."""
    was = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    yield
    if was:
        transformers.utils.logging.enable_progress_bar()


def write_hf_folder(folder: Path, n_layer: int, n_head: int, n_embd: int, n_pos: int, vocab: int,
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A random GPT2LMHeadModel save: config.json and model.safetensors in Hugging Face's layout
    (Conv1D weights stored (in, out), lm_head tied and left out). Biases and LayerNorm gains are
    random too, so a dropped bias or a missed transpose shows in the logits."""
    folder.mkdir(parents=True)
    transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_pos,
                            vocab_size=vocab).save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    C = n_embd

    def rnd(*shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std + mean).to(dtype)

    sd = {"transformer.wte.weight": rnd(vocab, C), "transformer.wpe.weight": rnd(n_pos, C, std=0.01),
          "transformer.ln_f.weight": rnd(C, std=0.1, mean=1.0), "transformer.ln_f.bias": rnd(C, std=0.1)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = rnd(C, std=0.1, mean=1.0), rnd(C, std=0.1)
        for name, (n_in, n_out) in {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C),
                                    "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = rnd(n_in, n_out), rnd(n_out, std=0.1)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def char_tokenizer_json(folder: Path) -> HFTokenizer:
    """A 97-token character-level tokenizer.json (a BPE model with no merges: one token per
    character, [UNK] for the rest), saved by the `tokenizers` library into `folder`."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {c: i for i, c in enumerate(CHARS97)} | {"[UNK]": len(CHARS97)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.decoder = decoders.Fuse()
    tok.save(str(folder / "tokenizer.json"))
    return HFTokenizer.from_file(folder / "tokenizer.json")


def hf_reference(folder: Path):
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def assert_parity(folder: Path, ids: torch.Tensor, **load_kw) -> tuple:
    """Our logits (fp32) against GPT2LMHeadModel's on the same folder, within 1e-4."""
    ours, tok, meta = load(folder, **load_kw)
    ref = hf_reference(folder)
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids, targets=torch.zeros_like(ids))[0]  # (B, T, V): logits at every position
    assert meta["source_format"] == "hf-gpt2" and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    return ours, tok, meta, ref


@pytest.fixture(scope="module")
def gpt2_vocab_folder(tmp_path_factory) -> Path:
    return write_hf_folder(tmp_path_factory.mktemp("hf") / "gpt2vocab", 2, 2, 32, 64, 50257)


@pytest.fixture(scope="module")
def vocab97_folder(tmp_path_factory) -> Path:
    folder = write_hf_folder(tmp_path_factory.mktemp("hf") / "v97", 2, 4, 64, 128, 97, seed=1)
    char_tokenizer_json(folder)
    return folder


# -- the three folders ---------------------------------------------------------------------------------
def test_gpt2_vocabulary_without_tokenizer_json_uses_gpt2_bpe(gpt2_vocab_folder: Path) -> None:
    ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(3))
    ours, tok, meta, ref = assert_parity(gpt2_vocab_folder, ids)
    assert isinstance(tok, GPT2Tokenizer) and "GPT-2's BPE" in meta["load_note"]
    text = torch.tensor([tok.encode("Hello world, the quick brown fox")])
    with torch.no_grad():
        torch.testing.assert_close(ours(text, targets=text)[0], ref(text).logits, atol=1e-4, rtol=0)


def test_97_token_vocabulary_with_its_tokenizer_json(vocab97_folder: Path) -> None:
    ids = torch.randint(0, 97, (2, 128), generator=torch.Generator().manual_seed(4))
    ours, tok, _, ref = assert_parity(vocab97_folder, ids)
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf" and tok.vocab_size == 97
    assert ours.config.vocab_size == 97
    text = "ROMEO:\nBut soft, what light?"
    enc = tok.encode(text)
    assert enc == [CHARS97.index(c) for c in text] and tok.decode(enc) == text  # one id per character
    assert tok.token_str(CHARS97.index(" ")) == "·" and tok.token_str(CHARS97.index("\n")) == "⏎"
    with torch.no_grad():
        x = torch.tensor([enc])
        torch.testing.assert_close(ours(x, targets=x)[0], ref(x).logits, atol=1e-4, rtol=0)


def test_hf_tokenizer_unknown_characters_and_round_trips(vocab97_folder: Path, tmp_path: Path) -> None:
    tok = HFTokenizer.from_file(vocab97_folder / "tokenizer.json")
    assert tok.unknown_chars("café ☃") == ["é", "☃"]
    with pytest.raises(UnknownCharsError, match="2 character"):
        tok.encode("café ☃")
    assert tok.decode(tok.encode("café ☃", errors="drop")) == "caf "
    assert tok.encode("é", errors="replace") == [tok.unk_id]  # the model's own [UNK] stands in
    with pytest.raises(ValueError, match="outside"):
        tok.decode([97])
    assert tokenizer_from_dict(tok.to_dict()) == tok and hash(tokenizer_from_dict(tok.to_dict())) == hash(tok)
    # a native checkpoint keeps the tokenizer.json inside its config.json
    model, _, _ = load(vocab97_folder)
    back_model, back_tok, _ = load(save(tmp_path / "native", model, tok))
    assert back_tok == tok and back_tok.encode("Hi") == tok.encode("Hi")


@pytest.mark.slow
def test_gpt2_medium_shape_in_fp16(tmp_path: Path) -> None:
    """GPT-2-medium's real shape (24 layers, 16 heads, n_embd 1024, 1024 positions, 50257 tokens:
    355M parameters, 710 MB in fp16 on disk), loaded in fp32 and compared in fp32. About 30 s of
    CPU here (writing, transformers' load, ours, two forwards)."""
    folder = write_hf_folder(tmp_path / "medium", 24, 16, 1024, 1024, 50257, dtype=torch.float16, seed=2)
    assert (folder / "model.safetensors").stat().st_size > 700e6
    ids = torch.randint(0, 50257, (1, 24), generator=torch.Generator().manual_seed(5))
    ours, tok, _, _ = assert_parity(folder, ids)
    c = ours.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (24, 16, 1024, 1024)
    assert ours.get_num_params(non_embedding=False) == 354_823_168  # GPT-2 medium's count
    assert next(ours.parameters()).dtype == torch.float32


# -- refusals ------------------------------------------------------------------------------------------
def test_other_vocabulary_without_tokenizer_json_is_refused(vocab97_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(vocab97_folder / name)
    with pytest.raises(CheckpointError, match="vocab_size 97 is not GPT-2's .* no tokenizer.json"):
        load(folder)


def test_folder_too_large_for_the_memory_limit_is_refused_unread(
        gpt2_vocab_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With $NANOLENS_MEMORY_LIMIT_BYTES below what the weights need, the folder is refused with
    the numbers and what to do, and no tensor is read."""
    import gpt.imports

    monkeypatch.setenv(devices.LIMIT_ENV, str(1 << 20))  # 1 MiB
    read = []
    monkeypatch.setattr(gpt.imports, "load_state_dict_file", lambda p: read.append(p) or {})
    with pytest.raises(devices.TooLargeError) as e:
        load(gpt2_vocab_folder, fits=lambda c, src: devices.require_fits(c, src, "cpu", "fp32"))
    msg = str(e.value)
    assert msg.startswith(f"{gpt2_vocab_folder}: This model does not fit")
    assert "(fp32)" in msg and "1.0 MiB free" in msg and "shorter prompts" in msg
    assert read == []
    monkeypatch.delenv(devices.LIMIT_ENV)
    monkeypatch.undo()
    model, _, _ = load(gpt2_vocab_folder, fits=lambda c, src: devices.require_fits(c, src, "cpu", "fp32"))
    assert model.config.vocab_size == 50257


# -- a character ckpt.pt without meta.pkl --------------------------------------------------------------
def _nanogpt_without_meta(folder: Path) -> tuple[Path, torch.nn.Module, list[str]]:
    """The bundled model written as nanoGPT's ckpt.pt, with no meta.pkl anywhere."""
    model, tok, _ = load(REPO / "checkpoints" / "shakespeare-char")
    c = model.config
    folder.mkdir()
    torch.save({"model": model.state_dict(), "model_args": dict(
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size, bias=c.bias,
        vocab_size=c.vocab_size, dropout=0.0), "config": {"dataset": "shakespeare_char"}}, folder / "ckpt.pt")
    return folder / "ckpt.pt", model, tok.chars


def test_shakespeare_characters_are_nanogpts_order() -> None:
    bundled = load(REPO / "checkpoints" / "shakespeare-char")[1]
    assert list(SHAKESPEARE_CHARS) == bundled.chars and len(SHAKESPEARE_CHARS) == 65
    text = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
    if text.is_file():  # prepare.py's order: sorted(set(text))
        assert "".join(sorted(set(text.read_text(encoding="utf-8")))) == SHAKESPEARE_CHARS


def test_no_meta_pkl_offers_tokenizers_with_the_reason(tmp_path: Path) -> None:
    path, model, chars = _nanogpt_without_meta(tmp_path / "out")
    with pytest.raises(MissingTokenizerError) as e:
        load(path)
    assert e.value.vocab_size == 65
    assert "65 characters" in missing_meta_reason(e.value) and "unknown" in missing_meta_reason(e.value)
    assert list(tokenizer_options(65)) == ["shakespeare", "text"]  # no GPT-2 BPE for 65 rows
    assert list(tokenizer_options(50304)) == ["text", "gpt2"]
    m2, tok, meta = load(path, tokenizer=chosen_tokenizer("shakespeare", 65))
    assert tok.chars == chars and "chosen by hand" in meta["load_note"]
    x = torch.tensor([tok.encode("ROMEO:")])
    with torch.no_grad():
        assert torch.equal(m2(x, targets=x)[0], model(x, targets=x)[0])
    # a text file's characters, sorted, as prepare.py builds them
    (tmp_path / "t.txt").write_text("ba\nc", encoding="utf-8")
    assert chosen_tokenizer("text", 65, str(tmp_path / "t.txt")).chars == ["\n", "a", "b", "c"]
    (tmp_path / "big.txt").write_text("".join(chr(0x4E00 + i) for i in range(70)), encoding="utf-8")
    with pytest.raises(CheckpointError, match="70 tokens, more than this model's 65"):
        chosen_tokenizer("text", 65, str(tmp_path / "big.txt"))
    with pytest.raises(CheckpointError, match="type the path"):
        chosen_tokenizer("text", 65, str(tmp_path / "missing.txt"))
