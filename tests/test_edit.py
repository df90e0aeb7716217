"""Edits: an empty edit is no edit, an identity edit at every hook changes nothing, recordings hold
the edited values, edits match weight surgery and a hand-written forward, KV-cached generation under
an edit equals full recompute under it, and keys identify edits. The sugar (gpt/interventions.py):
zero ablations equal weight surgery, mean ablations their manual computation, patch and add a
hand-written edit, each kind survives KV-cache generation, and each bad input gets its message."""
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


# -- the sugar: ablate_heads, ablate_mlp, ablate_neurons, patch, add (gpt/interventions.py) ------------
def surgery(model: GPT, change) -> GPT:
    twin = copy.deepcopy(model)
    with torch.no_grad():
        change(twin)
    return twin


def test_zero_ablations_equal_weight_surgery(model: GPT, idx: torch.Tensor) -> None:
    hs = model.config.head_dim
    plain, _ = run(model, idx)

    def heads(m: GPT) -> None:  # heads 0 and 1 of layer 1: their slices of c_proj's input columns
        m.transformer.h[1].attn.c_proj.weight[:, 0:2 * hs] = 0

    def mlp(m: GPT) -> None:  # the MLP's whole write, its bias included
        m.transformer.h[0].mlp.c_proj.weight.zero_()
        m.transformer.h[0].mlp.c_proj.bias.zero_()

    def neurons(m: GPT) -> None:
        m.transformer.h[1].mlp.c_proj.weight[:, [3, 17, 200]] = 0
    def head1(m: GPT) -> None:  # layer 0 has 2 heads: head 1 is the second half of the columns
        m.transformer.h[0].attn.c_proj.weight[:, hs:] = 0
    for edit, change in [(Edits().ablate_heads(1, [1, 0]), heads), (Edits().ablate_heads(0, 1, "zero"), head1),
                         (Edits().ablate_mlp(0), mlp), (Edits().ablate_neurons(1, [200, 3, 17]), neurons)]:
        reference, _ = run(surgery(model, change), idx)
        assert (reference - plain).abs().max() > 1e-3, edit.details
        torch.testing.assert_close(run(model, idx, edit)[0], reference, atol=1e-6, rtol=0)


def test_mean_ablations_equal_their_manual_computation(model: GPT, idx: torch.Tensor) -> None:
    ref = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(7))
    names = ["blocks.1.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.1.mlp.hook_post"]
    _, own = run(model, idx, None, names, compact=False)  # the prompt's own activations
    with torch.no_grad():
        rec_ref = Recorder(names, compact=False)
        model(ref, rec=rec_ref)
    heads, neurons = [0], [4, 9]

    def manual(name: str, sel, mean):  # the activation with `sel` of its last-but-... axis set to `mean`
        def fn(a):
            a = a.clone()
            if sel is None:
                a[:] = mean
            else:
                a[:, :, sel] = mean
            return a
        return Edits({name: fn})
    z, mo, post = (own[n] for n in names)
    rz, rmo, rpost = (rec_ref[n] for n in names)
    cases = [  # (sugar, the same by hand): each row's mean over its positions, or the mean over ref
        (Edits().ablate_heads(1, heads, "mean"), manual(names[0], heads, z[:, :, heads].mean(1, keepdim=True))),
        (Edits().ablate_mlp(0, "mean"), manual(names[1], None, mo.mean(1, keepdim=True))),
        (Edits().ablate_neurons(1, neurons, "mean"),
         manual(names[2], neurons, post[:, :, neurons].mean(1, keepdim=True))),
        (Edits().ablate_heads(1, heads, "mean", ref=ref), manual(names[0], heads, rz[:, :, heads].mean((0, 1)))),
        (Edits().ablate_mlp(0, "mean", ref=ref), manual(names[1], None, rmo.mean((0, 1)))),
        (Edits().ablate_neurons(1, neurons, "mean", ref=ref[0]),
         manual(names[2], neurons, rpost[:1, :, neurons].mean((0, 1)))),
    ]
    plain, _ = run(model, idx)
    for sugar, by_hand in cases:
        expected, _ = run(model, idx, by_hand)
        assert (expected - plain).abs().max() > 1e-3, sugar.details
        close(run(model, idx, sugar)[0], expected)
    # the reference mean is the unedited model's, kept per model, and follows a change of the weights
    edit = cases[3][0]
    twin = surgery(model, lambda m: m.transformer.h[0].attn.c_attn.weight.mul_(1.5))
    with torch.no_grad():
        rec_twin = Recorder(names[:1], compact=False)
        twin(ref, rec=rec_twin)
    mean_twin = rec_twin[names[0]][:, :, heads].mean((0, 1))
    close(run(twin, idx, edit)[0], run(twin, idx, manual(names[0], heads, mean_twin))[0])
    with torch.no_grad():
        twin.transformer.h[0].attn.c_attn.weight.mul_(0.5)  # in place: the version counter moves
        rec_twin = Recorder(names[:1], compact=False)
        twin(ref, rec=rec_twin)
    mean_twin = rec_twin[names[0]][:, :, heads].mean((0, 1))
    close(run(twin, idx, edit)[0], run(twin, idx, manual(names[0], heads, mean_twin))[0])


