"""gpt.compare against independent computations: KL and losses by a slow loop over the vocabulary,
pattern distances by a loop over heads and queries, the causal prefix that makes cutting two prompts
to their common length exact, and what is (and is not) compared for models of another shape or
tokenizer, with the reasons."""
from __future__ import annotations

import math

import pytest
import torch

from gpt import compare
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def slow_kl(a: list[float], b: list[float]) -> float:
    """KL(softmax a ‖ softmax b) term by term, in Python floats."""
    za, zb = sum(math.exp(x) for x in a), sum(math.exp(x) for x in b)
    return sum(math.exp(x) / za * ((x - math.log(za)) - (y - math.log(zb))) for x, y in zip(a, b))


def test_kl_per_position_equals_a_slow_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 11, generator=g) * 3, torch.randn(1, 9, 11, generator=g) * 3  # (T, V), (1, T', V)
    got = compare.kl_per_position(a, b)
    assert got.shape == (7,)  # the shorter side's positions
    want = [slow_kl(a[t].tolist(), b[0, t].tolist()) for t in range(7)]
    assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert compare.kl_per_position(a, b, n=3).tolist() == pytest.approx(want[:3], rel=1e-9)
    assert torch.all(compare.kl_per_position(a, a + 5.0) < 1e-12)  # a shift of the logits is the same distribution
    assert torch.all(got > 0)


def test_kl_refuses_two_vocabularies() -> None:
    with pytest.raises(ValueError, match="one vocabulary"):
        compare.kl_per_position(torch.zeros(3, 5), torch.zeros(3, 6))


def test_loss_per_position_equals_a_slow_loop() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 13, generator=g)
    ids = torch.randint(13, (6,), generator=g).tolist()
    got = compare.loss_per_position(logits, ids)
    want = []
    for t in range(5):  # position t predicts ids[t + 1]
        row = logits[0, t].tolist()
        want.append(math.log(sum(math.exp(x) for x in row)) - row[ids[t + 1]])
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="5 ids for 6 positions"):
        compare.loss_per_position(logits, ids[:5])


