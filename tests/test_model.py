"""The GPT module: nanoGPT's state dict and init, output shapes, fast vs manual attention, the
optimizer groups, config validation and dropout."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import gpt.model as gm
from gpt.config import GPTConfig
from gpt.kv_cache import KVCache
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)

# nanoGPT's GPT(GPTConfig(n_layer=2, bias=True)).state_dict().keys() (flash attention: no attn.bias)
NANOGPT_KEYS_2_LAYERS = [
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.h.0.ln_1.weight",
    "transformer.h.0.ln_1.bias",
    "transformer.h.0.attn.c_attn.weight",
    "transformer.h.0.attn.c_attn.bias",
    "transformer.h.0.attn.c_proj.weight",
    "transformer.h.0.attn.c_proj.bias",
    "transformer.h.0.ln_2.weight",
    "transformer.h.0.ln_2.bias",
    "transformer.h.0.mlp.c_fc.weight",
    "transformer.h.0.mlp.c_fc.bias",
    "transformer.h.0.mlp.c_proj.weight",
    "transformer.h.0.mlp.c_proj.bias",
    "transformer.h.1.ln_1.weight",
    "transformer.h.1.ln_1.bias",
    "transformer.h.1.attn.c_attn.weight",
    "transformer.h.1.attn.c_attn.bias",
    "transformer.h.1.attn.c_proj.weight",
    "transformer.h.1.attn.c_proj.bias",
    "transformer.h.1.ln_2.weight",
    "transformer.h.1.ln_2.bias",
    "transformer.h.1.mlp.c_fc.weight",
    "transformer.h.1.mlp.c_fc.bias",
    "transformer.h.1.mlp.c_proj.weight",
    "transformer.h.1.mlp.c_proj.bias",
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
    "lm_head.weight",
]


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", **overrides))


def ids(model: GPT, B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def test_state_dict_keys_are_nanogpts() -> None:
    model = tiny()
    assert list(model.state_dict().keys()) == NANOGPT_KEYS_2_LAYERS
    sd = model.state_dict()
    C, V = model.config.n_embd, model.config.vocab_size
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (3 * C, C)
    assert sd["transformer.h.1.mlp.c_fc.weight"].shape == (4 * C, C)
    assert sd["lm_head.weight"].shape == (V, C)
    no_bias = tiny(bias=False).state_dict()
    assert not [k for k in no_bias if k.endswith(".bias")]


def test_weights_are_tied() -> None:
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p is model.lm_head.weight for p in model.parameters()) == 1
    x = ids(model)
    _, loss = model(x, x)
    loss.backward()
    # one gradient holds both the embedding's and the unembedding's contributions
    assert model.transformer.wte.weight.grad is model.lm_head.weight.grad
    assert model.transformer.wte.weight.grad.abs().sum() > 0


def test_init_statistics_follow_nanogpt() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("cpu-small"))
    L = model.config.n_layer
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif "ln" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        assert abs(p.mean().item()) < 0.003 or "ln" in name, name


def test_logits_shape_rules() -> None:
    model = tiny().eval()
    x = ids(model, B=3, T=10)
    V = model.config.vocab_size
    logits, loss = model(x)
    assert logits.shape == (3, 1, V) and loss is None
    full, loss = model(x, x)
    assert full.shape == (3, 10, V) and loss.dim() == 0
    torch.testing.assert_close(logits[:, 0], full[:, -1])
    rec_logits, loss = model(x, rec=Recorder(["logits"]))
    assert rec_logits.shape == (3, 10, V) and loss is None
    cache = KVCache.for_model(model, batch_size=3)
    cached, _ = model(x, kv_cache=cache)
    assert cached.shape == (3, 10, V) and cache.pos == 10
    with pytest.raises(ValueError, match="block_size"):
        model(ids(model, B=1, T=model.config.block_size + 1))


def test_fast_and_manual_attention_agree() -> None:
    model = tiny().eval()
    x = ids(model, T=model.config.block_size)
    with torch.no_grad():
        fast, _ = model(x, rec=Recorder(["logits"]))  # no attention internals: SDPA
        manual, _ = model(x, rec=Recorder(["blocks.*.attn.hook_attn_scores", "logits"]))
    torch.testing.assert_close(manual, fast, atol=1e-5, rtol=0)
    # and with a KV cache (explicit mask for the new query rows)
    cache, cache2 = KVCache.for_model(model, 2), KVCache.for_model(model, 2)
    with torch.no_grad():
        model(x[:, :20], kv_cache=cache)
        model(x[:, :20], kv_cache=cache2)
        a, _ = model(x[:, 20:], kv_cache=cache)
        b, _ = model(x[:, 20:], kv_cache=cache2, rec=Recorder(["blocks.*.attn.hook_pattern"]))
    torch.testing.assert_close(a, fast[:, 20:], atol=1e-5, rtol=0)
    torch.testing.assert_close(b, fast[:, 20:], atol=1e-5, rtol=0)


def test_no_recorder_means_no_extra_work(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny().eval()
    x = ids(model)
    calls = {"sdpa": 0}
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*a, **kw):
        calls["sdpa"] += 1
        return sdpa(*a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("the fast path must not build a mask or a softmax pattern")

    monkeypatch.setattr(gm.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(gm.F, "softmax", forbidden)
    monkeypatch.setattr(gm, "_mask", forbidden)
    monkeypatch.setattr(gm, "_normalized", forbidden)
    for method in ("begin", "wants", "save"):
        monkeypatch.setattr(Recorder, method, forbidden)
    seen = []
    model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    logits, _ = model(x)
    assert calls["sdpa"] == model.config.n_layer
    assert seen == [(2, 1, model.config.n_embd)]  # lm_head on the last position only


def test_configure_optimizers_decay_groups() -> None:
    model = tiny()
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith("weight") and "ln" not in n for n in decay_names)
    assert all(n.endswith("bias") or "ln" in n for n in no_decay_names)
    assert "transformer.wte.weight" in decay_names  # the tied weight, once
    n_total = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_total == model.get_num_params(non_embedding=False)
    assert model.get_num_params() == n_total - model.transformer.wpe.weight.numel()
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("overrides, message", [
    (dict(n_embd=65, n_head=2), "divisible by n_head"),
    (dict(n_layer=0), "n_layer must be positive"),
    (dict(n_head=0), "n_head must be positive"),
    (dict(block_size=0), "block_size must be positive"),
    (dict(vocab_size=1), "vocab_size must be between"),
    (dict(activation="relu"), "activation must be one of"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(n_embd=64.0), "n_embd must be an integer"),
])
def test_config_validation_messages(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig.preset("tiny", **overrides)


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = GPTConfig.preset("gpt2")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg and cfg.head_dim == 64
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_layers": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("huge")


def test_dropout_train_vs_eval() -> None:
    model = tiny(dropout=0.3)
    x = ids(model)
    model.train()
    a, _ = model(x, x)
    b, _ = model(x, x)
    assert not torch.allclose(a, b)
    model.eval()
    c, _ = model(x, x)
    d, _ = model(x, x)
    assert torch.equal(c, d)
    same = tiny(dropout=0.0).eval()
    same.load_state_dict(model.state_dict())
    torch.testing.assert_close(same(x, x)[0], c)
    # the manual path applies attention dropout too
    model.train()
    r1, _ = model(x, x, rec=Recorder(["blocks.*.attn.hook_pattern"]))
    r2, _ = model(x, x, rec=Recorder(["blocks.*.attn.hook_pattern"]))
    assert not torch.allclose(r1, r2)


def test_crop_block_size() -> None:
    model = tiny().eval()
    x = ids(model, T=16)
    before, _ = model(x, x)
    model.crop_block_size(16)
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape[0] == 16
    torch.testing.assert_close(model(x, x)[0], before)
    with pytest.raises(ValueError, match="block_size"):
        model.crop_block_size(17)