def test_patching_resid_pre_at_all_positions_gives_the_clean_logits_exactly(model: GPT, idx: torch.Tensor) -> None:
    clean, corrupt = idx[:1], idx[1:]
    name = "blocks.0.hook_resid_pre"
    clean_logits, rec = run(model, clean, None, [name])
    corrupt_logits, _ = run(model, corrupt)
    assert (clean_logits - corrupt_logits).abs().max() > 1e-2
    patched, _ = run(model, corrupt, Edits().patch(name, rec[name]))
    assert torch.equal(patched, clean_logits)


def test_patch_positions_and_heads_equal_a_hand_written_edit(model: GPT, idx: torch.Tensor) -> None:
    names = ["blocks.1.attn.hook_z", "blocks.0.attn.hook_pattern", "blocks.1.hook_mlp_out"]
    _, src = run(model, idx.flip(0), None, names, compact=False)  # values from another run
    z, pat, mo = (src[n] for n in names)

    def by_hand(a, s, sel):
        a = a.clone()
        a[sel] = s[sel]
        return a
    cases = [
        (Edits().patch(names[0], z, positions=[2, 5], heads=[1]),
         Edits({names[0]: lambda a: by_hand(a, z, (slice(None), [[2], [5]], [1]))})),
        (Edits().patch(names[0], z[:1], heads=[0]),  # batch 1 broadcasts over the run's batch
         Edits({names[0]: lambda a: by_hand(a, z[:1].expand_as(a), (slice(None), slice(None), [0]))})),
        (Edits().patch(names[1], pat, positions=[7]),  # pattern: positions are queries (axis 2)
         Edits({names[1]: lambda a: by_hand(a, pat, (slice(None), slice(None), [7]))})),
        (Edits().patch(names[2], mo, positions=[0, T - 1]),
         Edits({names[2]: lambda a: by_hand(a, mo, (slice(None), [0, T - 1]))})),
    ]
    plain, _ = run(model, idx)
    for sugar, reference in cases:
        expected, _ = run(model, idx, reference)
        assert (expected - plain).abs().max() > 1e-4, sugar.details
        close(run(model, idx, sugar)[0], expected)
    d = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(2))
    steer = Edits().add("blocks.1.hook_resid_pre", d, scale=3.0)
    close(run(model, idx, steer)[0], run(model, idx, Edits({"blocks.1.hook_resid_pre": lambda x: x + 3.0 * d}))[0])


def sugar_edits(model: GPT) -> list[Edits]:
    """One edit of each sugar kind whose effect does not depend on how positions are split."""
    C, block = model.config.n_embd, model.config.block_size
    ref = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    values = torch.randn(1, block, C, generator=torch.Generator().manual_seed(4))
    return [Edits().ablate_heads(1, [0]), Edits().ablate_heads(0, [1], "mean", ref=ref),
            Edits().ablate_mlp(1, "mean", ref=ref), Edits().ablate_mlp(0),
            Edits().ablate_neurons(0, [1, 2, 30], "zero"), Edits().ablate_neurons(1, [7], "mean", ref=ref),
            Edits().patch("blocks.1.hook_resid_pre", values, positions=[2, 9, 20]),
            Edits().add("blocks.0.hook_resid_post", values[0, 0], 2.0)]


@pytest.mark.parametrize("kind", range(8))
def test_each_sugar_survives_kv_cache_generation(model: GPT, kind: int) -> None:
    edit = sugar_edits(model)[kind]
    n = model.config.block_size + 6  # past block_size too: the window slides and the cache is rebuilt
    prompt = [3, 1, 4, 1, 5]
    cached = generate(model, prompt, n, temperature=0, edit=edit)
    assert cached == generate(model, prompt, n, temperature=0, use_cache=False, edit=edit), edit.details
    gen, moved = Generator(model, prompt, temperature=0, edit=edit), 0.0
    for _ in range(12):
        ctx = torch.tensor([gen.ids[-model.config.block_size:]])
        with torch.no_grad():
            expected = model(ctx, edit=edit)[0][0, -1]
            moved = max(moved, (model(ctx)[0][0, -1] - expected).abs().max().item())
        close(gen.step().logits, expected)
    assert moved > 1e-3, edit.details  # the edit matters


