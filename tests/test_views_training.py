"""app/views/training.py: estimates, downsampling, the loss figure, progress and the runs table."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from app.views import training as tv
from gpt.config import GPTConfig
from gpt.model import GPT
from trainers.config import PRESETS, TrainConfig, estimate_memory


@pytest.mark.parametrize("preset, bias", [("tiny", True), ("cpu-small", True), ("tiny", False)])
def test_n_params_matches_the_model(preset: str, bias: bool) -> None:
    cfg = GPTConfig.preset(preset, vocab_size=77, bias=bias)
    assert tv.n_params(cfg) == GPT(cfg).get_num_params(non_embedding=False)


def test_preset_values_fill_shape_from_the_model_preset() -> None:
    v = tv.preset_values("tiny")
    assert [f for f, _, _ in tv.FIELDS] == list(v)
    assert (v["n_layer"], v["n_head"], v["n_embd"], v["block_size"]) == (2, 2, 64, 32)
    assert v["max_iters"] == PRESETS["tiny"].max_iters and isinstance(v["learning_rate"], float)
    assert tv.preset_values("baby")["dropout"] == 0.2


def test_estimate_scales_with_the_model() -> None:
    small, big = TrainConfig.from_preset("tiny"), TrainConfig.from_preset("tiny", n_layer=8, n_embd=128)
    e1 = tv.estimate(small.model_config(65), small, ref_tps=10_000)
    e2 = tv.estimate(big.model_config(65), big, ref_tps=10_000)
    assert e1.tokens == small.max_iters * small.batch_size * 32
    # the reference config at the reference speed trains at that speed
    assert e1.tokens_per_s == pytest.approx(10_000 * tv.flops_per_token(GPTConfig.preset("tiny"))
                                            / tv.flops_per_token(small.model_config(65)))
    assert e1.seconds >= e1.tokens / e1.tokens_per_s  # eval adds time
    assert e2.params > e1.params and e2.memory_bytes > e1.memory_bytes and e2.seconds > e1.seconds
    assert e2.memory_bytes == sum(estimate_memory(big.model_config(65), big.batch_size))
    twice = TrainConfig.from_preset("tiny", max_iters=2 * small.max_iters)
    assert tv.estimate(twice.model_config(65), twice, 10_000).seconds == pytest.approx(2 * e1.seconds, rel=0.05)


def test_human_formats() -> None:
    assert tv.human_duration(12) == "12 s" and tv.human_duration(75) == "1 min 15 s"
    assert tv.human_duration(7300) == "2 h 1 min" and tv.human_duration(None) == "—"
    assert tv.human_duration(float("nan")) == "—"
    assert tv.human_bytes(512) == "512 B" and tv.human_bytes(3 * 2 ** 20) == "3.0 MiB"


@given(n=hs.integers(0, 6000), m=hs.integers(2, 2000))
@settings(max_examples=60, deadline=None)
def test_downsample_keeps_ends_order_and_budget(n: int, m: int) -> None:
    xs = list(range(n))
    ys = [math.sin(i) for i in xs]
    dx, dy = tv.downsample(xs, ys, max_points=m)
    assert len(dx) == len(dy) == min(n, m)  # the whole budget is used, never exceeded
    if n:
        assert dx[0] == 0 and dx[-1] == n - 1
    assert dx == sorted(set(dx))  # strictly increasing: no point twice
    assert all(dy[i] == math.sin(x) for i, x in enumerate(dx))  # pairs stay together
    if n <= m:
        assert dx == xs


def test_downsample_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        tv.downsample([1, 2], [1])
    with pytest.raises(ValueError):
        tv.downsample(list(range(10)), list(range(10)), max_points=1)


def rows(n_train: int, eval_every: int) -> list[dict]:
    out = []
    for it in range(n_train):
        out.append({"iter": it, "train_loss": 4.0 / (1 + it), "lr": 1e-3, "tokens_per_s": 100.0 + it})
        if it % eval_every == 0:
            out.append({"iter": it, "val_loss": 4.5 / (1 + it), "train_loss_eval": 4.2 / (1 + it)})
    out.append({"iter": n_train, "train_loss": None})  # JSON null: the first row of a run has none
    out.append({"iter": n_train, "val_loss": float("nan")})
    return out


def test_loss_series_and_figure() -> None:
    r = rows(5000, 100)
    s = tv.loss_series(r)
    assert len(s["train"][0]) == 5000 and len(s["val"][0]) == 50 and len(s["train (eval)"][0]) == 50
    fig, points = tv.loss_figure(s, max_points=1500)
    names = [t.name for t in fig.data]
    assert names == ["train loss", "train (eval) loss", "val loss"]
    assert [len(t.x) for t in fig.data] == [1500, 50, 50] and points == 1600
    assert fig.data[0].x[-1] == 4999 and fig.layout.yaxis.type == "linear"
    log_fig, _ = tv.loss_figure(s, log_y=True)
    assert log_fig.layout.yaxis.type == "log"
    empty, n = tv.loss_figure({})
    assert n == 0 and len(empty.data) == 0


def test_progress_prefers_status_and_drops_eta_when_not_going() -> None:
    going = tv.progress({"state": "running", "iter": 50, "max_iters": 200, "eta_s": 30.0,
                         "tokens_per_s": 900.0}, 149.0)
    assert (going.iter, going.max_iters, going.fraction, going.tokens_per_s, going.eta_s) == (50, 200, 0.25, 900.0, 30.0)
    stopped = tv.progress({"state": "stopped", "iter": 50, "max_iters": 200, "eta_s": 30.0}, 149.0)
    assert stopped.eta_s is None and stopped.tokens_per_s == 149.0  # the last logged figure
    fresh = tv.progress({"state": "starting"})
    assert fresh.fraction == 0.0 and fresh.tokens_per_s is None


def test_run_rows() -> None:
    now = 1_000_000.0
    table = tv.run_rows([{"name": "a", "state": "running", "iter": 10, "max_iters": 100, "val_loss": 2.345678,
                          "preset": "tiny", "data": "python-docs", "updated_ts": now - 75},
                         {"name": "b", "state": "starting"}], now=now)
    assert table[0] == {"run": "a", "state": "running", "iter": "10 / 100", "val loss": 2.3457,
                        "preset": "tiny", "data": "python-docs", "updated": "1 min 15 s ago"}
    assert table[1]["iter"] == "— / —" and table[1]["val loss"] is None and table[1]["updated"] == "—"