def random_patterns(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Causal attention patterns (..., T, T): softmax of random scores with the upper triangle masked."""
    T = shape[-1]
    s = torch.randn(*shape, T, generator=g).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1)


def test_pattern_distance_equals_a_loop_over_heads_and_queries() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = random_patterns(g, 2, 3, 9), random_patterns(g, 2, 3, 12)  # (L, H, 9, 9), (L, H, 12, 12)
    got = compare.pattern_distance(a, b)
    assert got.shape == (2, 3)
    for l in range(2):
        for h in range(3):
            rows = [0.5 * sum(abs(float(a[l, h, t, k]) - float(b[l, h, t, k])) for k in range(9)) for t in range(1, 9)]
            assert float(got[l, h]) == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    assert torch.all(compare.pattern_distance(a, a) == 0)
    eye, prev = torch.eye(5), torch.eye(5).roll(-1, dims=1)  # attend to itself / to the token before (rows 1..4)
    assert float(compare.pattern_distance(eye, prev.tril())) == pytest.approx(1.0)  # disjoint keys
    assert float(compare.pattern_distance(a[0, 0, :1, :1], b[0, 0, :1, :1])) == 0.0  # one query: nothing to compare


def test_pattern_diff_is_b_minus_a_below_the_diagonal_and_blank_above() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = random_patterns(g, 6), random_patterns(g, 8)
    d = compare.pattern_diff(a, b)
    assert d.shape == (6, 6)
    lower = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.allclose(d[lower], (b[:6, :6] - a)[lower])
    assert torch.isnan(d[~lower]).all()


def test_the_first_n_positions_of_a_longer_prompt_are_the_shorter_prompts() -> None:
    """Why two prompts are cut to their common length: a causal model's first n positions see only those."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", dropout=0.0)).eval()
    ids = torch.randint(65, (1, 20))
    recs = []
    for x in (ids, ids[:, :12]):
        rec = Recorder(["blocks.*.attn.hook_pattern", "logits"])
        with torch.no_grad():
            model(x, rec=rec)
        recs.append(rec)
    long, short = recs
    assert torch.allclose(long["blocks.1.attn.hook_pattern"][..., :12, :12], short["blocks.1.attn.hook_pattern"], atol=1e-6)
    assert compare.kl_per_position(long["logits"], short["logits"]).max() < 1e-9
    assert compare.pattern_distance(long["blocks.1.attn.hook_pattern"][0], short["blocks.1.attn.hook_pattern"][0]).max() < 1e-6


def test_top1_agreement_compares_token_strings() -> None:
    got = compare.top1_agreement([["a", "b"], ["c", "d"]], [["a", "x"], ["c", "d"]])
    assert got.tolist() == [[True, False], [True, True]]
    with pytest.raises(ValueError, match="different rows or positions"):
        compare.top1_agreement([["a"]], [["a", "b"]])


def test_difference_and_largest_changes() -> None:
    a, b = torch.tensor([[0.1, 0.5], [0.2, 0.0]]), torch.tensor([[0.1, 0.2], [0.9, 0.05]])
    d = compare.difference(a, b)
    assert torch.allclose(d, b - a)
    cells = [(l, h, float(d[l, h])) for l in range(2) for h in range(2)]
    want = sorted(cells, key=lambda c: -abs(c[2]))[:2]
    assert compare.largest_changes(d, 2) == [(l, h, pytest.approx(v)) for l, h, v in want]
    with pytest.raises(ValueError, match=r"head scores of shapes \(2, 2\) and \(3, 2\)"):
        compare.difference(a, torch.zeros(3, 2), "head scores")


# -- what can be compared ----------------------------------------------------------------------------
def cfg(n_layer: int = 2, n_head: int = 2, vocab: int = 65) -> GPTConfig:
    return GPTConfig.preset("tiny", n_layer=n_layer, n_head=n_head, vocab_size=vocab)


def pieces(tok, text: str) -> list[str]:
    return [tok.token_str(i) for i in tok.encode(text)]


def test_one_tokenizer_one_prompt_compares_everything() -> None:
    tok = CharTokenizer(list(CHARS))
    c = compare.comparable(tok, tok, cfg(), cfg(), pieces(tok, "To be"), pieces(tok, "To be"))
    assert (c.n, c.same_vocab, c.same_layers, c.same_heads, c.kl, c.lens) == (5, True, True, True, True, True)
    assert c.skipped == () and c.notes == ()


def test_two_prompts_are_compared_on_their_common_length() -> None:
    tok = CharTokenizer(list(CHARS))
    c = compare.comparable(tok, tok, cfg(), cfg(), pieces(tok, "To be"), pieces(tok, "Not to be"))
    assert c.n == 5 and c.kl and not c.skipped
    assert c.notes and "5 and 9 tokens" in c.notes[0] and "first 5 positions" in c.notes[0]


def test_two_char_vocabularies_that_split_alike_compare_losses_but_not_kl() -> None:
    a, b = CharTokenizer(list(CHARS)), CharTokenizer(list("abTeo "))  # "To be" splits alike, other vocabularies
    c = compare.comparable(a, b, cfg(), cfg(vocab=6), pieces(a, "To be"), pieces(b, "To be"))
    assert c.n == 5 and not c.same_vocab and not c.kl and c.lens
    assert len(c.skipped) == 1 and "tokenizers differ" in c.skipped[0] and "char (6 tokens)" in c.skipped[0]


def test_char_against_bpe_compares_no_positions_and_says_why() -> None:
    a, b = CharTokenizer(list(CHARS)), GPT2Tokenizer()
    text = "ROMEO: But soft"
    c = compare.comparable(a, b, cfg(), cfg(vocab=50257), pieces(a, text), pieces(b, text))
    assert c.n == 0 and not c.kl and not c.lens
    assert "split the prompt into 15 and 5 tokens" in c.skipped[0] and "gpt2 (50257 tokens)" in c.skipped[0]


def test_other_shapes_skip_per_head_differences_and_lens_rows() -> None:
    tok = CharTokenizer(list(CHARS))
    p = pieces(tok, "To be")
    heads = compare.comparable(tok, tok, cfg(n_head=2), cfg(n_head=4), p, p)
    assert heads.same_layers and not heads.same_heads and heads.lens
    assert heads.skipped == ("Per-head differences (head scores, DLA head terms): the models have 2x2 and 2x4 "
                             "layers x heads.",)
    layers = compare.comparable(tok, tok, cfg(n_layer=2), cfg(n_layer=3), p, p)
    assert not layers.same_heads and not layers.lens and layers.kl
    assert any("2 and 3 layers" in s for s in layers.skipped)