def test_keys_descriptions_and_specs() -> None:
    e = Edits().ablate_heads(1, [2, 0, 2]).ablate_heads(2, [0]).ablate_mlp(3, "mean").ablate_neurons(0, [5], "zero")
    assert e.key == (("ablate_heads", 1, (0, 2), "zero"), ("ablate_heads", 2, (0,), "zero"),
                     ("ablate_mlp", 3, "mean"), ("ablate_neurons", 0, (5,), "zero"))
    assert e.description == "3 heads ablated (zero); 1 MLP layer ablated (mean); 1 neuron ablated (zero)"
    assert e.details[0] == "layer 1 heads 0, 2 ablated (zero)"
    assert Edits().ablate_heads(1, [0]).ablate_heads(1, [0]).description == "1 head ablated (zero)"  # counted once
    assert Edits().description == "no edit" and Edits({"logits": lambda x: x}).description == "1 custom edit"
    assert Edits.from_spec(e.key) == e and Edits.from_spec(e.key).description == e.description
    assert Edits().ablate_heads(1, [0, 2]) == Edits().ablate_heads(1, (2, 0)) != Edits().ablate_heads(1, [0, 2], "mean")
    with_ref = Edits().ablate_mlp(0, "mean", ref=[[1, 2, 3]])
    assert with_ref.key == (("ablate_mlp", 0, "mean", ((1, 2, 3),)),) and Edits.from_spec(with_ref.key) == with_ref
    v = torch.ones(4)
    assert Edits().add("logits", v).key == Edits().add("logits", v.clone()).key != Edits().add("logits", v * 2).key
    assert Edits().patch("blocks.0.hook_resid_pre", v[None, None]).description == "1 activation patched"
    assert hash(e) == hash(Edits.from_spec(e.key))


def _forward(model: GPT, idx: torch.Tensor, edit: Edits) -> None:
    run(model, idx, edit)


SUGAR_BAD = {  # name -> (what to do with the model and ids, the message it must give)
    "unknown how": (lambda m, i: Edits().ablate_heads(0, [1], "half"), "how must be 'zero' or 'mean'"),
    "ref with zero": (lambda m, i: Edits().ablate_mlp(0, "zero", ref=[1, 2]), "with how='zero' leave it out"),
    "negative head": (lambda m, i: Edits().ablate_heads(0, [-1]), "head must be a non-negative integer"),
    "no neurons": (lambda m, i: Edits().ablate_neurons(0, []), "give at least one neuron"),
    "head past the layer's heads": (lambda m, i: _forward(m, i, Edits().ablate_heads(1, [5])),
                                    r"head 5 is out of range: blocks.1.attn.hook_z has 2 heads \(0..1\)"),
    "neuron past the MLP": (lambda m, i: _forward(m, i, Edits().ablate_neurons(0, [999])),
                            "neuron 999 is out of range"),
    "layer past the model": (lambda m, i: _forward(m, i, Edits().ablate_heads(9, [0])),
                             "blocks.9.attn.hook_z.*matches nothing for a 2-layer model"),
    "ref id past the vocabulary": (lambda m, i: _forward(m, i, Edits().ablate_heads(0, [0], "mean", ref=[1, 99])),
                                   "ref token id 99 is outside the vocabulary 0..64"),
    "ref not ids": (lambda m, i: Edits().ablate_heads(0, [0], "mean", ref=torch.randn(3)), "ref must be token ids"),
    "prompt mean under the KV cache": (
        lambda m, i: generate(m, [1, 2, 3], 2, temperature=0, edit=Edits().ablate_heads(0, [0], "mean")),
        "needs the whole prompt in one forward.*Pass ref="),
    "heads of a name without heads": (
        lambda m, i: Edits().patch("blocks.0.hook_resid_pre", torch.zeros(1, T, 64), heads=[0]),
        "heads= applies to per-head names"),
    "patch a glob": (lambda m, i: Edits().patch("blocks.*.hook_resid_pre", torch.zeros(1, T, 64)),
                     "one concrete hook name"),
    "patch position past the values": (
        lambda m, i: Edits().patch("blocks.0.hook_resid_pre", torch.zeros(1, T, 64), positions=[40]),
        "position 40 is past the patch values, which cover positions 0..11"),
    "patch values of another shape": (
        lambda m, i: _forward(m, i, Edits().patch("blocks.0.hook_resid_pre", torch.zeros(1, T, 32))),
        r"patch values for 'blocks.0.hook_resid_pre' have shape \(1, 12, 32\)"),
    "patch values too short for the run": (
        lambda m, i: _forward(m, i, Edits().patch("blocks.0.hook_resid_pre", torch.zeros(1, 5, 64))),
        "cover positions 0..4; this forward reaches position 11"),
    "add a vector of another size": (
        lambda m, i: _forward(m, i, Edits().add("blocks.0.hook_resid_pre", torch.zeros(3))),
        r"does not broadcast to blocks.0.hook_resid_pre.*last dimension, 64"),
    "rebuild an add from its key": (lambda m, i: Edits.from_spec(Edits().add("logits", torch.zeros(65)).key),
                                    "names its tensor by a digest only"),
    "rebuild an unknown part": (lambda m, i: Edits.from_spec([("ablate_everything", 1)]),
                                "cannot rebuild an edit part from 'ablate_everything'"),
}


@pytest.mark.parametrize("name", list(SUGAR_BAD))
def test_sugar_bad_input_gets_its_message(model: GPT, idx: torch.Tensor, name: str) -> None:
    do, message = SUGAR_BAD[name]
    with pytest.raises(ValueError, match=message):
        do(model, idx)
