"""trainers/estimate.py: parameter counts against the model itself, FLOPs and time scaling,
memory, and the measured step."""
from __future__ import annotations

import pytest

from gpt.config import GPTConfig
from gpt.model import GPT
from trainers import estimate as te
from trainers.config import TrainConfig, check_config


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", {}), ("cpu-small", {}), ("tiny", {"bias": False}), ("baby", {"vocab_size": 50257}),
    ("tiny", {"n_layer": 3, "n_head": 4, "n_embd": 48, "block_size": 17, "vocab_size": 2}),
])
def test_n_params_matches_the_model(preset: str, overrides: dict) -> None:
    cfg = GPTConfig.preset(preset, **overrides)
    assert te.n_params(cfg) == GPT(cfg).get_num_params(non_embedding=False)  # counted by torch


@pytest.mark.parametrize("preset, bias", [("tiny", True), ("cpu-small", True), ("tiny", False)])
def test_n_params_matches_the_model_with_vocab_77(preset: str, bias: bool) -> None:
    cfg = GPTConfig.preset(preset, vocab_size=77, bias=bias)
    assert te.n_params(cfg) == GPT(cfg).get_num_params(non_embedding=False)


def test_flops_scale_with_width_depth_and_context() -> None:
    base = GPTConfig.preset("tiny", vocab_size=65)
    f = te.flops_per_token(base)
    n = te.n_params(base) - base.block_size * base.n_embd  # position embeddings cost no FLOPs
    assert f == 6 * n + 6 * base.n_layer * base.block_size * base.n_embd
    deeper = GPTConfig.preset("tiny", vocab_size=65, n_layer=2 * base.n_layer)
    assert te.flops_per_token(deeper) > f
    # each extra layer adds the same work: 6 * (its params + its attention over T)
    deeper3 = GPTConfig.preset("tiny", vocab_size=65, n_layer=3 * base.n_layer)
    assert te.flops_per_token(deeper3) - te.flops_per_token(deeper) == pytest.approx(te.flops_per_token(deeper) - f)
    longer = GPTConfig.preset("tiny", vocab_size=65, block_size=4 * base.block_size)
    assert te.flops_per_token(longer) - f == 6 * base.n_layer * 3 * base.block_size * base.n_embd
    # a model doing twice the FLOPs per token is expected to run at half the tokens/s
    assert te.tokens_per_s(base, 1000.0) == pytest.approx(1000.0 * te.flops_per_token(GPTConfig.preset("tiny"))
                                                          / f)
    assert te.tokens_per_s(deeper, 1000.0, ref=base) == pytest.approx(1000.0 * f / te.flops_per_token(deeper))


def test_estimate_scales_with_the_model() -> None:
    small, big = TrainConfig.from_preset("tiny"), TrainConfig.from_preset("tiny", n_layer=8, n_embd=128)
    e1 = te.estimate(small.model_config(65), small, ref_tps=10_000)
    e2 = te.estimate(big.model_config(65), big, ref_tps=10_000)
    assert e1.tokens == small.max_iters * small.batch_size * 32
    # the reference config at the reference speed trains at that speed
    assert e1.tokens_per_s == pytest.approx(10_000 * te.flops_per_token(GPTConfig.preset("tiny"))
                                            / te.flops_per_token(small.model_config(65)))
    assert e1.seconds >= e1.tokens / e1.tokens_per_s  # eval adds time
    assert e2.params > e1.params and e2.memory_bytes > e1.memory_bytes and e2.seconds > e1.seconds
    assert e2.memory_bytes == sum(te.estimate_memory(big.model_config(65), big.batch_size))
    twice = TrainConfig.from_preset("tiny", max_iters=2 * small.max_iters)
    assert te.estimate(twice.model_config(65), twice, 10_000).seconds == pytest.approx(2 * e1.seconds, rel=0.05)


def test_estimate_run_guesses_the_vocabulary() -> None:
    char = TrainConfig.from_preset("tiny", data="shakespeare")
    assert te.guess_vocab(char) == 65 and te.guess_vocab(TrainConfig.from_preset("tiny", data="x.txt")) == 100
    bpe = TrainConfig.from_preset("tiny", data="shakespeare", tokenizer="gpt2")
    assert te.guess_vocab(bpe) == te.GPT2_VOCAB
    assert te.estimate_run(bpe, 1000.0).params == te.n_params(bpe.model_config(te.GPT2_VOCAB))
    assert te.estimate_run(bpe, 1000.0).params > te.estimate_run(char, 1000.0).params


def test_memory_counts_weights_grads_and_adam_state() -> None:
    cfg = GPTConfig.preset("tiny")
    p_bytes, a_bytes = te.estimate_memory(cfg, batch_size=8)
    assert p_bytes == 16 * te.n_params(cfg)  # 4 fp32 copies
    assert te.estimate_memory(cfg, batch_size=16)[1] == 2 * a_bytes  # activations grow with the batch
    # check_config refuses what this says will not fit
    with pytest.raises(ValueError, match="will not fit"):
        check_config(TrainConfig.from_preset("tiny", n_layer=400, n_embd=8192, n_head=64, device="cpu"))


def test_measured_tokens_per_s_is_positive_and_finite() -> None:
    tps = te.measure_tokens_per_s(steps=1, batch_size=2)
    assert 0 < tps < 1e9
