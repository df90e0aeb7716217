"""Head scores and pattern pooling (gpt/heads.py): each checked against a hand-built pattern, a
slow per-cell loop, or an independent reading of a recorded pattern."""
from __future__ import annotations

import math

import pytest
import torch

from gpt import heads as hd
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run() -> tuple[GPT, torch.Tensor, Recorder]:
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    torch.manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (1, 24))
    rec = Recorder()
    with torch.no_grad():
        model(idx, rec=rec)
    return model, idx, rec


def causal(scores: torch.Tensor) -> torch.Tensor:
    """A pattern from arbitrary scores (..., T, T): causal softmax."""
    T = scores.size(-1)
    return torch.softmax(scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")), -1)


def random_patterns(T: int, L: int = 2, H: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return causal(torch.randn(L, H, T, T, generator=g))  # (L, H, T, T)


def uniform_heads(T: int) -> torch.Tensor:
    """(T, T): every query spreads its weight evenly over the keys it may see."""
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)


# -- scores of hand-built patterns ---------------------------------------------------------------------
def test_head_scores_of_hand_built_patterns() -> None:
    T = 10
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    uniform = causal(torch.zeros(T, T))
    sink = torch.zeros(T, T)
    sink[:, 0] = 1
    s = hd.head_scores_from_pattern(torch.stack([prev, uniform, sink]))  # (H=3, T, T)
    torch.testing.assert_close(s["prev_token"], torch.tensor([1.0, sum(1 / (t + 1) for t in range(1, T)) / (T - 1), 1 / (T - 1)]))
    torch.testing.assert_close(s["first_token"], torch.tensor([1 / (T - 1), s["prev_token"][1].item(), 1.0]))
    ent_uniform = sum(math.log2(t + 1) for t in range(1, T)) / (T - 1)  # bits
    torch.testing.assert_close(s["entropy"], torch.tensor([0.0, ent_uniform, 0.0]))


def test_induction_score_of_hand_built_patterns() -> None:
    n = 8
    ind = torch.zeros(2 * n, 2 * n)
    ind[:n] = causal(torch.zeros(n, n)).new_zeros(n, 2 * n)
    ind[:n, :n] = causal(torch.zeros(n, n))
    for t in range(n, 2 * n):
        ind[t, t - n + 1] = 1.0  # attend to the token after the previous occurrence
    prev = torch.zeros(2 * n, 2 * n)
    prev[0, 0] = 1
    prev[torch.arange(1, 2 * n), torch.arange(2 * n - 1)] = 1
    mixed = 0.5 * ind + 0.5 * prev
    score = hd.induction_score_from_pattern(torch.stack([ind, prev, mixed]).unsqueeze(0), n)
    torch.testing.assert_close(score, torch.tensor([1.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="repeated"):
        hd.induction_score_from_pattern(ind, n + 1)


def test_prompt_head_scores_stack_every_layer() -> None:
    T = 6
    prev = torch.zeros(1, 2, T, T)
    prev[0, :, 0, 0] = 1
    prev[0, :, torch.arange(1, T), torch.arange(T - 1)] = 1  # always the previous token
    uniform = uniform_heads(T)
    pats = torch.cat([prev, uniform.expand(1, 2, T, T)])  # (L=2, H=2, T, T)
    s = hd.prompt_head_scores(pats)
    assert set(s) == {"entropy", "prev_token", "first_token"} and all(v.shape == (2, 2) for v in s.values())
    assert s["prev_token"][0].tolist() == [1.0, 1.0]
    ent_uniform = sum(math.log2(t + 1) for t in range(1, T)) / (T - 1)  # the most a head can have
    assert s["entropy"][1].tolist() == pytest.approx([ent_uniform] * 2, rel=1e-5)
    torch.testing.assert_close(s["first_token"][1], hd.head_scores_from_pattern(uniform.expand(2, T, T))["first_token"])
    # a list of L recorded (B, H, T, T) patterns gives the same as the stacked (L, H, T, T)
    as_list = hd.prompt_head_scores([p.unsqueeze(0) for p in pats])
    for k in s:
        torch.testing.assert_close(as_list[k], s[k])


# -- pooling -----------------------------------------------------------------------------------------
def pooled_by_hand(pat: torch.Tensor, side: int) -> torch.Tensor:
    """The slow reference: each cell the mean of its block, with adaptive pooling's bounds
    (block i covers rows floor(i*T/side) .. ceil((i+1)*T/side) - 1)."""
    L, H, T, _ = pat.shape
    out = torch.empty(L, H, side, side)
    for i in range(side):
        r0, r1 = i * T // side, -(-(i + 1) * T // side)
        for j in range(side):
            c0, c1 = j * T // side, -(-(j + 1) * T // side)
            for l in range(L):
                for h in range(H):
                    out[l, h, i, j] = pat[l, h, r0:r1, c0:c1].float().mean()
    return out


def test_pool_patterns_averages_blocks() -> None:
    pat = random_patterns(8)
    pooled = hd.pool_patterns(pat, 4)
    assert pooled.shape == (2, 3, 4, 4)
    torch.testing.assert_close(pooled[1, 2, 0, 0], pat[1, 2, :2, :2].mean())
    torch.testing.assert_close(pooled.mean(dim=(-1, -2)), pat.mean(dim=(-1, -2)))
    assert hd.pool_patterns(pat, 16) is not None and hd.pool_patterns(pat, 16).shape[-1] == 8


@pytest.mark.parametrize("T, side", [(8, 4), (10, 4), (7, 3), (13, 5), (9, 1)])
def test_pool_patterns_matches_a_per_cell_loop(T: int, side: int) -> None:
    pat = random_patterns(T, seed=T)
    got = hd.pool_patterns(pat, side)
    assert got.shape == (2, 3, side, side) and got.dtype == torch.float32
    torch.testing.assert_close(got, pooled_by_hand(pat, side))


def test_pool_patterns_leaves_small_patterns_unpooled() -> None:
    pat = random_patterns(6).double()
    for side in (6, 9):
        got = hd.pool_patterns(pat, side)
        assert got.dtype == torch.float32 and got.shape == pat.shape
        torch.testing.assert_close(got, pat.float())


# -- scores of a model -------------------------------------------------------------------------------
def test_head_scores_on_a_model(run) -> None:
    model, idx, rec = run
    L, H = model.config.n_layer, model.config.n_head
    scores = hd.head_scores(model, rec, seed=0)
    assert scores.induction_len == model.config.block_size // 2
    for t in (scores.entropy, scores.prev_token, scores.first_token, scores.induction):
        assert t.shape == (L, H)
    assert torch.all(scores.entropy >= 0) and torch.all(scores.entropy <= math.log2(idx.size(1)) + 1e-5)
    for t in (scores.prev_token, scores.first_token, scores.induction):
        assert torch.all((t >= 0) & (t <= 1))
    # recording idx inside gives the same; the seed fixes the induction sequence
    again = hd.head_scores(model, idx=idx, seed=0)
    torch.testing.assert_close(again.prev_token, scores.prev_token)
    torch.testing.assert_close(again.induction, scores.induction)
    # induction, independently: record the repeated sequence and read the stripe by hand
    n = scores.induction_len
    rep = hd.repeated_tokens(model.config.vocab_size, n, batch=4, seed=0)
    assert torch.equal(rep[:, :n], rep[:, n:])
    r = Recorder(["blocks.*.attn.hook_pattern"])
    with torch.no_grad():
        model(rep, rec=r)
    for layer in range(L):
        pat = r[f"blocks.{layer}.attn.hook_pattern"]  # (4, H, 2n, 2n)
        manual = torch.stack([pat[:, :, t, t - n + 1] for t in range(n, 2 * n)]).mean((0, 1))
        torch.testing.assert_close(scores.induction[layer], manual)
    torch.testing.assert_close(hd.induction_scores(model, seed=0), scores.induction)
    assert not torch.allclose(hd.induction_scores(model, seed=1), scores.induction)
    with pytest.raises(ValueError, match="induction_len"):
        hd.induction_scores(model, induction_len=model.config.block_size)
    rows = hd.head_table(scores)
    assert len(rows) == L * H and set(rows[0]) == {"layer", "head", "entropy", "prev_token", "first_token", "induction"}
    assert rows[H + 1]["layer"] == 1 and rows[H + 1]["head"] == 1
    assert rows[H + 1]["induction"] == pytest.approx(float(scores.induction[1, 1]))


def test_head_scores_prompt_part_is_prompt_head_scores(run) -> None:
    model, _, rec = run
    scores = hd.head_scores(model, rec, seed=0)
    pats = [rec[f"blocks.{i}.attn.hook_pattern"] for i in range(model.config.n_layer)]  # L x (1, H, T, T)
    for k, v in hd.prompt_head_scores(pats).items():
        torch.testing.assert_close(getattr(scores, k), v)


def test_head_scores_say_what_to_record(run) -> None:
    model, idx, _ = run
    partial = Recorder(["blocks.*.hook_resid_pre"])
    with torch.no_grad():
        model(idx, rec=partial)
    with pytest.raises(KeyError, match=r"Recorder\(\['blocks\.\*\.attn\.hook_pattern'\]\)"):
        hd.head_scores(model, partial)


# -- one head opened up --------------------------------------------------------------------------------
def test_attention_steps_open_up_one_head(run) -> None:
    model, idx, _ = run
    T = idx.size(1)
    layer, head = 1, 1
    rec = Recorder([n.replace("*", str(layer)) for n in hd.NEEDS["attention_steps"]])
    with torch.no_grad():
        model(idx, rec=rec)
    s = hd.attention_steps(rec, layer, head)
    hs = model.config.head_dim
    assert (s.layer, s.head) == (layer, head)
    assert s.q.shape == s.k.shape == s.v.shape == s.z.shape == (T, hs) and s.raw.shape == (T, T)
    assert torch.equal(s.mask, torch.ones(T, T, dtype=torch.bool).tril())
    masked = s.raw.masked_fill(~s.mask, float("-inf"))
    torch.testing.assert_close(masked, s.scores)  # q·kᵀ/√d then the mask is what the model computed
    torch.testing.assert_close(s.pattern, torch.softmax(masked, dim=-1))
    torch.testing.assert_close(s.pattern.sum(-1), torch.ones(T))
    assert torch.all(s.pattern[~s.mask] == 0)
    torch.testing.assert_close(s.z, s.pattern @ s.v, atol=1e-5, rtol=1e-5)
