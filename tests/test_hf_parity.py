"""Hugging Face GPT-2 import: logits match transformers' GPT2LMHeadModel for every save layout."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safetensors.torch import save_file

from gpt.checkpoint import CheckpointError, load
from gpt.imports import BIN_TO_SAFETENSORS
from gpt.tokenizer import GPT2Tokenizer

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
N_POS = 64


@pytest.fixture(scope="module", autouse=True)
def no_progress_bars():
    """save_pretrained's tqdm bar starts tqdm's monitor thread, which would outlive the session."""
    was = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    yield
    if was:
        transformers.utils.logging.enable_progress_bar()


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    # GPT-2's real vocabulary (so GPT2Tokenizer fits) with a tiny body; biases and LayerNorm gains
    # randomised so that a dropped bias or a missed transpose shows in the logits
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_POS, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def saved(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "safetensors"
    hf_model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx, targets=torch.zeros_like(idx))[0]


def check_parity(folder: Path, hf_model) -> None:
    model, tok, meta = load(folder)
    assert isinstance(tok, GPT2Tokenizer) and meta["source_format"] == "hf-gpt2"
    c = model.config
    assert (c.block_size, c.n_embd, c.n_layer, c.n_head, c.vocab_size) == (N_POS, 32, 2, 2, 50257)
    assert c.activation == "gelu_tanh" and c.bias
    idx = torch.randint(0, 50257, (2, N_POS), generator=torch.Generator().manual_seed(3))
    ref = hf_logits(hf_model, idx)
    torch.testing.assert_close(our_logits(model, idx), ref, atol=1e-4, rtol=0)
    # and through the tokenizer, on text
    ids = torch.tensor([tok.encode("Hello world, the quick brown fox")])
    torch.testing.assert_close(our_logits(model, ids), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_safetensors_save(saved: Path, hf_model) -> None:
    check_parity(saved, hf_model)
    check_parity(saved / "model.safetensors", hf_model)


def test_pytorch_model_bin_is_refused_with_its_conversion(saved: Path, hf_model, tmp_path: Path) -> None:
    """Older save_pretrained(safe_serialization=False): pytorch_model.bin, a pickle. It is refused
    with a one-liner that converts it; run in the folder, that one-liner makes it load, with parity.
    transformers 5 no longer writes it, so it is written the way it was: torch.save(state_dict)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only") as ei:
        load(folder)
    assert BIN_TO_SAFETENSORS in str(ei.value)
    subprocess.run([sys.executable, "-c", shlex.split(BIN_TO_SAFETENSORS)[2]], cwd=folder, check=True)
    check_parity(folder, hf_model)


def test_gpt2model_layout_with_mask_buffers(saved: Path, hf_model, tmp_path: Path) -> None:
    """The hub's original gpt2 files: GPT2Model keys (no 'transformer.' prefix, no lm_head) and
    the attn.bias / attn.masked_bias buffers, which must go while attn.c_attn.bias stays."""
    folder = tmp_path / "bare"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf_model.state_dict().items()
          if k != "lm_head.weight"}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(N_POS, N_POS)).view(1, 1, N_POS, N_POS)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    assert "h.0.attn.c_attn.bias" in sd
    save_file(sd, str(folder / "model.safetensors"))
    check_parity(folder, hf_model)


def test_sharded_save(hf_model, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    hf_model.save_pretrained(folder, max_shard_size="1MB")
    if not (folder / "model.safetensors.index.json").is_file():
        pytest.skip("this transformers did not shard the save")
    check_parity(folder, hf_model)


@pytest.mark.parametrize("change, match", [
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"activation_function": "relu"}, "activation_function"),
    ({"vocab_size": 1000}, "vocab_size"),
    ({"model_type": "llama"}, "model_type"),
])
def test_unsupported_configs(saved: Path, tmp_path: Path, change: dict, match: str) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(saved, folder)
    info = json.loads((folder / "config.json").read_text())
    info.update(change)
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=match) as ei:
        load(folder)
    assert "config.json" in str(ei.value)


def test_weights_that_do_not_fit_the_config(saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(saved, folder)
    info = json.loads((folder / "config.json").read_text())
    info["n_positions"] = 128
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: transformer\.wpe\.weight has shape"):
        load(folder)
