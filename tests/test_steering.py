"""Steering vectors (gpt/steering.py, gpt/steering_store.py): alpha 0 is no steering bit for bit (full forward and KV-cache
generation); a token's direction at the last layer raises that token's probability monotonically on
the bundled model; the contrast vector is the mean difference computed by hand (a slow loop over
prompts with rec=); the head source is the recorded hook_result slice; the token direction is the
gradient of the logit lens; save and load round-trip bit for bit; another width is refused; and
each bad input gets its own message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt import steering as S
from gpt import steering_store as io
from gpt.analysis import lens_logits
from gpt.checkpoint import load
from gpt.config import GPTConfig
from gpt.generate import Generator, generate
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)
BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char"


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny")).eval()
    with torch.no_grad():  # lively weights and non-trivial LayerNorm gains, so that mistakes show
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.05))
    return m


@pytest.fixture(scope="module")
def bundled():
    m, tok, _ = load(BUNDLED)
    return m, tok


def ids_of(n: int, seed: int, vocab: int = 65) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def a_vector(model: GPT, layer: int = 1, site: str = "resid_pre") -> S.SteeringVector:
    v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(7))
    return S.from_vector(model, v, layer, site, "a random vector")


# -- alpha 0 is no steering, bit for bit --------------------------------------------------------------
@pytest.mark.parametrize("site", list(S.SITES))
def test_alpha_zero_is_no_edit_in_the_full_forward(model: GPT, site: str) -> None:
    sv = a_vector(model, 1, site)
    edit = S.steering_edit(model, sv, 0.0)
    assert not edit and edit.key == ()  # skipped entirely: the no-edit fast path, and the same cache keys
    idx = torch.tensor([ids_of(20, 1)])
    with torch.no_grad():
        for kw in ({}, {"targets": idx}):  # last-position logits, and all positions with a loss
            plain, loss = model(idx, **kw)
            steered, loss0 = model(idx, edit=edit, **kw)
            assert torch.equal(plain, steered)
            assert loss is None or torch.equal(loss, loss0)
    with torch.no_grad():  # and a non-zero alpha does change the logits (the site is really edited)
        moved, _ = model(idx, idx, edit=S.steering_edit(model, sv, 1.0))
    assert not torch.allclose(moved, model(idx, idx)[0])


def test_alpha_zero_is_no_edit_in_kv_cache_generation(model: GPT) -> None:
    sv = a_vector(model, 0, "resid_post")
    prompt = ids_of(5, 2)
    plain = Generator(model, prompt, temperature=1.0, seed=3)
    steered = Generator(model, prompt, temperature=1.0, seed=3, edit=S.steering_edit(model, sv, 0))
    for _ in range(40):  # past block_size (32): cached steps and window rebuilds alike
        a, b = plain.step(), steered.step()
        assert torch.equal(a.logits, b.logits) and a.token == b.token
    assert plain.ids == steered.ids


def test_steered_kv_generation_equals_full_recompute_under_the_edit(model: GPT) -> None:
    edit = S.steering_edit(model, a_vector(model, 1, "mlp_out"), 3.0)
    prompt = ids_of(6, 4)
    cached = generate(model, prompt, 30, temperature=0.0, edit=edit)
    assert cached == generate(model, prompt, 30, temperature=0.0, edit=edit, use_cache=False)
    assert cached != generate(model, prompt, 30, temperature=0.0)  # the steering changes the text


# -- the three sources ----------------------------------------------------------------------------------
def test_token_direction_raises_its_probability_monotonically_on_the_bundled_model(bundled) -> None:
    m, tok = bundled
    prompt = torch.tensor([tok.encode("ROMEO:\nBut soft, what light through yonder window breaks?")])
    for t in range(m.config.vocab_size):  # every token of the vocabulary, at the last layer
        sv = S.token_direction(m, t)
        assert sv.layer == m.config.n_layer - 1 and sv.site == "resid_post"
        probs = []
        for alpha in (0, 2, 4, 8):
            with torch.no_grad():
                logits, _ = m(prompt, edit=S.steering_edit(m, sv, alpha))
            probs.append(float(torch.softmax(logits[0, -1].double(), -1)[t]))
        assert all(a < b for a, b in zip(probs, probs[1:])), (tok.token_str(t), probs)


def test_token_direction_is_the_logit_lens_gradient(model: GPT) -> None:
    """At a centred residual orthogonal to the direction, the gradient of the lens logit of the
    token (ln_f with its own statistics, then W_U) points along the vector: the contract."""
    t = 11
    sv = S.token_direction(model, t)
    u = sv.vector
    assert abs(float(u.norm()) - 1) < 1e-6 and abs(float(u.mean())) < 1e-6
    x = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(5))
    x = x - x.mean()
    x = (x - (x @ u) * u).requires_grad_(True)  # centred and orthogonal to u
    lens_logits(model, x)[t].backward()
    g = x.grad / x.grad.norm()
    assert torch.allclose(g, u, atol=1e-5)


def _by_hand(model: GPT, prompts: list[list[int]], layer: int, policy: str) -> torch.Tensor:
    """One forward per prompt with rec=, then the policy's mean written out."""
    name = f"blocks.{layer}.hook_resid_pre"
    rows = []
    for p in prompts:
        rec = Recorder([name], compact=False)
        with torch.no_grad():
            model(torch.tensor([p]), rec=rec)
        x = rec[name][0]  # (T, C)
        rows.append(x[-1] if policy == "last" else x.mean(0) if policy == "mean" else x)
    return torch.stack(rows).mean(0)  # over prompts: (C,), or (T, C) per position under "aligned"


