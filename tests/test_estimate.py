"""trainers/estimate.py: parameter counts against the model itself, FLOPs, memory, the time sum
against a walk of the trainer's loop, and the measured step. The estimate against real runs, and
the trainer's ETA against the real end of its run, are behaviour tests at the end (slow)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
import torch

from gpt.config import GPTConfig
from gpt.model import GPT
from trainers import estimate as te
from trainers import runs
from trainers.engine import Engine
from trainers.steptimer import StepTimer
from trainers.trainer import ETA_WARMUP, Callbacks, Trainer
from trainers.config import TrainConfig, check_config, is_snapshot_iter
from trainers.machine import default_threads


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", {}), ("cpu-small", {}), ("tiny", {"bias": False}), ("baby", {"vocab_size": 50257}),
    ("tiny", {"n_layer": 3, "n_head": 4, "n_embd": 48, "block_size": 17, "vocab_size": 2}),
])
def test_n_params_matches_the_model(preset: str, overrides: dict) -> None:
    cfg = GPTConfig.preset(preset, **overrides)
    assert te.n_params(cfg) == GPT(cfg).get_num_params(non_embedding=False)  # counted by torch


@pytest.mark.parametrize("preset, bias", [("tiny", True), ("cpu-small", True), ("tiny", False)])
def test_n_params_matches_the_model_with_vocab_77(preset: str, bias: bool) -> None:
    cfg = GPTConfig.preset(preset, vocab_size=77, bias=bias)
    assert te.n_params(cfg) == GPT(cfg).get_num_params(non_embedding=False)


def test_flops_scale_with_width_depth_and_context() -> None:
    base = GPTConfig.preset("tiny", vocab_size=65)
    f = te.flops_per_token(base)
    n = te.n_params(base) - base.block_size * base.n_embd  # position embeddings cost no FLOPs
    assert f == 6 * n + 6 * base.n_layer * base.block_size * base.n_embd
    deeper = GPTConfig.preset("tiny", vocab_size=65, n_layer=2 * base.n_layer)
    assert te.flops_per_token(deeper) > f
    # each extra layer adds the same work: 6 * (its params + its attention over T)
    deeper3 = GPTConfig.preset("tiny", vocab_size=65, n_layer=3 * base.n_layer)
    assert te.flops_per_token(deeper3) - te.flops_per_token(deeper) == pytest.approx(te.flops_per_token(deeper) - f)
    longer = GPTConfig.preset("tiny", vocab_size=65, block_size=4 * base.block_size)
    assert te.flops_per_token(longer) - f == 6 * base.n_layer * 3 * base.block_size * base.n_embd


def simulated_seconds(start: int, max_iters: int, eval_interval: int, iter_s: float, eval_s: float,
                      snap_s: float) -> float:
    """The reference: walk the trainer's loop (trainers/trainer.py _loop) iteration by iteration,
    paying an eval where _eval_due says, a snapshot where is_snapshot_iter (or the end) says, and
    a step until max_iters."""
    total = 0.0
    for it in range(start, max_iters + 1):
        if it % eval_interval == 0 or it == max_iters:
            total += eval_s
        if is_snapshot_iter(it) or it == max_iters:
            total += snap_s
        if it < max_iters:
            total += iter_s
    return total


@pytest.mark.parametrize("start, max_iters, every", [
    (0, 200, 50), (0, 2000, 250), (0, 300, 250), (1, 300, 250), (11, 300, 250), (250, 300, 250),
    (251, 300, 250), (300, 300, 250), (0, 1, 1), (0, 7, 3), (4, 7, 3), (0, 12345, 100), (999, 26000, 1000),
])
def test_remaining_seconds_walks_the_trainers_loop(start: int, max_iters: int, every: int) -> None:
    got = te.remaining_seconds(start, max_iters, every, iter_s=0.01, eval_round_s=1.0, snapshot_s=0.1)
    assert got == pytest.approx(simulated_seconds(start, max_iters, every, 0.01, 1.0, 0.1))
    assert te.remaining_seconds(max_iters + 1, max_iters, every, 0.01, 1.0, 0.1) == 0.0


def cost(**kw) -> te.StepCost:
    base = dict(micro_s=0.2, opt_s=0.01, eval_s=0.07, save_s=0.09, startup_s=5.0, steps=8, rows=12,
                batch_size=12, threads=1, device="cpu")
    return te.StepCost(**{**base, **kw})


def test_estimate_adds_up_the_measured_pieces() -> None:
    train = TrainConfig.from_preset("cpu-small", data="shakespeare", max_iters=300)
    c = cost()
    est = te.estimate_run(train, c)
    iter_s = c.micro_s + c.opt_s
    eval_s = 2 * train.eval_iters * c.eval_s + c.save_s * 4 / 3  # both splits, latest/ and best/
    want = c.startup_s + simulated_seconds(0, 300, train.eval_interval, iter_s, eval_s, c.save_s / 3)
    assert est.seconds == pytest.approx(want)
    assert est.startup_seconds == c.startup_s and est.eval_seconds == pytest.approx(want - c.startup_s - 300 * iter_s)
    assert est.tokens == 300 * 12 * 64 and est.tokens_per_s == pytest.approx(12 * 64 / iter_s)
    accum = te.estimate_run(TrainConfig.from_preset("cpu-small", data="shakespeare", max_iters=300, grad_accum=4), c)
    assert accum.seconds - est.seconds == pytest.approx(300 * 3 * c.micro_s)  # 4 micro steps, one AdamW step
    no_snaps = te.estimate_run(TrainConfig.from_preset("cpu-small", data="shakespeare", max_iters=300,
                                                       snapshots=False), c)
    assert est.seconds - no_snaps.seconds == pytest.approx(te.snapshot_iters(0, 300) * c.save_s / 3)
    assert te.snapshot_iters(0, 300) == 7  # 0, 10, 25, 50, 100, 250 and the last
    bare = te.estimate_run(train, None)  # not timed: size and memory only
    assert bare.seconds is None and bare.params == est.params and bare.memory_bytes == est.memory_bytes


def test_bigger_models_cost_more() -> None:
    small, big = TrainConfig.from_preset("tiny"), TrainConfig.from_preset("tiny", n_layer=8, n_embd=128)
    e1 = te.estimate(small.model_config(65), small, None)
    e2 = te.estimate(big.model_config(65), big, None)
    assert e1.tokens == small.max_iters * small.batch_size * 32
    assert e2.params > e1.params and e2.memory_bytes > e1.memory_bytes
    assert e2.memory_bytes == sum(te.estimate_memory(big.model_config(65), big.batch_size))


def test_estimate_run_guesses_the_vocabulary() -> None:
    char = TrainConfig.from_preset("tiny", data="shakespeare")
    assert te.guess_vocab(char) == 65 and te.guess_vocab(TrainConfig.from_preset("tiny", data="x.txt")) == 100
    bpe = TrainConfig.from_preset("tiny", data="shakespeare", tokenizer="gpt2")
    assert te.guess_vocab(bpe) == te.GPT2_VOCAB
    assert te.estimate_run(bpe, None).params == te.n_params(bpe.model_config(te.GPT2_VOCAB))
    assert te.estimate_run(bpe, None).params > te.estimate_run(char, None).params
    assert te.guess_vocab(TrainConfig.from_preset("tiny", data="python-docs")) == 103  # what the run finds


def test_memory_counts_weights_grads_and_adam_state() -> None:
    cfg = GPTConfig.preset("tiny")
    p_bytes, a_bytes = te.estimate_memory(cfg, batch_size=8)
    assert p_bytes == 16 * te.n_params(cfg)  # 4 fp32 copies
    assert te.estimate_memory(cfg, batch_size=16)[1] == 2 * a_bytes  # activations grow with the batch
    # check_config refuses what this says will not fit
    with pytest.raises(ValueError, match="will not fit"):
        check_config(TrainConfig.from_preset("tiny", n_layer=400, n_embd=8192, n_head=64, device="cpu"))


# -- the measured step ---------------------------------------------------------------------------------
def test_measure_step_times_the_trainers_own_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = Engine.micro_step
    monkeypatch.setattr(Engine, "micro_step", lambda self, X, *a: calls.append(X.size(0)) or real(self, X, *a))
    before = torch.get_num_threads()
    c = te.measure_step(GPTConfig.preset("tiny", vocab_size=65), batch_size=6, threads=1, budget_s=0.2)
    assert torch.get_num_threads() == before  # the caller's threads are given back
    assert c.threads == 1 and c.device == "cpu" and c.rows == c.batch_size == 6 and c.startup_s == 0.0
    assert te.MIN_STEPS <= c.steps <= te.MAX_STEPS
    assert calls == [4, 6] + [6] * c.steps  # the probe and a warm-up, then the timed steps, in the Engine
    for v in (c.micro_s, c.opt_s, c.eval_s, c.save_s):
        assert 0 < v < 60


def test_measure_step_scales_a_batch_too_slow_to_time() -> None:
    """With no time to spare, the batch is timed at PROBE_BATCH rows and scaled by rows."""
    c = te.measure_step(GPTConfig.preset("tiny", vocab_size=65), batch_size=16, threads=1, budget_s=0.0)
    assert (c.rows, c.batch_size, c.steps) == (te.PROBE_BATCH, 16, te.MIN_STEPS)


def test_step_timer_says_why_it_failed() -> None:
    timer = StepTimer()
    try:
        with pytest.raises(RuntimeError, match="timing the step failed: RuntimeError: .*nonsense"):
            timer.measure(GPTConfig.preset("tiny"), batch_size=2, threads=1, device="nonsense")
        c = timer.measure(GPTConfig.preset("tiny", vocab_size=65), batch_size=2, threads=1)  # it goes on
        assert c.startup_s > 0 and c.rows == 2  # the worker's own start: what a run's process pays
    finally:
        timer.close()


# -- behaviour: the estimate and the ETA against real runs ---------------------------------------------
def real_run_seconds(cfg: TrainConfig, root: Path) -> float:
    """Wall seconds from runs.start (the Train page's Start button) until the run says finished."""
    t0 = time.perf_counter()
    name = runs.start(cfg, root)
    while (st := runs.status(name, root))["state"] in runs.LIVE_STATES:
        assert time.perf_counter() - t0 < 600, st
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    assert st["state"] == "finished", (st, (root / name / "train.log").read_text()[-2000:])
    while st.get("pid") and runs.pid_alive(st["pid"]):  # the process exits right after
        time.sleep(0.05)
    return seconds


@pytest.mark.slow
@pytest.mark.parametrize("preset, iters", [("tiny", 200), ("cpu-small", 60)])
def test_estimate_is_within_1_5x_of_a_real_run(preset: str, iters: int, tmp_path: Path) -> None:
    """The Train page's promise (issue 12: it was 4-18x too long): its time is within 1.5x of
    what the run then takes. A behaviour test, not a speed test: both sides are measured here,
    the estimate first (a fresh step timer, so its process start is timed too, in the same
    conditions as the run right after it), and only their ratio is asserted, which a loaded
    machine slows alike. The run is started as the page starts it (a detached process on
    default_threads(), 1 here). A load spike that hits only one side (the process start is one
    sample of each) gets one more try of both sides; the second must hold."""
    cfg = TrainConfig.from_preset(preset, data="python-docs", max_iters=iters)
    tries = []
    for attempt in range(2):
        timer = StepTimer()
        try:
            cost = timer.measure(te.run_model_config(cfg), cfg.batch_size, threads=default_threads())
        finally:
            timer.close()
        est = te.estimate_run(cfg, cost)
        real = real_run_seconds(cfg, tmp_path / str(attempt))
        tries.append((est.seconds, real, cost))
        if 1 / 1.5 <= est.seconds / real <= 1.5:
            break
    assert 1 / 1.5 <= est.seconds / real <= 1.5, tries


@pytest.mark.slow
def test_eta_comes_from_the_runs_measured_rate(tmp_path: Path) -> None:
    """status.json's eta_s: None for the first steps (issue 12: iteration 1 said 8 min 34 s for a
    53 s run, the setup and the first eval counted as steps), then the run's own measured step
    and eval times. Behaviour: the ETAs written in the first 70% of the run are within 1.5x (their
    median; each from iteration 21 on within 2x) of the time the run really had left, on the same
    clock. cpu-small's shape, so that the first ETA rests on half a second of steps rather than on
    a few milliseconds that a burst of load on a shared machine can double."""
    writes: list[tuple[float, dict]] = []

    class Recording(Trainer):
        def _write_status(self, state=None, last=False, **fields):
            super()._write_status(state, last, **fields)
            writes.append((time.perf_counter(), dict(self.status)))

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI does for a run on 1 thread
    cfg = TrainConfig.from_preset("cpu-small", data="python-docs", name="eta", root=str(tmp_path), max_iters=150,
                                  eval_interval=50, eval_iters=10, device="cpu", threads=1)
    try:
        assert Recording(cfg, callbacks=Callbacks(on_message=lambda _m: None)).fit()["state"] == "finished"
    finally:
        torch.set_num_threads(before)
    t_end = writes[-1][0]
    running = [(t, s) for t, s in writes if s["state"] == "running" and s.get("tokens_per_s") is not None]
    assert running[0][1]["iter"] == 1 and running[0][1]["eta_s"] is None  # not measured yet
    assert all(s["eta_s"] is not None for _, s in running if s["iter"] > ETA_WARMUP)
    ratios = {s["iter"]: s["eta_s"] / (t_end - t) for t, s in running if ETA_WARMUP < s["iter"] <= 0.7 * 150}
    assert len(ratios) >= 10
    assert 1 / 1.5 <= statistics.median(ratios.values()) <= 1.5, ratios
    assert all(1 / 2 <= r <= 2 for it, r in ratios.items() if it >= 21), ratios


def test_vocab_guess_matches_each_offline_corpus() -> None:
    """Each named corpus's guess equals the character set its run finds (shakespeare ones need the
    text beside the checkout; without it those are skipped, python-docs always runs)."""
    from trainers import data

    checked = 0
    for name in data.CORPORA:
        if name.startswith("shakespeare") and data._cached_shakespeare() is None:
            continue  # Tiny Shakespeare absent (CI's clean clone): never download in a test
        text, source = data.load_text(name, log=lambda _m: None)
        assert source["name"] == name
        assert te.guess_vocab(TrainConfig.from_preset("tiny", data=name)) == len(set(text)), name
        checked += 1
    assert checked >= 1  # python-docs ships with Python
