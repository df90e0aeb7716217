"""Device and dtype for inspector models (issue 17, part 1): the decisions (cuda by default where
torch sees one, fp32 alone on the CPU), free memory and its cap, the memory estimate against its
parts, the refusal's words, and recordings that come back to the CPU in fp32 from a model in
another dtype (bf16 on the CPU here; on cuda where there is a GPU, else that test skips)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.tracecache import record_forward
from gpt import devices
from gpt.checkpoint import load
from gpt.record import Recorder
from gpt.weights import param_count

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "checkpoints" / "shakespeare-char"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch):
    """Pretend torch sees a GPU called "Fake GPU" with bf16 support and 8 GiB free."""
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (8 << 30, 16 << 30))


def test_decisions_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert devices.default_device() == "cpu" and devices.device_choices() == ["cpu"]
    assert devices.dtype_choices("cpu") == ["fp32"]
    assert devices.dtype_choices("cpu", allow_cpu_half=True) == ["fp32", "bf16"]
    assert devices.describe("cpu", "fp32") == "device: cpu, fp32"
    with pytest.raises(ValueError, match="only fp32 on the CPU"):
        devices.check_choice("cpu", "bf16")
    with pytest.raises(ValueError, match="not available here"):
        devices.check_choice("cuda", "fp32")


def test_decisions_with_a_gpu(cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices.default_device() == "cuda" and devices.device_choices() == ["cuda", "cpu"]
    assert devices.dtype_choices("cuda") == ["fp32", "bf16", "fp16"]
    assert devices.dtype_choices("cpu") == ["fp32"]
    assert devices.describe("cuda", "bf16") == "device: cuda (Fake GPU), bf16"
    assert devices.free_bytes("cuda") == 8 << 30
    devices.check_choice("cuda", "fp16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert devices.dtype_choices("cuda") == ["fp32", "fp16"]


def test_free_memory_and_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devices.LIMIT_ENV, raising=False)
    free = devices.free_bytes("cpu")
    assert 0 < free == devices.host_free_bytes()
    monkeypatch.setenv(devices.LIMIT_ENV, "12345")
    assert devices.free_bytes("cpu") == 12345
    monkeypatch.setenv(devices.LIMIT_ENV, str(free * 2))  # a cap above what there is changes nothing
    assert abs(devices.free_bytes("cpu") - free) < free // 10


def test_estimate_adds_up_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt.config import GPTConfig

    monkeypatch.delenv(devices.TRACE_LIMIT_ENV, raising=False)
    c = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)  # GPT-2 small
    e = devices.estimate(c, "bf16", "cuda")
    assert e.weights == 2 * param_count(c) == 2 * 124_439_808 and e.T == 1024
    assert e.trace == min(Recorder.estimate_bytes(c, 1024), devices.DEFAULT_TRACE_LIMIT)
    assert e.device_bytes == e.weights + e.work  # the trace lives on the host
    cpu = devices.estimate(c, "fp32", "cpu", T=10)
    assert cpu.weights == 4 * param_count(c) and cpu.T == 10
    assert cpu.device_bytes == cpu.weights + cpu.work + cpu.trace == cpu.weights + cpu.work + \
        Recorder.estimate_bytes(c, 10)
    assert "weights 0.23 GiB (bf16)" in e.words() and "(1024 tokens)" in e.words()


def test_refusal_says_numbers_and_what_to_do(cuda) -> None:
    from gpt.config import GPTConfig

    c = GPTConfig(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257)  # GPT-2 xl
    e = devices.estimate(c, "fp32", "cuda")
    why = devices.check_fits(e, free=4 << 30, host_free=64 << 30)
    assert why is not None and "on cuda, which has 4.00 GiB free" in why
    assert "choose bf16 or fp16" in why and f"weights {devices.gib(e.weights)} (fp32)" in why
    assert devices.check_fits(devices.estimate(c, "bf16", "cuda"), free=40 << 30, host_free=64 << 30) is None
    cpu = devices.check_fits(devices.estimate(c, "fp32", "cpu"), free=4 << 30)
    assert "choose the GPU" in cpu and "in the same memory" in cpu


def _bundled_logits(dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, Recorder]:
    model, tok, _ = load(BUNDLED, device=device, dtype=dtype)
    assert next(model.parameters()).dtype == dtype and next(model.parameters()).device.type == device
    rec = record_forward(model, tok.encode(PROMPT), ["blocks.*.attn.hook_pattern", "blocks.1.hook_resid_post",
                                                     "logits"])
    return rec["logits"], rec


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here (CI has none): the cpu case runs instead"))])
def test_recording_comes_back_to_the_cpu_in_fp32(device: str) -> None:
    """A bf16 model's recording is on the CPU in fp32 (what the views call .numpy() on) and agrees
    with the fp32 model's to bf16's precision."""
    ref, _ = _bundled_logits(torch.float32)
    got, rec = _bundled_logits(torch.bfloat16, device)
    for name in rec.names():
        assert rec[name].device.type == "cpu" and rec[name].dtype == torch.float32, name
    assert rec["blocks.0.attn.hook_pattern"].numpy().shape[-1] == len(PROMPT)
    torch.testing.assert_close(got, ref, atol=0.15, rtol=0.05)  # bf16 keeps ~3 significant digits
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
