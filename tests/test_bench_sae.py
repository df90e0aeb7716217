"""bench.bench_sae's SAELens side by side, the parts that need no SAELens: the activation cache holds
exactly what trainers.train_sae trains on, in order; a weight file in the peer's format loads into
our SAE and gives a hand-computed TopK forward; bad files and a missing $SAELENS_PYTHON are said
plainly. The peer run itself (bench/saelens_peer.py) is tested only where $SAELENS_PYTHON is set."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench import bench_sae
from bench.peers import saelens_how_to_get, saelens_python
from gpt.sae import SAE, SAEError
from trainers.train_sae import SAETrainConfig, train_sae

HOOK = "blocks.1.hook_resid_post"


def _small_cfg(steps: int = 3) -> SAETrainConfig:
    return SAETrainConfig(hook=HOOK, steps=steps, batch_tokens=64, expansion=2, k=4, eval_every=100,
                          save_every=100, val_windows=2, index_windows=2)


def test_cache_holds_what_the_trainer_trains_on(tmp_path: Path, tiny_checkpoint, monkeypatch) -> None:
    run = tmp_path / "tiny-run"
    shutil.copytree(tiny_checkpoint.run_dir, run)
    cfg = _small_cfg()
    seen: list[torch.Tensor] = []
    losses = SAE.losses

    def recording(self: SAE, x: torch.Tensor, dead: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        seen.append(x.detach().clone())  # losses() is called once per training step, on that step's input
        return losses(self, x, dead)

    monkeypatch.setattr(SAE, "losses", recording)
    train_sae(run, cfg, log=lambda _m: None)
    monkeypatch.undo()
    info = bench_sae.cache_activations(run, cfg, tmp_path / "cache" / "acts.safetensors")
    acts = load_file(str(tmp_path / "cache" / "acts.safetensors"))["acts"]
    assert len(seen) == cfg.steps
    assert info["rows"] == acts.size(0) == sum(x.size(0) for x in seen)
    assert info["batch"] == seen[0].size(0) and info["d_in"] == acts.size(1) == seen[0].size(1)
    assert acts.dtype == torch.float32
    assert torch.equal(acts, torch.cat(seen))  # same windows, same order, same values
    assert not torch.equal(seen[0], seen[1])  # the steps really draw different windows


def _peer_file(path: Path, d: int = 6, n: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"W_enc": torch.randn(d, n, generator=g), "b_enc": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, d, generator=g), "b_dec": torch.randn(d, generator=g)}
    save_file(t, str(path))
    return t


def test_peer_weights_give_a_hand_computed_topk_forward(tmp_path: Path) -> None:
    t = _peer_file(tmp_path / "peer.safetensors")
    k = 3
    sae = bench_sae.sae_from_peer(tmp_path / "peer.safetensors", k)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)) * 2
    x_hat, z = sae(x)
    for i in range(x.size(0)):  # one token at a time, in plain arithmetic
        pre = [sum(float(x[i, j] - t["b_dec"][j]) * float(t["W_enc"][j, f]) for j in range(6)) + float(t["b_enc"][f])
               for f in range(10)]
        top = sorted(range(10), key=lambda f: pre[f], reverse=True)[:k]
        want_z = [max(pre[f], 0.0) if f in top else 0.0 for f in range(10)]
        want_x = [sum(want_z[f] * float(t["W_dec"][f, j]) for f in range(10)) + float(t["b_dec"][j]) for j in range(6)]
        assert z[i].tolist() == pytest.approx(want_z, abs=1e-5)
        assert x_hat[i].tolist() == pytest.approx(want_x, abs=1e-5)
    assert int((z > 0).sum(-1).max()) <= k
    assert not sae.training and not any(p.requires_grad for p in sae.parameters())


def test_bad_peer_files_are_refused_plainly(tmp_path: Path) -> None:
    with pytest.raises(SAEError, match="cannot be read.*run the SAELens peer again"):
        bench_sae.sae_from_peer(tmp_path / "missing.safetensors", 3)
    save_file({"W_enc": torch.zeros(6, 10), "b_enc": torch.zeros(10)}, str(tmp_path / "few.safetensors"))
    with pytest.raises(SAEError, match="not SAELens's W_enc"):
        bench_sae.sae_from_peer(tmp_path / "few.safetensors", 3)
    t = _peer_file(tmp_path / "odd.safetensors")
    t["W_dec"] = torch.zeros(10, 7)
    save_file(t, str(tmp_path / "odd.safetensors"))
    with pytest.raises(SAEError, match="do not agree"):
        bench_sae.sae_from_peer(tmp_path / "odd.safetensors", 3)


def test_saelens_python_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SAELENS_PYTHON", raising=False)
    assert saelens_python() is None
    assert "set SAELENS_PYTHON" in saelens_how_to_get() and "skipped" in saelens_how_to_get()
    monkeypatch.setenv("SAELENS_PYTHON", str(tmp_path / "nope" / "python"))
    assert saelens_python() is None
    assert "is not a file" in saelens_how_to_get()
    py = tmp_path / "python"
    py.write_text("")
    monkeypatch.setenv("SAELENS_PYTHON", str(py))
    assert saelens_python() == py


@pytest.mark.skipif(not os.environ.get("SAELENS_PYTHON"), reason="SAELENS_PYTHON is not set (a venv with sae-lens)")
def test_saelens_peer_weights_reproduce_its_own_reconstruction(tmp_path: Path) -> None:
    py = saelens_python()
    assert py is not None, f"SAELENS_PYTHON={os.environ['SAELENS_PYTHON']} is not a file"
    g = torch.Generator().manual_seed(0)
    d, batch, cfg = 16, 64, SAETrainConfig(hook=HOOK, steps=20, k=4)
    save_file({"acts": torch.randn(cfg.steps * batch, d, generator=g) * 3 + 1}, str(tmp_path / "acts.safetensors"))
    probe = torch.randn(128, d, generator=g) * 3 + 1
    save_file({"x": probe}, str(tmp_path / "probe.safetensors"))
    info = bench_sae.run_peer(py, tmp_path, cfg, width=32, batch=batch, log=lambda _m: None)
    assert info["steps"] == cfg.steps and info["tokens"] == cfg.steps * batch and info["k"] == 4
    sae = bench_sae.sae_from_peer(tmp_path / "peer" / "peer.safetensors", cfg.k)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)  # SAELens folded the norms
    theirs = load_file(str(tmp_path / "peer" / "recon.safetensors"))["recon"]
    assert (sae(probe)[0] - theirs).abs().max() <= bench_sae.PARITY_ATOL
