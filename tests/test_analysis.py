"""Analyses: each is checked against an independent computation or a hand-built case."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gpt import analysis as A
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", **overrides)).eval()


def growing(seed: int = 0) -> GPT:
    """A tiny model whose residual norm grows a lot from layer to layer (large output projections),
    and whose final LayerNorm has a non-trivial gain and bias."""
    model = tiny(seed, n_layer=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, 0.5)
        model.transformer.ln_f.weight.uniform_(0.5, 2.0)
        model.transformer.ln_f.bias.normal_(0.0, 0.1)
        model.transformer.wte.weight.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def run() -> tuple[GPT, torch.Tensor, Recorder, torch.Tensor]:
    model = tiny()
    torch.manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (1, 24))
    rec = Recorder()
    with torch.no_grad():
        logits, _ = model(idx, rec=rec)
    return model, idx, rec, logits


def test_residual_norms_match_manual_norms(run) -> None:
    model, idx, rec, _ = run
    norms = A.residual_norms(rec)
    assert set(norms) == {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
    for key, t in norms.items():
        assert t.shape == (model.config.n_layer, idx.size(1))
        for i in range(model.config.n_layer):
            x = rec[f"blocks.{i}.hook_{key}"][0]
            torch.testing.assert_close(t[i], torch.sqrt((x * x).sum(-1)))
    with pytest.raises(KeyError, match="Recorder"):
        partial = Recorder(["blocks.*.hook_resid_pre"])
        model(idx, rec=partial)
        A.residual_norms(partial)


def test_logit_lens_last_row_is_the_models_own_top_k(run) -> None:
    model, idx, rec, logits = run
    lens = A.logit_lens(model, rec, k=5, ids=idx[0])
    L, T = model.config.n_layer, idx.size(1)
    assert lens.top_ids.shape == lens.top_probs.shape == (L + 1, T, 5)
    assert lens.layers == ["embed"] + [f"after block {i}" for i in range(L)]
    p, i = torch.topk(torch.softmax(logits[0], -1), 5)
    assert torch.equal(lens.top_ids[-1], i)
    torch.testing.assert_close(lens.top_probs[-1], p)
    # target_probs: the model's probability of the actual next token; NaN at the end
    actual = torch.softmax(logits[0], -1)[torch.arange(T - 1), idx[0, 1:]]
    torch.testing.assert_close(lens.target_probs[-1, :-1], actual)
    assert torch.isnan(lens.target_probs[:, -1]).all()
    sub = A.logit_lens(model, rec, k=3, positions=[0, -1])
    assert sub.positions == [0, T - 1] and sub.top_ids.shape == (L + 1, 2, 3)
    assert torch.equal(sub.top_ids[:, 1], lens.top_ids[:, -1, :3])


def test_logit_lens_uses_each_layers_own_layernorm_statistics() -> None:
    """Independent computation per layer; and the final layer's scale (TransformerLens's old bug)
    gives a clearly different answer on a model whose residual norms grow."""
    model = growing()
    torch.manual_seed(2)
    idx = torch.randint(0, model.config.vocab_size, (1, 16))
    rec = Recorder(A.NEEDS["logit_lens"])
    with torch.no_grad():
        model(idx, rec=rec)
    L = model.config.n_layer
    resids = [rec["blocks.0.hook_resid_pre"][0]] + [rec[f"blocks.{i}.hook_resid_post"][0] for i in range(L)]
    norms = [r.norm(dim=-1).mean().item() for r in resids]
    assert norms[-1] > 5 * norms[0], f"the test model's residual should grow: {norms}"
    lens = A.logit_lens(model, rec, k=5)
    ln_f, W_U = model.transformer.ln_f, model.lm_head.weight.detach()
    final = resids[-1]
    final_scale = torch.sqrt(final.var(-1, unbiased=False, keepdim=True) + 1e-5)
    differs = 0
    for row, x in enumerate(resids):
        mu = x.mean(-1, keepdim=True)
        own = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
        probs = torch.softmax((own * ln_f.weight + ln_f.bias).detach() @ W_U.t(), -1)
        p, i = torch.topk(probs, 5)
        torch.testing.assert_close(lens.top_probs[row], p, atol=1e-5, rtol=1e-4)
        assert (lens.top_ids[row] == i).float().mean() > 0.95  # ties aside, the same tokens
        wrong = torch.softmax((((x - mu) / final_scale) * ln_f.weight + ln_f.bias).detach() @ W_U.t(), -1)
        if (wrong.gather(1, i) - p).abs().max() > 0.05:
            differs += 1
    assert differs >= 2, "the final layer's scale should change the early rows' probabilities"


def test_next_token_against_manual_softmax(run) -> None:
    model, idx, rec, logits = run
    ids = idx[0]
    for temperature in (1.0, 0.5):
        nt = A.next_token(logits, ids, temperature=temperature, k=4)
        T = ids.numel()
        assert nt.top_ids.shape == (T, 4) and nt.actual_prob.shape == (T - 1,)
        probs = torch.softmax(logits[0] / temperature, -1)
        expected = probs[torch.arange(T - 1), ids[1:]]
        torch.testing.assert_close(nt.actual_prob, expected)
        torch.testing.assert_close(nt.surprise_bits, -torch.log(expected) / math.log(2))
        order = torch.argsort(probs[:-1], dim=-1, descending=True)
        ranks = (order == ids[1:, None]).float().argmax(-1) + 1
        assert torch.equal(nt.actual_rank, ranks)
        torch.testing.assert_close(nt.top_probs, torch.topk(probs, 4).values)
    greedy = A.next_token(logits[0], ids, temperature=0)
    assert torch.all(greedy.top_probs[:, 0] == 1.0)
    with pytest.raises(ValueError, match="ids"):
        A.next_token(logits, ids[:-1])


def test_per_position_loss_mean_is_forward_loss(run) -> None:
    model, idx, _, _ = run
    torch.manual_seed(3)
    targets = torch.randint(0, model.config.vocab_size, idx.shape)
    with torch.no_grad():
        logits, loss = model(idx, targets)
    per = A.per_position_loss(logits, targets)
    assert per.shape == targets.shape
    torch.testing.assert_close(per.mean(), loss)
    torch.testing.assert_close(A.per_position_loss(logits[0], targets[0]), per[0])
    targets[0, :5] = -1  # ignored positions: 0 there, and the mean over the rest is forward's loss
    with torch.no_grad():
        _, loss = model(idx, targets)
    per = A.per_position_loss(logits, targets)
    assert torch.all(per[0, :5] == 0)
    torch.testing.assert_close(per[0, 5:].mean(), loss)


def test_target_prob_rank_against_a_per_row_loop() -> None:
    V = 12
    probs = torch.softmax(torch.randn(7, V, generator=torch.Generator().manual_seed(0)), -1)  # (7, V)
    probs[3] = torch.tensor([0.25] * 4 + [0.0] * (V - 4))  # a four-way tie at the top
    probs[4] = F.one_hot(torch.tensor(5), V).float()  # temperature 0: one-hot
    probs[5] = probs[4]
    targets = torch.tensor([0, V - 1, 3, 2, 5, 6, 7])  # rows 4/5: on and off the argmax
    prob, rank = A.target_prob_rank(probs, targets)
    assert prob.shape == rank.shape == (7,) and rank.dtype == torch.long
    for i, t in enumerate(targets.tolist()):
        want = probs[i, t].item()
        assert prob[i].item() == want
        assert rank[i].item() == 1 + sum(1 for v in probs[i].tolist() if v > want), i
    assert rank[3].item() == 1 and rank[4].item() == 1 and rank[5].item() == 2  # ties share the better rank


def test_prompt_loss_and_forward_loss_are_the_models_loss(run) -> None:
    model, idx, rec, _ = run
    ids = idx[0].tolist()
    with torch.no_grad():
        _, want = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert A.prompt_loss(rec["logits"], ids) == pytest.approx(want.item(), rel=1e-5)
    assert A.prompt_loss(rec["logits"][0], ids) == pytest.approx(want.item(), rel=1e-5)  # (T, V) as well
    assert A.forward_loss(model, ids) == pytest.approx(want.item(), rel=1e-6)
    assert A.forward_loss(model, ids[:1]) is None
    assert A.prompt_loss(rec["logits"][:, :1], ids[:1]) is None


def test_training_example_losses_average_to_the_forward_loss(run) -> None:
    model, idx, _, _ = run
    T = 11
    ids = idx[0, :T].tolist()
    tv = A.training_example(model, ids)
    assert tv.x == ids[:-1] and tv.y == ids[1:]  # targets are the input shifted by one
    assert tv.per_position.shape == (T - 1,)
    assert tv.mean == pytest.approx(tv.loss, abs=1e-5)
    # each position's loss is -ln p(target) under the model's own full-sequence logits
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]), rec=Recorder(["logits"]))  # (1, T, V)
    logp = F.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V); causal: positions < T-1 see the same
    torch.testing.assert_close(tv.per_position, -logp[torch.arange(T - 1), torch.tensor(ids[1:])])
    assert torch.all(tv.target_rank >= 1) and torch.all(tv.top_probs[:, :-1] >= tv.top_probs[:, 1:])
    # the target's probability and rank are target_prob_rank of the same distribution
    p, rank = A.target_prob_rank(logp.exp(), torch.tensor(ids[1:]))
    torch.testing.assert_close(tv.target_prob, p)
    assert torch.equal(tv.target_rank, rank)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        A.training_example(model, ids[:1])


def test_embedding_pca() -> None:
    model = tiny()
    coords, ratio = A.embedding_pca(model, k=3)
    V = model.config.vocab_size
    assert coords.shape == (V, 3) and ratio.shape == (3,)
    assert torch.all(ratio[:-1] >= ratio[1:]) and 0 < ratio.sum() <= 1
    W = model.transformer.wte.weight.detach()
    Wc = W - W.mean(0)
    s = torch.linalg.svdvals(Wc)
    torch.testing.assert_close(ratio, (s[:3] ** 2 / (s ** 2).sum()), rtol=1e-4, atol=1e-6)
    # coordinates are the projections: uncorrelated columns with variance s_i^2
    gram = coords.t() @ coords
    torch.testing.assert_close(gram, torch.diag(s[:3] ** 2), rtol=1e-3, atol=1e-4)


def test_position_similarity() -> None:
    model = tiny()
    sim = A.position_similarity(model)
    B = model.config.block_size
    assert sim.shape == (B, B)
    torch.testing.assert_close(sim.diagonal(), torch.ones(B))
    torch.testing.assert_close(sim, sim.t())
    wpe = model.transformer.wpe.weight.detach()
    torch.testing.assert_close(sim[3, 7], F.cosine_similarity(wpe[3], wpe[7], dim=0))
