"""trainers/shards.py: batch shards on threads against the unsplit batch (same gradients and loss),
their threads, their reproducibility, failures, when they are used, and a Trainer run with them."""
from __future__ import annotations

import threading

import pytest
import torch

from gpt.config import GPTConfig
from gpt.model import GPT
from trainers import runs
from trainers.config import TrainConfig
from trainers.shards import ThreadShards, plan
from trainers.trainer import Callbacks, Trainer


@pytest.fixture
def one_thread():
    """Shards run with one intra-op thread each, as the Trainer sets it; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shards():
    s = ThreadShards(2)
    yield s
    s.close()


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=17))


def _batch(rows: int = 5, T: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 17, (rows, T), generator=g)
    return x, torch.roll(x, -1, dims=1)


def _params(m: GPT) -> list[torch.nn.Parameter]:
    return [p for p in m.parameters() if p.requires_grad]


@pytest.mark.parametrize("n", [2, 3])
def test_sharded_gradients_match_the_whole_batch(one_thread, n: int) -> None:
    x, y = _batch(rows=5)  # 5 rows: shards of unequal size (3+2, 2+2+1) are weighted by rows
    ref, ours = _model(), _model()
    _, loss = ref(x, y)
    (loss * 0.5).backward()
    s = ThreadShards(n)
    try:
        got = s.forward_backward(ours, _params(ours), x, y, scale=0.5)
    finally:
        s.close()
    assert got.requires_grad is False
    torch.testing.assert_close(got, loss.detach() * 0.5, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(ref.named_parameters(), _params(ours)):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_gradients_accumulate_over_micro_steps(one_thread, shards) -> None:
    x, y = _batch(rows=4)
    ref, ours = _model(), _model()
    for _ in range(2):  # two micro steps of half weight, as grad accumulation does
        (ref(x, y)[1] / 2).backward()
        shards.forward_backward(ours, _params(ours), x, y, scale=0.5)
    for p, q in zip(_params(ref), _params(ours)):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_loss_matches_and_keeps_grad_mode(one_thread, shards) -> None:
    x, y = _batch(rows=6)
    m = _model().eval()
    with torch.no_grad():
        ref = m(x, y)[1]
    got = shards.loss(m, x, y)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert not got.requires_grad and torch.is_grad_enabled()


def test_shards_run_on_their_own_threads_with_one_intra_op_thread(one_thread, shards) -> None:
    seen: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    model = _model()

    class Spy(torch.nn.Module):  # records where each shard's forward ran
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x, y):
            with lock:
                seen.append((threading.get_ident(), torch.get_num_threads(), x.size(0)))
            return self.inner(x, y)

    x, y = _batch(rows=6)
    shards.forward_backward(Spy(), _params(model), x, y)
    assert len(seen) == 2 and len({t for t, _, _ in seen}) == 2
    assert threading.get_ident() in {t for t, _, _ in seen}  # shard 0 on the caller
    assert [n for _, n, _ in seen] == [1, 1] and sorted(r for _, _, r in seen) == [3, 3]


def test_shard_threads_use_the_thread_count_set_for_them(shards) -> None:
    """Threads per shard (plan's second number) reach the pool's threads: OpenMP's count is per
    thread, and torch gives a new thread the count last set."""
    seen: list[int] = []
    model = _model()

    class Spy(torch.nn.Module):
        def forward(self, x, y):
            seen.append(torch.get_num_threads())
            return model(x, y)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = _batch(rows=4)
        shards.forward_backward(Spy(), _params(model), x, y)
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 2]


def test_same_batch_gives_bitwise_same_gradients(one_thread, shards) -> None:
    x, y = _batch(rows=6)
    grads = []
    for _ in range(3):
        m = _model()
        shards.forward_backward(m, _params(m), x, y)
        grads.append([p.grad.clone() for p in _params(m)])
    for g in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], g))


def test_a_failing_shard_raises_after_every_shard_is_done(one_thread, shards) -> None:
    done: list[int] = []
    model = _model()

    class Boom(torch.nn.Module):
        def forward(self, x, y):
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("shard blew up")
            out = model(x, y)
            done.append(x.size(0))
            return out

    x, y = _batch(rows=4)
    with pytest.raises(RuntimeError, match="shard blew up"):
        shards.forward_backward(Boom(), _params(model), x, y)
    assert done == [2]
    model.zero_grad(set_to_none=True)  # the pool still works after a failure
    shards.forward_backward(model, _params(model), x, y)
    assert all(p.grad is not None for p in _params(model))


def test_plan_says_when_and_why_not() -> None:
    base = dict(threads=2, batch_size=12, device_type="cpu", ddp=False, compile=False, dropout=0.0)
    assert plan(**base) == (2, 1, "")
    assert plan(**{**base, "threads": 8}) == (2, 4, "")  # two shards, each op on 4 threads
    assert plan(**{**base, "threads": 1}) == (1, 1, "")
    assert plan(**{**base, "device_type": "cuda"}) == (1, 2, "")
    assert plan(**base, enabled=False) == (1, 2, "--no-cpu-shards")
    for change, word in (({"ddp": True}, "DDP"), ({"compile": True}, "--compile"),
                         ({"dropout": 0.1}, "dropout"), ({"batch_size": 1}, "one row"),
                         ({"threads": 3}, "odd")):
        n, per, why = plan(**{**base, **change})
        assert n == 1 and per == change.get("threads", 2) and word in why


def test_thread_shards_needs_two() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        ThreadShards(1)


def test_trainer_with_shards_matches_split_ops_and_restores_threads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    lines: list[str] = []
    out = {}
    try:
        for name, on in (("split-batch", True), ("split-ops", False)):
            cfg = TrainConfig.from_preset("tiny", data="python-docs", name=name, root=str(tmp_path),
                                          max_iters=12, eval_interval=6, eval_iters=2,
                                          log_interval=3, device="cpu", cpu_shards=on,
                                          snapshots=False)
            st = Trainer(cfg, callbacks=Callbacks(on_message=lines.append)).fit()
            assert st["state"] == "finished" and torch.get_num_threads() == 2
            out[name] = runs.read_metrics(tmp_path / name)
    finally:
        torch.set_num_threads(before)
    assert "batch split in 2 shards (1 thread each)" in lines[0]
    assert "threads split each op (--no-cpu-shards)" in next(ln for ln in lines[1:] if ln.startswith("device:"))
    a, b = out["split-batch"], out["split-ops"]
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "train_loss_eval"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], abs=2e-4), (ra["iter"], k)


@pytest.mark.parametrize("on", [True, False])
def test_cli_flag_round_trips_through_runs_argv(on: bool) -> None:
    from trainers.runs import to_argv
    from trainers.train import build_parser

    cfg = TrainConfig.from_preset("cpu-small", name="x", cpu_shards=on)
    argv = to_argv(cfg)
    assert ("--no-cpu-shards" in argv) is (not on)
    args = build_parser().parse_args(argv)
    assert args.cpu_shards is (None if on else False)  # None: the preset's default, True
    assert TrainConfig.from_preset("cpu-small", cpu_shards=args.cpu_shards).cpu_shards is on