@pytest.mark.parametrize("policy", ["last", "mean"])
def test_contrast_is_the_mean_difference_by_hand(model: GPT, policy: str) -> None:
    pos = [ids_of(n, 10 + n) for n in (3, 7, 7, 12)]  # lengths differ; two share a batch
    neg = [ids_of(n, 30 + n) for n in (5, 9)]
    for layer in range(model.config.n_layer):
        sv = S.contrast(model, pos, neg, layer, policy)
        want = _by_hand(model, pos, layer, policy) - _by_hand(model, neg, layer, policy)
        assert torch.allclose(sv.vector, want, atol=1e-6)
        assert (sv.layer, sv.site, sv.kind, sv.width) == (layer, "resid_pre", "contrast", model.config.n_embd)


def test_aligned_contrast_is_the_per_position_difference_by_hand(model: GPT) -> None:
    pos, neg = [ids_of(6, 1), ids_of(6, 2), ids_of(6, 3)], [ids_of(6, 4)]
    sv = S.contrast(model, pos, neg, 1, "aligned")
    per_position = _by_hand(model, pos, 1, "aligned") - _by_hand(model, neg, 1, "aligned")  # (T, C)
    assert torch.allclose(sv.vector, per_position.mean(0), atol=1e-6)


def test_head_output_is_the_recorded_result_slice(model: GPT) -> None:
    prompt = ids_of(9, 8)
    rec = Recorder(["blocks.1.attn.hook_result"], compact=False)
    with torch.no_grad():
        model(torch.tensor([prompt]), rec=rec)
    for head in range(model.config.n_head):
        for pos in (0, 4, 8):
            sv = S.head_output(model, prompt, 1, head, pos)
            assert torch.equal(sv.vector, rec["blocks.1.attn.hook_result"][0, pos, head].float())
            assert (sv.layer, sv.site, sv.kind) == (1, "attn_out", "head")


def test_from_vector_takes_any_direction_with_its_description(model: GPT) -> None:
    v = torch.arange(model.config.n_embd, dtype=torch.float64)
    sv = S.from_vector(model, v, 0, "resid_mid", "an SAE feature's decoder direction")
    assert sv.vector.dtype == torch.float32 and torch.equal(sv.vector, v.float())
    assert sv.source == "an SAE feature's decoder direction" and sv.model == S.fingerprint(model)
    edit = S.steering_edit(model, sv, 2.0, layer=1, site="resid_post")  # applied elsewhere on request
    assert edit.edited_names(model.config) == {"blocks.1.hook_resid_post"}


def test_alpha_sweep_at_zero_is_the_unsteered_model(model: GPT) -> None:
    prompt, t = ids_of(8, 9), 5
    rows = S.alpha_sweep(model, prompt, S.token_direction(model, t), (0, 1, 4), t, n_tokens=12)
    assert [r.alpha for r in rows] == [0, 1, 4]
    with torch.no_grad():
        p0 = float(torch.softmax(model(torch.tensor([prompt]))[0][0, -1].double(), -1)[t])
    assert rows[0].prob == p0
    assert list(rows[0].tokens) == generate(model, prompt, 12, temperature=0.0)[len(prompt):]
    assert rows[0].prob < rows[1].prob < rows[2].prob and all(len(r.tokens) == 12 for r in rows)


# -- saving and loading -------------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(model: GPT, tmp_path: Path) -> None:
    sv = S.contrast(model, [ids_of(4, 1)], [ids_of(4, 2)], 1, "mean")
    path = io.save_vector(sv, tmp_path, "my-vector")
    assert path == tmp_path / "steering" / "my-vector.safetensors" and path.with_suffix(".json").is_file()
    back = io.load_vector(tmp_path, "my-vector", model)
    assert torch.equal(back.vector, sv.vector)
    assert (back.layer, back.site, back.source, back.width, back.model, back.kind) == \
        (sv.layer, sv.site, sv.source, sv.width, sv.model, sv.kind)
    assert io.list_vectors(tmp_path) == ["my-vector"]
    assert not list((tmp_path / "steering").glob(".*"))  # no temp files left


