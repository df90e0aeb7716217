"""Recorder: every recorded value satisfies its definition, compact storage gives the same values,
names/globs behave, and the byte estimate is exact."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gpt.config import GPTConfig
from gpt.kv_cache import KVCache
from gpt.model import GPT
from gpt.record import Recorder

torch.set_num_threads(1)
B, T = 2, 12


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny")).eval()
    with torch.no_grad():  # non-trivial biases and gains, so that forgetting one shows
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module")
def idx(model: GPT) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def record(model: GPT, idx: torch.Tensor, names=None, **kw) -> tuple[Recorder, torch.Tensor]:
    rec = Recorder(names, **kw)
    with torch.no_grad():
        logits, _ = model(idx, rec=rec)
    return rec, logits


@pytest.fixture(scope="module")
def full(model: GPT, idx: torch.Tensor) -> Recorder:
    everything = ["*", "blocks.*.attn.hook_result"]
    return record(model, idx, everything, compact=False)[0]


def test_recording_keeps_the_fast_paths_logits(model: GPT, idx: torch.Tensor) -> None:
    with torch.no_grad():
        fast, _ = model(idx, idx)
    _, rec_all = record(model, idx)  # manual attention everywhere
    torch.testing.assert_close(rec_all, fast, atol=1e-5, rtol=0)
    _, rec_resid = record(model, idx, ["blocks.*.hook_resid_pre"])  # fast attention, recorded
    torch.testing.assert_close(rec_resid, fast, atol=1e-6, rtol=0)


def test_shapes_are_transformerlens(full: Recorder, model: GPT) -> None:
    cfg = model.config
    C, H, D, V = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.vocab_size
    expected = {"hook_embed": (B, T, C), "hook_pos_embed": (B, T, C),
                "ln_final.hook_normalized": (B, T, C), "logits": (B, T, V)}
    per_block = {"hook_resid_pre": (B, T, C), "ln1.hook_normalized": (B, T, C), "attn.hook_q": (B, T, H, D),
                 "attn.hook_k": (B, T, H, D), "attn.hook_v": (B, T, H, D), "attn.hook_attn_scores": (B, H, T, T),
                 "attn.hook_pattern": (B, H, T, T), "attn.hook_z": (B, T, H, D), "attn.hook_result": (B, T, H, C),
                 "hook_attn_out": (B, T, C), "hook_resid_mid": (B, T, C), "ln2.hook_normalized": (B, T, C),
                 "mlp.hook_pre": (B, T, 4 * C), "mlp.hook_post": (B, T, 4 * C), "hook_mlp_out": (B, T, C),
                 "hook_resid_post": (B, T, C)}
    for i in range(cfg.n_layer):
        expected.update({f"blocks.{i}.{k}": v for k, v in per_block.items()})
    assert set(full.names()) == set(expected)
    for name, shape in expected.items():
        assert tuple(full[name].shape) == shape, name


def ln(x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)


def test_every_value_satisfies_its_definition(full: Recorder, model: GPT, idx: torch.Tensor) -> None:
    cfg = model.config
    L, D = cfg.n_layer, cfg.head_dim
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # noqa: E731
    above = torch.ones(T, T).triu(1).bool()
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    with torch.no_grad():
        close(full["hook_embed"], wte[idx])
        close(full["hook_pos_embed"], wpe[:T].expand(B, T, -1))
        close(full["blocks.0.hook_resid_pre"], full["hook_embed"] + full["hook_pos_embed"])
        for i in range(L):
            p, blk = f"blocks.{i}.", model.transformer.h[i]
            pre = full[p + "hook_resid_pre"]
            close(full[p + "ln1.hook_normalized"], ln(pre))
            qkv = blk.attn.c_attn(ln(pre) * blk.ln_1.weight + blk.ln_1.bias)  # (B, T, 3C)
            q, k, v = (t.view(B, T, cfg.n_head, D) for t in qkv.split(cfg.n_embd, dim=2))
            close(full[p + "attn.hook_q"], q)
            close(full[p + "attn.hook_k"], k)
            close(full[p + "attn.hook_v"], v)
            scores = full[p + "attn.hook_attn_scores"]
            close(scores.masked_fill(above, 0), (torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)).masked_fill(above, 0))
            assert torch.all(scores[..., above] == float("-inf")) and torch.isfinite(scores[..., ~above]).all()
            pattern = full[p + "attn.hook_pattern"]
            close(pattern.sum(-1), torch.ones(B, cfg.n_head, T))
            assert torch.all(pattern[..., above] == 0)
            close(full[p + "attn.hook_z"], torch.einsum("bhqk,bkhd->bqhd", pattern, v))
            attn_out = full[p + "hook_attn_out"]
            close(full[p + "attn.hook_result"].sum(2) + blk.attn.c_proj.bias, attn_out)
            close(full[p + "hook_resid_mid"], pre + attn_out)
            mid = full[p + "hook_resid_mid"]
            close(full[p + "ln2.hook_normalized"], ln(mid))
            close(full[p + "mlp.hook_pre"], blk.mlp.c_fc(ln(mid) * blk.ln_2.weight + blk.ln_2.bias))
            close(full[p + "mlp.hook_post"], F.gelu(full[p + "mlp.hook_pre"]))
            close(full[p + "hook_mlp_out"], blk.mlp.c_proj(full[p + "mlp.hook_post"]))
            close(full[p + "hook_resid_post"], mid + full[p + "hook_mlp_out"])
            if i + 1 < L:
                assert torch.equal(full[p + "hook_resid_post"], full[f"blocks.{i + 1}.hook_resid_pre"])
        last = full[f"blocks.{L - 1}.hook_resid_post"]
        close(full["ln_final.hook_normalized"], ln(last))
        ln_f = model.transformer.ln_f
        close((full["ln_final.hook_normalized"] * ln_f.weight + ln_f.bias) @ model.lm_head.weight.t(), full["logits"])


def test_compact_gives_the_same_values(full: Recorder, model: GPT, idx: torch.Tensor) -> None:
    compact, _ = record(model, idx, ["*", "blocks.*.attn.hook_result"], compact=True)
    assert compact.names() == full.names()
    assert compact.stored_bytes() < full.stored_bytes()
    for name in full.names():
        torch.testing.assert_close(compact[name], full[name], atol=1e-6, rtol=1e-6, msg=name)
    half, _ = record(model, idx, ["*", "blocks.*.attn.hook_result"], compact=True, dtype=torch.float16)
    for name in full.names():
        assert half[name].dtype == torch.float16, name
        ref = full[name]
        scale = ref[torch.isfinite(ref)].abs().max().item()
        torch.testing.assert_close(half[name].float(), ref, atol=4e-3 * max(scale, 1.0), rtol=4e-3, msg=name)


def test_globs_and_unknown_names(model: GPT, idx: torch.Tensor) -> None:
    rec, _ = record(model, idx, ["blocks.*.attn.hook_pattern"])
    assert rec.names() == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert "blocks.0.attn.hook_pattern" in rec and "logits" not in rec
    with pytest.raises(KeyError, match="was not recorded"):
        rec["logits"]
    rec, _ = record(model, idx, ["blocks.1.*", "logits"])
    assert all(n.startswith("blocks.1.") or n == "logits" for n in rec.names())
    assert len(rec.names()) == 16  # every block-1 site but hook_result, plus logits
    with pytest.raises(ValueError, match="matches nothing"):
        Recorder(["blocks.0.attn.hook_patern"]).begin(model.config)
    with pytest.raises(ValueError, match="matches nothing"):
        record(model, idx, ["blocks.7.hook_resid_pre"])
    with pytest.raises(KeyError, match="nothing recorded yet"):
        Recorder()["logits"]


def test_hook_result_only_when_named(model: GPT, idx: torch.Tensor) -> None:
    assert not [n for n in record(model, idx)[0].names() if "hook_result" in n]
    assert not [n for n in record(model, idx, ["blocks.*"])[0].names() if "hook_result" in n]
    rec, _ = record(model, idx, ["blocks.0.attn.hook_result"])
    assert rec.names() == ["blocks.0.attn.hook_result"]
    assert [n for n in record(model, idx, ["*hook_result"])[0].names()] == [
        "blocks.0.attn.hook_result", "blocks.1.attn.hook_result"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("names", [None, ["blocks.*.attn.*", "logits"], ["*", "*hook_result"]])
def test_estimate_bytes_is_exact(model: GPT, idx: torch.Tensor, dtype, compact, names) -> None:
    rec, _ = record(model, idx, names, dtype=dtype, compact=compact)
    assert Recorder.estimate_bytes(model.config, T, names, dtype=dtype, compact=compact, batch=B) == rec.stored_bytes()


def test_gpt2_trace_fits_half_a_gib() -> None:
    cfg = GPTConfig.preset("gpt2")
    est = Recorder.estimate_bytes(cfg, 1024, dtype=torch.float16, compact=True)
    assert est <= 0.5 * 2**30
    assert Recorder.estimate_bytes(cfg, 1024, dtype=torch.float32, compact=False) > 2 * est


def test_recording_with_a_kv_cache(model: GPT, idx: torch.Tensor) -> None:
    """Cached forwards record the new query rows against every key so far, and match a full run."""
    full_rec, _ = record(model, idx[:1], ["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"])
    cache = KVCache.for_model(model)
    rec = Recorder(["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"])
    with torch.no_grad():
        model(idx[:1, :8], kv_cache=cache)
        model(idx[:1, 8:], kv_cache=cache, rec=rec)
    for i in range(model.config.n_layer):
        pat = rec[f"blocks.{i}.attn.hook_pattern"]
        assert pat.shape == (1, model.config.n_head, T - 8, T)
        torch.testing.assert_close(pat, full_rec[f"blocks.{i}.attn.hook_pattern"][:, :, 8:], atol=1e-6, rtol=0)
        torch.testing.assert_close(rec[f"blocks.{i}.hook_resid_post"],
                                   full_rec[f"blocks.{i}.hook_resid_post"][:, 8:], atol=1e-5, rtol=0)
