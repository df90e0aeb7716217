"""Direct logit attribution (gpt.attribution) and information-flow routes (gpt.flow), each checked
against an independent computation: DLA sums against the model's own logits (bundled model and a
random GPT-2 shape), one head's term by hand, the flow shares against a slow reference written
straight from Ferrando & Voita's formula on a hand-run forward, and ablations against exact zeros."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpt import attribution as A
from gpt import flow
from gpt.analysis import lens_logits
from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)
BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def model_logits(model: GPT, ids: list[int], edit: Edits | None = None) -> torch.Tensor:
    """(T, V) logits from a plain forward (no recorder), as the model computes them."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        logits, _ = model(idx, targets=idx, edit=edit)  # targets: logits at every position
    return logits[0].double()


def random_model(seed: int = 0, biases: bool = True, **cfg) -> GPT:
    """A small random model whose biases and LayerNorm gains are not the init's zeros and ones, so
    every term of the decomposition (b_V, b_O, ln_f's bias) matters."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("tiny", **cfg)).eval()
    if biases:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
                elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                    p.uniform_(0.5, 1.5)
                elif name.endswith("c_proj.weight"):
                    p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def bundled() -> tuple[GPT, list[int]]:
    from gpt.checkpoint import load

    model, tok, _ = load(str(BUNDLED))
    return model.eval(), tok.encode(PROMPT)


@pytest.fixture(scope="module")
def gpt2_shape() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2")).eval()


# -- DLA: exactness ------------------------------------------------------------------------------------
def test_dla_sums_to_the_logit_and_the_logit_difference_on_the_bundled_model(bundled) -> None:
    model, ids = bundled
    logits = model_logits(model, ids)
    for pos in (0, 7, len(ids) - 1):
        top2 = torch.topk(logits[pos], 2).indices.tolist()
        d = A.dla(model, ids, pos, top2[0])
        assert abs(d.total - float(logits[pos, top2[0]])) < 1e-4
        assert abs(d.logit - float(logits[pos, top2[0]])) < 1e-4
        diff = A.dla(model, ids, pos, top2[0], other=top2[1])
        assert abs(diff.total - float(logits[pos, top2[0]] - logits[pos, top2[1]])) < 1e-4
        assert diff.other == top2[1] and len(diff.values) == len(diff.components) == 27  # 2 + 4*(4+1+1) + 1


def test_dla_for_all_positions_sums_to_every_logit_on_a_random_gpt2_shape(gpt2_shape) -> None:
    torch.manual_seed(1)
    ids = torch.randint(0, 50257, (12,)).tolist()
    logits = model_logits(gpt2_shape, ids)
    every = A.dla_all(gpt2_shape, ids)  # each position's own prediction
    assert every.values.shape == (12, 2 + 12 * 14 + 1)
    assert every.tokens == logits.argmax(-1).tolist()
    want = logits.gather(1, torch.tensor(every.tokens)[:, None])[:, 0]
    assert torch.allclose(every.values.sum(1), want, atol=1e-4, rtol=0)
    other = torch.randint(0, 50257, (12,))
    diff = A.dla_all(gpt2_shape, ids, tokens=7, other=other)
    want = logits[:, 7] - logits.gather(1, other[:, None])[:, 0]
    assert torch.allclose(diff.values.sum(1), want, atol=1e-4, rtol=0)
    one = A.dla(gpt2_shape, ids, 5, 7, other=int(other[5]))
    assert torch.allclose(one.values, diff.values[5])


def test_one_head_term_equals_a_hand_computation_with_the_frozen_scale(bundled) -> None:
    model, ids = bundled
    pos, layer, head, token = 20, 2, 1, 43
    d = A.dla(model, ids, pos, token)
    rec = Recorder([f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.attn.hook_z", "blocks.3.hook_resid_post"],
                   compact=False)
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec)
    x = rec["blocks.3.hook_resid_post"][0, pos].double()  # the final residual
    sigma = torch.sqrt(x.var(unbiased=False) + 1e-5)  # frozen: the final LayerNorm's scale at pos
    w = model.transformer.ln_f.weight.detach().double()
    W_U = model.lm_head.weight.detach().double()
    r = rec[f"blocks.{layer}.attn.hook_result"][0, pos, head].double()
    hs = model.config.n_embd // model.config.n_head
    z = rec[f"blocks.{layer}.attn.hook_z"][0, pos, head].double()  # the same write, from z and W_O
    W_O = model.transformer.h[layer].attn.c_proj.weight.detach().double()[:, head * hs:(head + 1) * hs]  # (C, hs)
    assert torch.allclose(W_O @ z, r, atol=1e-5)
    manual = float(((r - r.mean()) * w / sigma) @ W_U[token])
    i = next(i for i, c in enumerate(d.components) if c.label == f"L{layer}H{head}")
    assert abs(float(d.values[i]) - manual) < 1e-6
    assert abs(float(d.heads(4, 4)[layer, head]) - manual) < 1e-6
    assert abs(d.scale - float(sigma)) < 1e-6


def test_a_zero_ablated_head_has_exactly_zero_dla_and_the_sum_is_the_edited_logit(bundled) -> None:
    model, ids = bundled
    edit = Edits().ablate_heads(1, [0, 3])
    logits = model_logits(model, ids, edit)
    d = A.dla(model, ids, -1, 10, edit=edit)
    grid = d.heads(4, 4)
    assert grid[1, 0] == 0.0 and grid[1, 3] == 0.0 and grid[1, 1] != 0.0
    assert abs(d.total - float(logits[-1, 10])) < 1e-4


def test_an_edit_of_the_residual_stream_gets_its_own_term(bundled) -> None:
    model, ids = bundled
    torch.manual_seed(0)
    edit = Edits().add("blocks.1.hook_resid_mid", torch.randn(128), scale=0.5)
    logits = model_logits(model, ids, edit)
    d = A.dla(model, ids, -1, 10, edit=edit)
    assert d.components[-1].kind == "edit" and float(d.values[-1]) != 0.0
    assert abs(d.total - float(logits[-1, 10])) < 1e-4
    assert A.components(model, Edits().ablate_heads(0, [1]))[-1].kind == "ln_bias"  # a head edit is no extra term


def test_dla_bad_inputs_say_what_to_do(bundled) -> None:
    model, ids = bundled
    with pytest.raises(ValueError, match="outside the prompt"):
        A.dla(model, ids, len(ids), 3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        A.dla(model, ids, 0, 65)
    with pytest.raises(ValueError, match="one per position"):
        A.dla_all(model, ids, tokens=[1, 2])


# -- flow: the paper's formula, written slowly ---------------------------------------------------------
def reference_shares(model: GPT, ids: list[int]) -> tuple[dict, dict]:
    """The forward run by hand in float64 from the weights, and each node's shares straight from the
    paper: proximity(z, y) = max(-||z - y||_1 + ||y||_1, 0), share = proximity / sum over the parts.
    Returns ({(l, i): {"resid": s, (j, h): s}}, {(l, i): (mlp share, residual share)}) and checks the
    hand-run logits against the model's."""
    cfg = model.config
    H, C = cfg.n_head, cfg.n_embd
    hs = C // H
    g = {n: p.detach().double() for n, p in model.named_parameters()}
    T = len(ids)

    def ln(v: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = v.mean()
        return (v - m) / math.sqrt(float(((v - m) ** 2).mean()) + 1e-5) * w + b

    def prox(z: torch.Tensor, y: torch.Tensor) -> float:
        return max(-float((z - y).abs().sum()) + float(y.abs().sum()), 0.0)

    x = [g["transformer.wte.weight"][ids[t]] + g["transformer.wpe.weight"][t] for t in range(T)]
    attn_sh, mlp_sh = {}, {}
    for l in range(cfg.n_layer):
        p = f"transformer.h.{l}."
        h1 = [ln(x[t], g[p + "ln_1.weight"], g[p + "ln_1.bias"]) for t in range(T)]
        qkv = [g[p + "attn.c_attn.weight"] @ h1[t] + g[p + "attn.c_attn.bias"] for t in range(T)]
        W_O, b_O = g[p + "attn.c_proj.weight"], g[p + "attn.c_proj.bias"]
        mid = []
        for i in range(T):
            parts: dict = {"resid": x[i]}
            out = b_O.clone()
            for h in range(H):
                q = qkv[i][h * hs:(h + 1) * hs]
                scores = [float(q @ qkv[j][C + h * hs:C + (h + 1) * hs]) / math.sqrt(hs) for j in range(i + 1)]
                a = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
                for j in range(i + 1):
                    v = qkv[j][2 * C + h * hs:2 * C + (h + 1) * hs]  # the value, with its bias b_V
                    parts[(j, h)] = a[j] * (W_O[:, h * hs:(h + 1) * hs] @ v)
                    out = out + parts[(j, h)]
            y = x[i] + out
            px = {k: prox(z, y) for k, z in parts.items()}
            total = sum(px.values())
            attn_sh[(l, i)] = {k: v / total for k, v in px.items()}
            mid.append(y)
        nxt = []
        for i in range(T):
            h2 = ln(mid[i], g[p + "ln_2.weight"], g[p + "ln_2.bias"])
            m = g[p + "mlp.c_proj.weight"] @ F.gelu(g[p + "mlp.c_fc.weight"] @ h2 + g[p + "mlp.c_fc.bias"]) \
                + g[p + "mlp.c_proj.bias"]
            y = mid[i] + m
            pm, pr = prox(m, y), prox(mid[i], y)
            mlp_sh[(l, i)] = (pm / (pm + pr), pr / (pm + pr))
            nxt.append(y)
        x = nxt
    hand = torch.stack([ln(v, g["transformer.ln_f.weight"], g["transformer.ln_f.bias"]) for v in x]) \
        @ g["transformer.wte.weight"].t()  # tied: lm_head is wte
    assert torch.allclose(hand, model_logits(model, ids), atol=1e-4), "the hand-run forward is not the model's"
    return attn_sh, mlp_sh


def test_contributions_equal_the_papers_formula_on_a_small_random_model() -> None:
    model = random_model(3, n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=11)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    ref_attn, ref_mlp = reference_shares(model, ids)
    c = flow.contributions(model, ids, chunk=64)  # a small chunk: several query blocks per layer
    T = len(ids)
    for (l, i), shares in ref_attn.items():
        assert abs(float(c.attn_resid[l, i]) - shares["resid"]) < 1e-5, (l, i)
        for j in range(T):
            for h in range(2):
                want = shares.get((j, h), 0.0)  # a later token is no part: share 0
                assert abs(float(c.attn[l, i, j, h]) - want) < 1e-5, (l, i, j, h)
    for (l, i), (m, r) in ref_mlp.items():
        assert abs(float(c.mlp[l, i]) - m) < 1e-5 and abs(float(c.mlp_resid[l, i]) - r) < 1e-5
    assert float(c.attn.max()) > 0.05  # the heads do carry something on this model
    assert torch.equal(c.head_map(1, 0), c.attn[1, :, :, 0])


def test_shares_sum_to_one_at_every_node(bundled) -> None:
    model, ids = bundled
    for edit in (None, Edits().ablate_heads(2, [1]).ablate_mlp(0), Edits().ablate_heads(1, [0, 2], "mean")):
        c = flow.contributions(model, ids, edit)
        assert torch.allclose(c.attn.sum((2, 3)) + c.attn_resid, torch.ones(4, len(ids)), atol=1e-5)
        assert torch.allclose(c.mlp + c.mlp_resid, torch.ones(4, len(ids)), atol=1e-5)
        assert float(c.attn.min()) >= 0.0 and float(c.mlp.min()) >= 0.0
        assert c.split_by_attention == []  # zero and own-mean ablations are linear: exact per source


def test_a_zero_ablated_head_or_mlp_contributes_exactly_zero(bundled) -> None:
    model, ids = bundled
    plain = flow.contributions(model, ids)
    c = flow.contributions(model, ids, Edits().ablate_heads(1, [2]).ablate_mlp(3))
    assert float(plain.attn[1, :, :, 2].sum()) > 0.1 and float(plain.mlp[3].sum()) > 0.1
    assert torch.count_nonzero(c.attn[1, :, :, 2]) == 0
    assert torch.count_nonzero(c.mlp[3]) == 0 and torch.all(c.mlp_resid[3] == 1.0)
    assert torch.equal(c.attn[0], plain.attn[0])  # the layer before the edit is untouched


def test_a_non_linear_edit_is_split_by_attention_and_still_sums_to_one() -> None:
    model = random_model(1)
    ids = [5, 9, 2, 7, 1, 8]
    edit = Edits().add("blocks.1.attn.hook_z", torch.full((2, 32), 0.3))  # adds a constant to every head's z
    c = flow.contributions(model, ids, edit)
    assert c.split_by_attention == [1]
    assert torch.allclose(c.attn.sum((2, 3)) + c.attn_resid, torch.ones(2, len(ids)), atol=1e-5)
    same = flow.contributions(model, ids, Edits({"blocks.1.attn.hook_z": lambda z: z}))  # identity: linear
    assert same.split_by_attention == [] and torch.allclose(same.attn, flow.contributions(model, ids).attn, atol=1e-6)


# -- the graph -----------------------------------------------------------------------------------------
def reachable_edges(c: flow.Contributions, threshold: float, pos: int) -> set:
    """Every edge above threshold from which the output node at pos can be reached, by brute force
    over the full edge list (LLM-TT's DFS on the reversed graph)."""
    L, T = c.attn.size(0), c.T
    tok = c.attn.sum(-1)
    below = (lambda l, j: ("out", l - 1, j) if l > 0 else ("embed", -1, j))
    every = []
    for l in range(L):
        for i in range(T):
            every.append((below(l, i), ("mid", l, i), float(c.attn_resid[l, i]), "resid"))
            every += [(below(l, j), ("mid", l, i), float(tok[l, i, j]), "attn") for j in range(T)]
            every += [(("mid", l, i), ("mlp", l, i), float(c.mlp[l, i]), "mlp"),
                      (("mlp", l, i), ("out", l, i), float(c.mlp[l, i]), "mlp"),
                      (("mid", l, i), ("out", l, i), float(c.mlp_resid[l, i]), "resid")]
    kept = [e for e in every if e[2] > threshold]
    reached, changed = {("out", L - 1, pos)}, True
    while changed:
        changed = False
        for s, d, _, _ in kept:
            if d in reached and s not in reached:
                reached.add(s)
                changed = True
    return {(s, d, k) for s, d, _, k in kept if d in reached}


def test_graph_holds_exactly_the_edges_that_reach_the_prediction(bundled) -> None:
    model, ids = bundled
    c = flow.contributions(model, ids)
    sizes = []
    for threshold in (0.0, 0.02, 0.04, 0.1):
        g = c.graph(threshold, pos=-1)
        got = {(tuple(e.src), tuple(e.dst), e.kind) for e in g.edges}
        assert got == reachable_edges(c, threshold, len(ids) - 1)
        assert all(e.weight > threshold for e in g.edges)
        assert {tuple(n) for n in g.nodes} == {tuple(e.src) for e in g.edges} | {tuple(e.dst) for e in g.edges}
        assert [flow.node_order(n) for n in g.nodes] == sorted(flow.node_order(n) for n in g.nodes)
        sizes.append(len(g.edges))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    e = next(e for e in c.graph(0.04, 5).edges if e.kind == "attn")
    assert abs(sum(e.heads) - e.weight) < 1e-5 and len(e.heads) == 4
    with pytest.raises(ValueError, match="outside the prompt"):
        c.graph(0.04, pos=len(ids))


def test_node_tokens_read_the_lens_and_the_direct_effect(bundled) -> None:
    model, ids = bundled
    rec = Recorder(flow.NEEDS)
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec)
    out = flow.node_tokens(model, rec, flow.Node("out", 3, len(ids) - 1), k=3)
    assert out.promoted == model_logits(model, ids)[-1].topk(3).indices.tolist()  # the last lens row is the output
    mid = flow.node_tokens(model, rec, flow.Node("mid", 1, 4), k=2)
    lens = lens_logits(model, rec["blocks.1.hook_resid_mid"][0, 4])
    assert mid.suppressed == (-lens).topk(2).indices.tolist()
    mlp = flow.node_tokens(model, rec, flow.Node("mlp", 2, 9), k=2)
    d = A.dla(model, ids, 9, mlp.promoted[0])
    assert abs(float(d.values[[c.label for c in d.components].index("L2 MLP")]) - mlp.promoted_logits[0]) < 1e-4


def test_cost_counts_the_causal_half() -> None:
    assert flow.cost(2, 3, 8, 4) == 2 * 10 * 3 * 8