def test_a_vector_of_another_width_is_refused(model: GPT, tmp_path: Path) -> None:
    wide = GPT(GPTConfig.preset("tiny", n_embd=96)).eval()
    io.save_vector(S.token_direction(wide, 3), tmp_path, "wide")
    with pytest.raises(ValueError, match="made for a model of width 96; this model's width is 64"):
        io.load_vector(tmp_path, "wide", model)
    with pytest.raises(ValueError, match="width 96"):
        S.steering_edit(model, io.load_vector(tmp_path, "wide"), 1.0)


# -- bad input, one message each ------------------------------------------------------------------------
def test_empty_first_prompt_set(model: GPT) -> None:
    with pytest.raises(ValueError, match="the first prompt set is empty"):
        S.contrast(model, [[], []], [ids_of(3, 1)], 0)


def test_empty_second_prompt_set(model: GPT) -> None:
    with pytest.raises(ValueError, match="the second prompt set is empty"):
        S.contrast(model, [ids_of(3, 1)], [], 0)


def test_lengths_differ_under_the_aligned_policy(model: GPT) -> None:
    with pytest.raises(ValueError, match=r"different numbers of tokens \(3, 5\).*'last' or 'mean'"):
        S.contrast(model, [ids_of(3, 1)], [ids_of(5, 2)], 0, "aligned")


def test_unknown_position_policy(model: GPT) -> None:
    with pytest.raises(ValueError, match="position policy 'first' is not one of last, mean, aligned"):
        S.contrast(model, [ids_of(3, 1)], [ids_of(3, 2)], 0, "first")


@pytest.mark.parametrize("layer", [2, -1, 7])
def test_layer_out_of_range(model: GPT, layer: int) -> None:
    msg = rf"layer {layer} is out of range: this model has layers 0..1"
    with pytest.raises(ValueError, match=msg):
        S.contrast(model, [ids_of(3, 1)], [ids_of(3, 2)], layer)
    with pytest.raises(ValueError, match=msg):
        S.head_output(model, ids_of(3, 1), layer, 0, 0)
    with pytest.raises(ValueError, match=msg):
        S.steering_edit(model, a_vector(model), 1.0, layer=layer)


def test_unknown_site(model: GPT) -> None:
    with pytest.raises(ValueError, match="site 'hook_q' is not one of resid_pre"):
        S.steering_edit(model, a_vector(model), 1.0, site="hook_q")


def test_head_and_position_out_of_range(model: GPT) -> None:
    with pytest.raises(ValueError, match="head 2 is out of range: this model has heads 0..1"):
        S.head_output(model, ids_of(3, 1), 0, 2, 0)
    with pytest.raises(ValueError, match="position 3 is out of range: the prompt has positions 0..2"):
        S.head_output(model, ids_of(3, 1), 0, 0, 3)


def test_token_out_of_the_vocabulary(model: GPT) -> None:
    with pytest.raises(ValueError, match="token id 65 is outside the vocabulary 0..64"):
        S.token_direction(model, 65)


def test_prompt_longer_than_the_block(model: GPT) -> None:
    with pytest.raises(ValueError, match="a first prompt has 40 tokens; the model reads at most 32"):
        S.contrast(model, [ids_of(40, 1)], [ids_of(3, 2)], 0)


def test_non_finite_alpha(model: GPT) -> None:
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        S.steering_edit(model, a_vector(model), float("nan"))


def test_bad_vector_names(model: GPT, tmp_path: Path) -> None:
    for name in ("", "../x", "a b", ".hidden", "x" * 65):
        with pytest.raises(ValueError, match="is not usable: use 1-64 letters"):
            io.save_vector(a_vector(model), tmp_path, name)


def test_missing_and_corrupt_files(model: GPT, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no saved vector 'nope'"):
        io.load_vector(tmp_path, "nope")
    io.save_vector(a_vector(model), tmp_path, "v")
    (tmp_path / "steering" / "v.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="'v' .* cannot be read"):
        io.load_vector(tmp_path, "v")
    io.save_vector(a_vector(model), tmp_path, "w")
    js = tmp_path / "steering" / "w.json"
    js.write_text(json.dumps({**json.loads(js.read_text()), "width": 3}))
    with pytest.raises(ValueError, match="is not a nanolens steering vector"):
        io.load_vector(tmp_path, "w")
