"""gpt.sae and gpt.sae_index: TopK keeps k latents, unit-norm decoder rows through training, bit-exact
save/load, refusals for another width or hook, the splice/ablate/steer edits, the early-stopping
activation reader against the Recorder, and the feature index against direct computation."""
from __future__ import annotations

import pytest
import torch

from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder
from gpt.sae import (SAE, SAEConfig, SAEError, ablate_feature_edit, feature_direction, load_sae, save_sae,
                     splice_edit, steer_feature_edit)

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny")).eval()  # 2 layers, 64 wide, block 32, vocab 65


def _ids(T: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 65, (1, T), generator=torch.Generator().manual_seed(seed))


def _logits(model: GPT, ids: torch.Tensor, edit=None) -> torch.Tensor:
    """Logits at every position (targets make the model return all of them, as nanoGPT)."""
    with torch.no_grad():
        return model(ids, targets=ids, edit=edit)[0]


def _acts(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    rec = Recorder([HOOK])
    with torch.no_grad():
        model(ids, rec=rec)
    return rec[HOOK]


def test_topk_keeps_exactly_k_largest() -> None:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=16, n_latents=64, k=5), HOOK)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive the ReLU
    x = torch.randn(7, 3, 16)
    z = sae.encode(x)
    assert ((z > 0).sum(-1) == 5).all()
    top = sae.pre(x).topk(5, dim=-1).indices.sort(-1).values
    assert torch.equal((z > 0).nonzero()[:, -1].view(7, 3, 5), top)  # the k largest, nothing else
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # none positive: none survive, never more than k
    assert (sae.encode(x) == 0).all()


def test_decoder_rows_unit_norm_after_every_step() -> None:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=16, n_latents=48, k=4), HOOK)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(256, 16) * 3 + 1
    sae.init_bias(x)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True  # the AuxK loss runs too
    for _ in range(5):
        out = sae.losses(x, dead)
        opt.zero_grad()
        out["loss"].backward()
        sae.remove_parallel_grad()
        g = sae.W_dec.grad
        assert (g * sae.W_dec).sum(1).abs().max() < 1e-5  # no component along the rows left
        opt.step()
        sae.normalize_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)
        assert float(out["aux"].detach()) > 0


def test_save_load_bit_exact(tmp_path, model: GPT) -> None:
    torch.manual_seed(3)
    sae = SAE(SAEConfig(d_in=64, n_latents=256, k=8), HOOK)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_sae(sae, tmp_path / "s", extra={"step": 7})
    back = load_sae(tmp_path / "s", model=model, hook=HOOK)
    for k, v in sae.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = _acts(model, _ids())
    assert torch.equal(sae.encode(x), back.encode(x))
    assert back.meta["step"] == 7 and back.hook == HOOK and back.cfg == sae.cfg


def test_refused_for_another_width_or_hook(tmp_path, model: GPT) -> None:
    save_sae(SAE(SAEConfig(d_in=32, n_latents=64, k=4), HOOK), tmp_path / "narrow")
    with pytest.raises(SAEError, match="32-wide.*64 wide"):
        load_sae(tmp_path / "narrow", model=model)
    save_sae(SAE(SAEConfig(d_in=64, n_latents=64, k=4), HOOK), tmp_path / "ok")
    with pytest.raises(SAEError, match="trained on blocks.1.hook_resid_post, not blocks.0.hook_resid_post"):
        load_sae(tmp_path / "ok", model=model, hook="blocks.0.hook_resid_post")
    save_sae(SAE(SAEConfig(d_in=64, n_latents=64, k=4), "blocks.5.hook_resid_post"), tmp_path / "deep")
    with pytest.raises(SAEError, match="layers 0..1"):
        load_sae(tmp_path / "deep", model=model)
    with pytest.raises(SAEError, match="holds no SAE"):
        load_sae(tmp_path / "nothing")
    with pytest.raises(SAEError, match="k .* cannot exceed"):
        SAEConfig(d_in=4, n_latents=8, k=9)


