"""trainers/step.py: the deferred step against the plain one (clip_grad_norm_ + AdamW.step), and
the on-device skip of non-finite steps."""
from __future__ import annotations

import math

import pytest
import torch

from gpt.config import GPTConfig
from gpt.model import GPT
from trainers.step import WINDOW, DeferredStep


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=17))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randint(0, 17, (4, 16), generator=g)
    return x, torch.roll(x, -1, dims=1)


def _stepper(model: GPT, clip: float) -> DeferredStep:
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    return DeferredStep(opt, params, clip, "cpu", start=0)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_deferred_step_matches_plain_clip_and_adamw(clip: float) -> None:
    ours, ref = _model(), _model()
    step = _stepper(ours, clip)
    opt = torch.optim.AdamW([{"params": [p for p in ref.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in ref.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.99))
    for i in range(5):
        x, y = _batch(i)
        _, loss = ours(x, y)
        loss.backward()
        step.step(loss.detach(), i)
        _, loss_ref = ref(x, y)
        loss_ref.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        if name.endswith("c_attn.bias"):
            # the key bias's true gradient is 0 (softmax ignores a shift shared by all keys), so
            # Adam turns rounding noise into +-lr steps: compare the q and v thirds only
            C = a.numel() // 3
            a, b = torch.cat([a[:C], a[2 * C:]]), torch.cat([b[:C], b[2 * C:]])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    vals, bad = step.read(5)
    assert bad is None and len(vals) == 5 and all(math.isfinite(v) for v in vals)
    assert step.start == 5


def test_non_finite_step_is_skipped_and_named() -> None:
    model = _model()
    step = _stepper(model, 1.0)
    for i in range(3):
        _, loss = model(*_batch(i))
        loss.backward()
        step.step(loss.detach(), i)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(3, 6):  # iteration 3 diverges; 4 and 5 are fine again but must not step either
        _, loss = model(*_batch(i))
        loss = loss * (math.inf if i == 3 else 1.0)
        loss.backward()
        step.step(loss.detach(), i)
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), f"{k} changed after a non-finite step"
    vals, bad = step.read(6)
    assert bad == 3 and not math.isfinite(vals[3]) and math.isfinite(vals[2])


def test_window_fills_and_restarts() -> None:
    step = _stepper(_model(), 0.0)
    assert not step.full(WINDOW - 1) and step.full(WINDOW)
    step.read(10)
    assert step.start == 10 and not step.full(10 + WINDOW - 1)
