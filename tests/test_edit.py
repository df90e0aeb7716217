"""Edits: an empty edit is no edit, an identity edit at every hook changes nothing, recordings hold
the edited values, edits match weight surgery and a hand-written forward, KV-cached generation under
an edit equals full recompute under it, and keys identify edits."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.generate import Generator, generate
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)
B, T = 2, 12
EVERYTHING = ["*", "blocks.*.attn.hook_result"]
ZERO = torch.tensor([0])


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny")).eval()
    with torch.no_grad():  # non-trivial biases and gains and lively weights, so that mistakes show
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.05))
    return m


@pytest.fixture(scope="module")
def idx(model: GPT) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)  # (B, T)


def run(model: GPT, idx: torch.Tensor, edit: Edits | None = None, names=None, **kw):
    """(logits (B, T, V), Recorder) of one forward under `edit`, recording `names` (None: nothing)."""
    rec = Recorder(names, **kw) if names is not None else None
    with torch.no_grad():
        logits, _ = model(idx, idx, rec=rec, edit=edit)
    return logits, rec


def ln(x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)


def reference_forward(model: GPT, idx: torch.Tensor, at: dict | None = None) -> torch.Tensor:
    """The forward written out by hand (LayerNorm and attention from their definitions), with
    at[(site, layer)] applied at: resid_pre, ln1 (normalized), scores (masked), pattern, mlp_post."""
    at = at or {}
    f = lambda site, i, t: at[(site, i)](t) if (site, i) in at else t  # noqa: E731
    cfg, tf = model.config, model.transformer
    Bx, Tx = idx.shape
    nh, hs = cfg.n_head, cfg.head_dim
    causal = torch.ones(Tx, Tx, dtype=torch.bool).tril()
    x = tf.wte.weight[idx] + tf.wpe.weight[:Tx]  # (B, T, C)
    for i, blk in enumerate(tf.h):
        x = f("resid_pre", i, x)
        h = f("ln1", i, ln(x)) * blk.ln_1.weight + blk.ln_1.bias
        qkv = h @ blk.attn.c_attn.weight.T + blk.attn.c_attn.bias  # (B, T, 3C)
        q, k, v = (t.reshape(Bx, Tx, nh, hs).transpose(1, 2) for t in qkv.split(cfg.n_embd, -1))  # (B, nh, T, hs)
        s = f("scores", i, (q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(~causal, float("-inf")))
        p = f("pattern", i, s.softmax(-1))  # (B, nh, T, T)
        z = (p @ v).transpose(1, 2).reshape(Bx, Tx, cfg.n_embd)  # (B, T, C)
        x = x + z @ blk.attn.c_proj.weight.T + blk.attn.c_proj.bias
        h = ln(x) * blk.ln_2.weight + blk.ln_2.bias
        post = f("mlp_post", i, F.gelu(h @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias))  # (B, T, 4C)
        x = x + post @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
    return (ln(x) * tf.ln_f.weight + tf.ln_f.bias) @ model.lm_head.weight.T  # (B, T, V)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def test_empty_edit_is_no_edit_bit_for_bit(model: GPT, idx: torch.Tensor) -> None:
    assert not Edits() and Edits().key == () and not Edits({})
    with torch.no_grad():
        fast, _ = model(idx)
        fast_empty, _ = model(idx, edit=Edits())
    assert fast.shape == (B, 1, model.config.vocab_size) and torch.equal(fast, fast_empty)
    plain, rec_plain = run(model, idx, None, None)
    empty, rec_empty = run(model, idx, Edits(), None)
    assert torch.equal(plain, empty)
    for names in (None, EVERYTHING):  # Recorder(None): every site but hook_result
        rec_plain, rec_empty = Recorder(names), Recorder(names)
        with torch.no_grad():
            plain, _ = model(idx, idx, rec=rec_plain)
            empty, _ = model(idx, idx, rec=rec_empty, edit=Edits())
        assert torch.equal(plain, empty)
        assert rec_plain.names() == rec_empty.names() and len(rec_plain.names()) >= 2 + 15 * 2 + 2
        for name in rec_plain.names():
            assert torch.equal(rec_plain[name], rec_empty[name]), name


def test_identity_at_every_hook_is_no_edit_in_transformerlens_order(model: GPT, idx: torch.Tensor) -> None:
    every = Recorder.all_names(model.config)
    calls: list[str] = []

    def identity(name: str):
        return lambda act: (calls.append(name), act)[1]
    edit = Edits({n: identity(n) for n in every})
    plain, rec_plain = run(model, idx, None, EVERYTHING, compact=False)
    edited, rec_edited = run(model, idx, edit, EVERYTHING, compact=False)
    assert calls == every  # each hook once, hook_resid_post of block i before hook_resid_pre of i+1
    close(edited, plain)
    for name in every:
        close(rec_edited[name], rec_plain[name])
    globbed, _ = run(model, idx, Edits({"*": lambda a: a, "blocks.*.attn.hook_result": lambda a, pos: a}))
    close(globbed, plain)


def test_recording_holds_the_edited_values(model: GPT, idx: torch.Tensor) -> None:
    h, nh = 1, model.config.n_head
    zero_h = Edits({"blocks.1.attn.hook_z": lambda z: z.index_fill(2, torch.tensor([h]), 0.0)})
    names = ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]
    _, plain = run(model, idx, None, names)
    _, rec = run(model, idx, zero_h, names)
    z = rec["blocks.1.attn.hook_z"]  # (B, T, nh, hs)
    assert torch.all(z[..., h, :] == 0) and not torch.all(plain["blocks.1.attn.hook_z"][..., h, :] == 0)
    keep = [i for i in range(nh) if i != h]
    close(z[..., keep, :], plain["blocks.1.attn.hook_z"][..., keep, :])
    c_proj = model.transformer.h[1].attn.c_proj
    with torch.no_grad():
        close(rec["blocks.1.hook_attn_out"], c_proj(z.reshape(B, T, -1)))


def test_compact_recording_under_edits_equals_full_recording(model: GPT, idx: torch.Tensor) -> None:
    """Every derivation rule of the compact recorder against a recorder that stores everything."""
    f = lambda x: x * 1.5  # noqa: E731
    g = lambda x: x + 1.0  # noqa: E731
    unmask = lambda s: torch.where(torch.isinf(s), torch.zeros_like(s), s)  # noqa: E731 (above the diagonal too)
    edit = Edits({"blocks.0.hook_resid_post": f, "blocks.1.hook_resid_pre": g,
                  "blocks.0.attn.hook_attn_scores": unmask, "blocks.1.attn.hook_pattern": lambda p: p.flip(-1),
                  "blocks.0.hook_resid_mid": g, "blocks.1.ln2.hook_normalized": f, "blocks.0.mlp.hook_post": f,
                  "blocks.1.ln1.hook_normalized": g, "ln_final.hook_normalized": f, "blocks.1.attn.hook_z": g})
    _, full = run(model, idx, edit, EVERYTHING, compact=False)
    _, compact = run(model, idx, edit, EVERYTHING, compact=True)
    assert compact.stored_bytes() < full.stored_bytes()
    for name in full.names():
        close(compact[name], full[name])
    assert torch.all(compact["blocks.0.attn.hook_attn_scores"] > float("-inf"))  # kept whole, not packed
    # resid_post of block 0 is its edited value, not the (differently edited) resid_pre of block 1
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
    _, plain = run(model, idx, None, names)
    _, compact = run(model, idx, Edits({"blocks.0.hook_resid_post": f, "blocks.1.hook_resid_pre": g}), names)
    post0 = compact["blocks.0.hook_resid_post"]
    close(post0, f(plain["blocks.0.hook_resid_post"]))
    close(compact["blocks.1.hook_resid_pre"], g(post0))
    _, compact = run(model, idx, Edits({"blocks.1.hook_resid_pre": g}), names)
    close(compact["blocks.0.hook_resid_post"], plain["blocks.0.hook_resid_post"])
    close(compact["blocks.1.hook_resid_pre"], g(plain["blocks.0.hook_resid_post"]))


def test_zero_head_via_z_equals_via_result_equals_weight_surgery(model: GPT, idx: torch.Tensor) -> None:
    layer, h, hs = 1, 1, model.config.head_dim
    via_z = Edits({f"blocks.{layer}.attn.hook_z": lambda z: z.index_fill(2, torch.tensor([h]), 0.0)})
    via_result = Edits({f"blocks.{layer}.attn.hook_result": lambda r: r.index_fill(2, torch.tensor([h]), 0.0)})
    surgery = copy.deepcopy(model)
    with torch.no_grad():
        surgery.transformer.h[layer].attn.c_proj.weight[:, h * hs:(h + 1) * hs] = 0  # head h's W_O
    reference, _ = run(surgery, idx)
    plain, _ = run(model, idx)
    assert (reference - plain).abs().max() > 1e-3  # the head matters
    close(run(model, idx, via_z)[0], reference)
    close(run(model, idx, via_result)[0], reference)


def test_reference_forward_is_the_model(model: GPT, idx: torch.Tensor) -> None:
    with torch.no_grad():
        close(reference_forward(model, idx), run(model, idx)[0])


@pytest.mark.parametrize("hook_name, site", [("blocks.1.hook_resid_pre", "resid_pre"),
                                              ("blocks.0.mlp.hook_post", "mlp_post"),
                                              ("blocks.1.ln1.hook_normalized", "ln1"),
                                              ("blocks.0.attn.hook_attn_scores", "scores"),
                                              ("blocks.1.attn.hook_pattern", "pattern")])
def test_edits_match_a_hand_written_forward(model: GPT, idx: torch.Tensor, hook_name: str, site: str) -> None:
    layer = int(hook_name.split(".")[1])
    fns = {"resid_pre": lambda x: x * 0.5 + 0.3,
           "mlp_post": lambda a: a.index_fill(-1, torch.tensor([3, 7]), 0.0),
           "ln1": lambda n: n.roll(1, dims=-1),
           # no query sees key 0, and query 0 sees every key uniformly (its row unmasked)
           "scores": lambda s: s.index_fill(-1, ZERO, float("-inf")).index_fill(-2, ZERO, 0.0),
           "pattern": lambda p: p.roll(1, dims=1)}  # heads swap their patterns
    fn = fns[site]
    with torch.no_grad():
        reference = reference_forward(model, idx, {(site, layer): fn})
        assert (reference - reference_forward(model, idx)).abs().max() > 1e-3  # the edit matters
    close(run(model, idx, Edits({hook_name: fn}))[0], reference)


def test_edits_match_weight_surgery(model: GPT, idx: torch.Tensor) -> None:
    """Edits that have an exact twin in the weights, changed in a copy of the model."""
    C = model.config.n_embd

    def zero_q(m: GPT) -> None:  # q = 0 makes every score 0: uniform attention over the causal past
        m.transformer.h[1].attn.c_attn.weight[:C].zero_()
        m.transformer.h[1].attn.c_attn.bias[:C].zero_()
    d = torch.randn(C, generator=torch.Generator().manual_seed(5)) * 0.5
    cases = [  # (edit, how to change the copy's weights)
        (Edits({"blocks.0.hook_resid_pre": lambda x: x + d}), lambda m: m.transformer.wpe.weight.add_(d)),
        (Edits({"blocks.1.ln1.hook_normalized": lambda n: n * 2}),
         lambda m: m.transformer.h[1].ln_1.weight.mul_(2)),
        (Edits({"blocks.0.mlp.hook_post": lambda a: a.index_fill(-1, torch.tensor([5]), 0.0)}),
         lambda m: m.transformer.h[0].mlp.c_proj.weight[:, 5].zero_()),
        (Edits({"blocks.1.attn.hook_attn_scores": lambda s: s.masked_fill(torch.isfinite(s), 0.0)}), zero_q),
        (Edits({"blocks.1.attn.hook_pattern": lambda p: (p > 0).float() / (p > 0).sum(-1, keepdim=True)}), zero_q),
    ]
    plain, _ = run(model, idx)
    for edit, surgery in cases:
        twin = copy.deepcopy(model)
        with torch.no_grad():
            surgery(twin)
        reference, _ = run(twin, idx)
        assert (reference - plain).abs().max() > 1e-3, edit
        close(run(model, idx, edit)[0], reference)


def position_dependent_edit(seen: list[torch.Tensor]) -> Edits:
    """Changes keys and the residual by position (fn(act, pos)), and keeps the positions it saw."""
    def keys(k: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # (B, T, nh, hs), (T,)
        seen.append(pos.clone())
        return k * (1.0 + 0.05 * pos)[None, :, None, None]

    def resid(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        return x + 0.5 * torch.sin(pos.float())[None, :, None]
    return Edits({"blocks.1.attn.hook_k": keys, "blocks.0.hook_resid_pre": resid,
                  "blocks.0.mlp.hook_post": lambda a: a.index_fill(-1, torch.tensor([2]), 0.0)})


def test_kv_generation_under_an_edit_equals_full_recompute(model: GPT) -> None:
    seen: list[torch.Tensor] = []
    edit = position_dependent_edit(seen)
    block = model.config.block_size
    gen = Generator(model, [3, 1, 4, 1, 5], temperature=0, edit=edit)
    differs = 0
    for _ in range(block + 8):  # past block_size: the window slides and the cache is rebuilt
        ctx = torch.tensor([gen.ids[-block:]])  # (1, T <= block_size)
        with torch.no_grad():
            expected = model(ctx, edit=edit)[0][0, -1]
            differs += not torch.allclose(model(ctx)[0][0, -1], expected, atol=1e-3)
        seen.clear()
        step = gen.step()
        close(step.logits, expected)
        if not step.cropped and step.pos > 5:  # a cached step forwards the one new position
            assert [p.tolist() for p in seen] == [[step.pos - 1]]
    assert differs > block // 2  # the edit changes the logits
    assert gen.ids == generate(model, [3, 1, 4, 1, 5], block + 8, temperature=0, use_cache=False, edit=edit)
    assert gen.ids == generate(model, [3, 1, 4, 1, 5], block + 8, temperature=0, edit=edit)


def test_bad_names_and_shapes_raise(model: GPT, idx: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="blocks.7.hook_resid_pre"):
        run(model, idx, Edits({"blocks.7.hook_resid_pre": lambda x: x}))
    with pytest.raises(ValueError, match="hook_zz"):
        run(model, idx, Edits({"blocks.0.attn.hook_zz": lambda x: x}))
    with pytest.raises(ValueError, match=r"blocks.0.mlp.hook_post.*\(2, 12, 10\).*\(2, 12, 256\)"):
        run(model, idx, Edits({"blocks.0.mlp.hook_post": lambda a: a[..., :10]}))
    with pytest.raises(ValueError, match="hook_embed.*NoneType"):
        run(model, idx, Edits({"hook_embed": lambda a: None}))
    with pytest.raises(TypeError, match="must be a function"):
        Edits({"hook_embed": 3})
    with pytest.raises(TypeError, match="hook_embed.*requires 3"):
        Edits({"hook_embed": lambda a, b, c: a})
    with pytest.raises(TypeError):
        Edits({"hook_embed": lambda a: a}, key=["unhashable"])
    with pytest.raises(TypeError, match="gpt.edit.Edits"):
        model(idx, edit={"hook_embed": lambda a: a})


def test_keys_and_combination_order(model: GPT, idx: torch.Tensor) -> None:
    f, g = (lambda x: x + 1.0), (lambda x: x * 2.0)
    assert Edits({"logits": f}, key="a").key == Edits({"hook_embed": g}, key="a").key == ("a",)
    assert Edits({"logits": f}, key="a") == Edits({"logits": f}, key="a")
    raw1, raw2 = Edits({"logits": f}), Edits({"logits": f})
    assert raw1.key != raw2.key and raw1 != raw2 and hash(raw1.key) != hash(raw2.key)
    a, b = Edits({"blocks.1.hook_resid_pre": f}, key="plus"), Edits({"blocks.1.hook_resid_pre": g}, key="times")
    assert (a + b).key == ("plus", "times") != (b + a).key and a.then(b).key == (a + b).key
    assert (Edits() + a).key == a.key == ("plus",) and (a + b) and a.key == ("plus",)  # a is unchanged
    assert "blocks.1.hook_resid_pre" in repr(a + b) and repr(Edits()) == "Edits()"
    name = ["blocks.1.hook_resid_pre"]
    _, plain = run(model, idx, None, name)
    x = plain[name[0]]
    close(run(model, idx, a + b, name)[1][name[0]], (x + 1) * 2)
    close(run(model, idx, b + a, name)[1][name[0]], x * 2 + 1)
    close(run(model, idx, Edits({name[0]: [g, f]}), name)[1][name[0]], x * 2 + 1)  # a list keeps its order
