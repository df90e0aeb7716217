"""Generation: the KV-cached Generator matches nanoGPT's full recompute (also past block_size), the
sampling distribution honours temperature/top-k/top-p, and stepping is reproducible."""
from __future__ import annotations

import pytest
import torch

from gpt.config import GPTConfig
from gpt.generate import Generator, generate, greedy_continuation, sample, sampling_distribution, stream
from gpt.model import GPT

torch.set_num_threads(1)


def lively(seed: int = 0, **overrides) -> GPT:
    """A tiny model whose weights are large enough that greedy decoding wanders over the vocabulary
    (a freshly initialised GPT repeats one token, which would make parity tests weak)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("tiny", **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 if "wte" in name or "wpe" in name else 0.15)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> GPT:
    return lively()


def full_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    """nanoGPT's full recompute: the last block_size tokens, last position's logits (V,)."""
    idx = torch.tensor([ids[-model.config.block_size:]])
    with torch.no_grad():
        return model(idx)[0][0, -1]


def test_greedy_cache_matches_full_recompute_past_block_size(model: GPT) -> None:
    prompt = [1, 2, 3, 4, 5]
    cached = generate(model, prompt, 60, temperature=0)
    full = generate(model, prompt, 60, temperature=0, use_cache=False)
    assert len(cached) == len(prompt) + 60 > model.config.block_size
    assert cached == full
    assert len(set(cached[len(prompt):])) > 5, "the test model should not repeat one token"


def test_kv_step_logits_equal_full_forward_at_every_step(model: GPT) -> None:
    gen = Generator(model, [7, 8, 9], temperature=0.8, seed=3)
    for _ in range(45):  # crosses block_size 32
        expected = full_logits(model, gen.ids)
        step = gen.step()
        torch.testing.assert_close(step.logits, expected, atol=1e-5, rtol=0)
        assert step.cropped == (step.pos > model.config.block_size)
        assert step.ctx_start == max(0, step.pos - model.config.block_size)


def test_seeded_sampling_cache_matches_full_recompute(model: GPT) -> None:
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, seed=11)
    assert generate(model, [3], 40, **kw) == generate(model, [3], 40, use_cache=False, **kw)


def test_seed_reproducibility_and_reset(model: GPT) -> None:
    a = generate(model, [1, 2], 30, temperature=1.5, seed=5)
    b = generate(model, [1, 2], 30, temperature=1.5, seed=5)
    c = generate(model, [1, 2], 30, temperature=1.5, seed=6)
    assert a == b and a != c
    gen = Generator(model, [1, 2], temperature=1.5, seed=5)
    first = [gen.step().token for _ in range(30)]
    gen.reset()
    assert gen.ids == [1, 2]
    assert [gen.step().token for _ in range(30)] == first == a[2:]


def test_forced_token(model: GPT) -> None:
    gen = Generator(model, [1, 2, 3], temperature=0)
    greedy = int(full_logits(model, [1, 2, 3]).argmax())
    forced = (greedy + 1) % model.config.vocab_size
    step = gen.step(force=forced)
    assert step.forced and step.token == forced and gen.ids == [1, 2, 3, forced]
    assert step.prob == 0.0  # greedy puts all its mass on the argmax
    torch.testing.assert_close(gen.step().logits, full_logits(model, [1, 2, 3, forced]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.step(force=model.config.vocab_size)


def test_back_then_step_gives_the_same_distribution(model: GPT) -> None:
    gen = Generator(model, [4, 5, 6], temperature=1.0, top_k=10, seed=0)
    for _ in range(3):
        gen.step()
    before = list(gen.ids)
    s1 = gen.step()
    gen.back()
    assert gen.ids == before
    s2 = gen.step()
    torch.testing.assert_close(s2.logits, s1.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(s2.top_probs, s1.top_probs, atol=1e-6, rtol=0)
    assert torch.equal(s2.top_ids, s1.top_ids)
    # back() across the window slide too: step 40 tokens, go back 12, step again
    gen = Generator(model, [4], temperature=0)
    steps = [gen.step() for _ in range(40)]
    for _ in range(12):
        gen.back()
    again = [gen.step() for _ in range(12)]
    assert [s.token for s in again] == [s.token for s in steps[-12:]]
    for s, t in zip(again, steps[-12:]):
        torch.testing.assert_close(s.logits, t.logits, atol=1e-5, rtol=0)
    gen.reset()
    with pytest.raises(ValueError, match="nothing to undo"):
        gen.back()


def test_ids_may_be_reassigned_or_edited(model: GPT) -> None:
    """The cache keeps only the prefix it shares with the current context, so edits are safe."""
    gen = Generator(model, [1, 2, 3], temperature=0)
    for _ in range(10):
        gen.step()
    gen.ids[5] = (gen.ids[5] + 1) % model.config.vocab_size  # an edit inside the cached part
    torch.testing.assert_close(gen.step().logits, full_logits(model, gen.ids[:-1]), atol=1e-5, rtol=0)
    restored = generate(model, [1, 2, 3], 17, temperature=0)
    fresh = Generator(model, [1, 2, 3], temperature=0)
    fresh.ids = list(restored[:15])  # e.g. an app restoring a sequence into a new Generator
    assert [fresh.step().token for _ in range(5)] == restored[15:]
    fresh.ids = [99]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fresh.step()


def test_attention_rows_are_recorded(model: GPT) -> None:
    cfg = model.config
    gen = Generator(model, [1, 2, 3], temperature=0, record=True)
    for _ in range(40):
        step = gen.step()
        ctx = step.pos - step.ctx_start
        assert step.attention.shape == (cfg.n_layer, cfg.n_head, ctx)
        torch.testing.assert_close(step.attention.sum(-1), torch.ones(cfg.n_layer, cfg.n_head))
    assert Generator(model, [1], temperature=0).step().attention is None


def test_stream_yields_steps(model: GPT) -> None:
    steps = list(stream(model, [1, 2], 5, temperature=0, k=3))
    assert len(steps) == 5 and [s.pos for s in steps] == [2, 3, 4, 5, 6]
    assert all(s.top_ids.shape == (3,) for s in steps)
    assert [s.token for s in steps] == generate(model, [1, 2], 5, temperature=0)[2:]


def test_temperature_zero_is_greedy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50)
    probs = sampling_distribution(logits, temperature=0)
    assert probs[logits.argmax()] == 1.0 and probs.sum() == 1.0
    g = torch.Generator().manual_seed(0)
    assert all(sample(logits, 0, top_k=5, top_p=0.5, generator=g) == int(logits.argmax()) for _ in range(5))


def test_top_k_mass_only_on_top_k() -> None:
    torch.manual_seed(1)
    logits = torch.randn(100)
    probs = sampling_distribution(logits, temperature=0.7, top_k=7)
    allowed = set(torch.topk(logits, 7).indices.tolist())
    assert set(torch.nonzero(probs).flatten().tolist()) == allowed
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    # within the allowed set it is softmax(logits / T) renormalised
    ref = torch.softmax(logits / 0.7, -1)[list(allowed)]
    torch.testing.assert_close(probs[list(allowed)], ref / ref.sum())
    g = torch.Generator().manual_seed(0)
    assert all(sample(logits, 0.7, top_k=7, generator=g) in allowed for _ in range(200))


def test_top_p_keeps_smallest_nucleus() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 100) * 2  # batched rows work too
    for p in (0.1, 0.5, 0.9):
        probs = sampling_distribution(logits, temperature=1.0, top_p=p)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4))
        full = torch.softmax(logits, -1)
        for row in range(4):
            keep = probs[row] > 0
            # the kept tokens are the most likely ones and hold >= p of the mass...
            assert full[row][keep].min() >= full[row][~keep].max()
            assert full[row][keep].sum() >= p - 1e-6
            # ...and without the least likely kept one the mass would fall short of p
            assert full[row][keep].sum() - full[row][keep].min() < p
    # top_p combined with top_k: the nucleus is taken inside the top-k set
    probs = sampling_distribution(logits[0], 1.0, top_k=3, top_p=0.99)
    assert int((probs > 0).sum()) <= 3


def test_bad_parameters_say_what_to_do(model: GPT) -> None:
    with pytest.raises(ValueError, match="temperature"):
        sampling_distribution(torch.zeros(5), temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        sampling_distribution(torch.zeros(5), top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        sampling_distribution(torch.zeros(5), top_p=1.5)
    with pytest.raises(ValueError, match="prompt is empty"):
        Generator(model, [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Generator(model, [1000])


def test_long_prompt_and_training_mode_restored() -> None:
    model = lively(dropout=0.1).train()
    prompt = list(range(40))  # longer than block_size: the context is cropped from the start
    gen = Generator(model, prompt, temperature=0)
    step = gen.step()
    assert step.cropped and step.ctx_start == 40 - model.config.block_size
    assert model.training  # eval during the step, restored afterwards
    model.eval()
    torch.testing.assert_close(step.logits, full_logits(model, prompt), atol=1e-5, rtol=0)


@pytest.mark.parametrize("T", [10, 32, 45])  # 32 = block_size: the context is cut; 45: the prompt is past it
def test_greedy_continuation_is_argmax_decoding(model: GPT, T: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (T,), generator=torch.Generator().manual_seed(T)).tolist()
    n = 8
    got = greedy_continuation(model, ids, n)
    seq = list(ids)[-(model.config.block_size - n):]  # the sample fits one window with its context
    ctx = len(seq)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    assert len(seq) <= model.config.block_size
    assert got == seq[ctx:]