def _identity_sae(d: int) -> SAE:
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I], no biases: decode(encode(x)) = relu(x) - relu(-x) = x."""
    sae = SAE(SAEConfig(d_in=d, n_latents=2 * d, k=d, kind="relu"), HOOK)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_zero_error_splice_leaves_logits_unchanged(model: GPT) -> None:
    ids = _ids(24)
    sae = _identity_sae(64)
    x = _acts(model, ids)
    assert torch.equal(sae(x)[0], x)  # the setup really has zero error
    clean, spliced = _logits(model, ids), _logits(model, ids, splice_edit(sae))
    # a real (random) SAE does change them: the splice is live
    other = _logits(model, ids, splice_edit(SAE(SAEConfig(d_in=64, n_latents=128, k=4), HOOK)))
    assert clean.shape == (1, 24, 65)
    assert torch.equal(clean, spliced)
    assert not torch.allclose(clean, other)


def test_ablating_an_inactive_feature_changes_nothing(model: GPT) -> None:
    torch.manual_seed(5)
    sae = SAE(SAEConfig(d_in=64, n_latents=256, k=4), HOOK).eval()
    ids = _ids(24)
    z = sae.encode(_acts(model, ids))[0]  # (T, n)
    inactive = int((z.max(0).values == 0).nonzero()[0])
    active = int(z.max(0).values.argmax())
    clean = _logits(model, ids)
    off = _logits(model, ids, ablate_feature_edit(sae, inactive))
    on = _logits(model, ids, ablate_feature_edit(sae, active))
    with torch.no_grad():
        rec = Recorder([HOOK])
        model(ids, rec=rec, edit=ablate_feature_edit(sae, active))
    assert torch.equal(clean, off)
    assert not torch.equal(clean, on)
    want = _acts(model, ids) - z[:, active:active + 1] * sae.W_dec[active]  # its contribution, subtracted
    assert torch.allclose(rec[HOOK][0], want, atol=1e-6)
    with pytest.raises(SAEError, match="features 0..255"):
        ablate_feature_edit(sae, 256)


def test_steering_adds_alpha_times_the_direction(model: GPT) -> None:
    torch.manual_seed(6)
    sae = SAE(SAEConfig(d_in=64, n_latents=128, k=4), HOOK).eval()
    ids = _ids(12)
    rec = Recorder([HOOK])
    with torch.no_grad():
        model(ids, rec=rec, edit=steer_feature_edit(sae, 9, 4.0))
    v = feature_direction(sae, 9)
    assert abs(float(v.norm()) - 1) < 1e-6
    assert torch.allclose(rec[HOOK], _acts(model, ids) + 4.0 * v, atol=1e-5)
    assert not steer_feature_edit(sae, 9, 0.0)  # alpha 0: no edit at all
    assert ablate_feature_edit(sae, 9).description == "1 SAE feature ablated"


def test_hook_acts_equal_the_recorder(model: GPT) -> None:
    from trainers.train_sae import hook_acts

    ids = torch.cat([_ids(32, 1), _ids(32, 2)])
    for hook in ("blocks.0.hook_resid_mid", HOOK, "blocks.1.hook_mlp_out"):
        rec = Recorder([hook])
        with torch.no_grad():
            model(ids, rec=rec)
        assert torch.equal(hook_acts(model, ids, hook), rec[hook].reshape(-1, 64))


def test_feature_index_against_direct_computation(tmp_path, model: GPT) -> None:
    from gpt.sae_index import CTX_BEFORE, build_index, load_index, save_index

    torch.manual_seed(7)
    sae = SAE(SAEConfig(d_in=64, n_latents=96, k=6), HOOK).eval()
    ids = torch.randint(0, 65, (10, 32), generator=torch.Generator().manual_seed(8))
    idx = build_index(model, sae, ids, top=4)
    z = sae.encode(_acts(model, ids))  # (10, 32, 96)
    flat = z.reshape(-1, 96)
    assert torch.allclose(idx.freq, (flat > 0).float().mean(0))
    assert torch.allclose(idx.max_act, flat.max(0).values.clamp_min(0))
    assert torch.equal(idx.hist.sum(1), (flat > 0).sum(0))
    f = int(idx.freq.argmax())
    peaks = z[:, :, f].max(1).values  # (10,): each window's peak
    assert torch.allclose(z[idx.top_win[f], idx.top_pos[f], f], peaks.topk(4).values)
    toks, acts, p = idx.example(f, 0)
    w, pos = int(idx.top_win[f, 0]), int(idx.top_pos[f, 0])
    lo = max(0, pos - CTX_BEFORE)
    assert toks == ids[w, lo:lo + len(toks)].tolist() and p == pos - lo
    assert torch.allclose(torch.tensor(acts), z[w, lo:lo + len(toks), f], atol=1e-2)  # fp16 storage
    save_index(tmp_path, idx)
    back = load_index(tmp_path)
    assert torch.equal(back.top_win, idx.top_win) and torch.equal(back.hist, idx.hist)
    assert load_index(tmp_path / "none") is None


def test_feature_direction_as_a_steering_vector(model: GPT) -> None:
    steering = pytest.importorskip("gpt.steering")
    sae = SAE(SAEConfig(d_in=64, n_latents=128, k=4), HOOK)
    sv = steering.from_vector(model, feature_direction(sae, 3), 1, "resid_post", "SAE feature 3")
    assert torch.equal(sv.vector, sae.W_dec[3].detach())
