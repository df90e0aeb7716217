"""trainers.trainer and the CLI's checks, in process: schedule, reproducibility, run folder,
stop/resume with optimizer state, divergence, configs refused before anything starts (names, threads,
heads), and durations on a monotonic clock. A full disk is tests/test_disk_full.py's."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.model import GPT
from trainers import runs
from trainers.config import PRESETS, TrainConfig, check_config
from trainers.trainer import Callbacks, Trainer, get_lr, is_snapshot_iter
from trainers.train import build_parser, main, make_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


def cfg_for(root: Path, name: str, **kw) -> TrainConfig:
    base = dict(data="python-docs", name=name, root=str(root), max_iters=30, eval_interval=10,
                eval_iters=2, log_interval=5, threads=1, device="cpu")
    return TrainConfig.from_preset("tiny", **{**base, **kw})


def test_lr_schedule_is_nanogpts():
    c = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert get_lr(0, c) == pytest.approx(1e-3 / 11)
    assert get_lr(9, c) == pytest.approx(1e-3 * 10 / 11)
    assert get_lr(10, c) == pytest.approx(1e-3)  # peak right after warmup
    assert get_lr(60, c) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine midpoint
    assert get_lr(110, c) == get_lr(500, c) == pytest.approx(1e-4)
    lrs = [get_lr(i, c) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_snapshot_iterations_are_spread_out():
    assert [i for i in range(30000) if is_snapshot_iter(i)] == \
        [0, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000]


def test_snapshot_every_adds_evenly_spaced_snapshots(tmp_path):
    """--snapshot-every N keeps the spread-out snapshots and adds every multiple of N, so a phase
    change late in a run is seen at N-iteration steps; the flag reaches the config; N < 1 is refused."""
    spread = {i for i in range(6000) if is_snapshot_iter(i)}
    every = [i for i in range(6000) if is_snapshot_iter(i, 1000)]
    assert every == sorted(spread | {1000, 2000, 3000, 4000, 5000})
    st = Trainer(cfg_for(tmp_path, "dense", max_iters=14, snapshot_every=4),
                 callbacks=Callbacks(on_message=lambda m: None)).fit()
    assert st["state"] == "finished"
    assert [i for i, _ in ckpt.list_snapshots(tmp_path / "dense")] == [0, 4, 8, 10, 12, 14]  # 14: the end
    args = build_parser().parse_args(["--data", "python-docs", "--snapshot-every", "250"])
    assert make_config(args, 1, 0).snapshot_every == 250
    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"--snapshot-every must be a whole number >= 1, got {bad}"):
            check_config(cfg_for(tmp_path, "x", snapshot_every=bad))


def test_presets_follow_nanogpt():
    cs, baby = PRESETS["cpu-small"], PRESETS["baby"]
    assert (cs.n_layer, cs.n_head, cs.n_embd, cs.block_size, cs.batch_size) == (4, 4, 128, 64, 12)
    assert (cs.max_iters, cs.decay_iters, cs.eval_iters, cs.warmup_iters, cs.dropout) == (2000, 2000, 20, 100, 0.0)
    assert (baby.n_layer, baby.n_embd, baby.block_size, baby.batch_size, baby.dropout) == (6, 384, 256, 64, 0.2)
    assert (baby.eval_iters, baby.max_iters, baby.beta2, baby.learning_rate) == (200, 5000, 0.99, 1e-3)
    m = baby.model_config(65)
    assert (m.n_layer, m.n_head, m.n_embd, m.dropout) == (6, 6, 384, 0.2)


def losses(root: Path) -> list[float]:
    return [r["train_loss"] for r in runs.read_metrics(root) if "train_loss" in r]


def test_same_seed_same_losses(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        Trainer(cfg_for(tmp_path, name, seed=seed, max_iters=12, snapshots=False)).fit()
    a, b, c = (losses(tmp_path / n) for n in "abc")
    assert len(a) == 3 and a == b and a != c
    assert a[-1] < a[0]


def test_run_folder_and_callbacks(tmp_path):
    seen: dict[str, list] = {"log": [], "eval": [], "ckpt": []}
    cb = Callbacks(on_log=seen["log"].append, on_eval=seen["eval"].append,
                   on_checkpoint=seen["ckpt"].append, on_message=lambda m: None)
    st = Trainer(cfg_for(tmp_path, "r"), callbacks=cb).fit()
    d = tmp_path / "r"
    assert st["state"] == "finished" and st["iter"] == 30
    disk = json.loads((d / "status.json").read_text())
    assert disk["state"] == "finished" and {"pid", "max_iters", "message", "updated_at", "eta_s",
                                            "tokens_per_s", "threads", "device"} <= disk.keys()
    rc = json.loads((d / "config.json").read_text())
    assert rc["data"]["name"] == "python-docs" and rc["tokenizer"]["kind"] == "char"
    assert rc["model"]["vocab_size"] == len(rc["tokenizer"]["chars"]) and rc["train"]["max_iters"] == 30
    rows = runs.read_metrics(d)
    logs = [r for r in rows if "train_loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in logs] == [0, 5, 10, 15, 20, 25] and logs == seen["log"]
    assert all(set(r) == {"iter", "train_loss", "lr", "tokens_per_s", "elapsed_s"} for r in logs)
    assert [r["iter"] for r in evals] == [0, 10, 20, 30] and evals == seen["eval"]
    assert all(set(r) == {"iter", "val_loss", "train_loss_eval"} for r in evals)
    assert [i for i, _ in ckpt.list_snapshots(d)] == [0, 10, 25, 30]
    assert (d / "latest" / "optimizer.pt").is_file() and not (d / "best" / "optimizer.pt").exists()
    best = min(evals, key=lambda r: r["val_loss"])
    assert json.loads((d / "best" / "config.json").read_text())["meta"]["iter"] == best["iter"]
    model, tok, meta = ckpt.load(d)  # a run folder loads its latest model with its tokenizer
    assert meta["iter"] == 30 and tok.vocab_size == model.config.vocab_size
    assert d / "latest" in seen["ckpt"]


def test_stop_then_resume_restores_optimizer(tmp_path):
    # stop once the third log row (iter 10) is on disk: the trainer finishes that step, saves
    cb = Callbacks(should_stop=lambda: len(losses(tmp_path / "s")) >= 3, on_message=lambda m: None)
    t = Trainer(cfg_for(tmp_path, "s", max_iters=40), callbacks=cb)
    st = t.fit()
    assert st["state"] == "stopped"
    stopped_at = st["iter"]
    assert stopped_at == 12  # seen while step 11 runs (the check precedes its log row); 12 done
    assert ckpt.load(tmp_path / "s")[2]["iter"] == stopped_at  # latest written on stop
    opt = ckpt.load_optimizer_state(tmp_path / "s")
    assert int(opt["state"][0]["step"]) == stopped_at
    cfg = replace(cfg_for(tmp_path, "s"), max_iters=45)
    t2 = Trainer(cfg, resume=True, callbacks=Callbacks(on_message=lambda m: None))
    st2 = t2.fit()
    assert st2["state"] == "finished" and st2["iter"] == 45
    # Adam's step count continued from the saved state rather than restarting at 0
    assert int(t2.optimizer.state_dict()["state"][0]["step"]) == 45
    iters = [r["iter"] for r in runs.read_metrics(tmp_path / "s") if "train_loss" in r]
    assert iters == sorted(set(iters)) and iters[-1] == 40  # no duplicated rows after resume


def test_nan_loss_fails_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    orig = GPT.forward
    calls = {"train": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = orig(self, idx, targets, **kw)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 15:  # iter 15 onwards: NaN
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    st = Trainer(cfg_for(tmp_path, "n"), callbacks=Callbacks(on_message=lambda m: None)).fit()
    assert st["state"] == "failed" and st["message"].startswith("diverged at iter 15")
    disk = json.loads((tmp_path / "n" / "status.json").read_text())
    assert disk["state"] == "failed" and "diverged at iter 15" in disk["message"]
    monkeypatch.setattr(GPT, "forward", orig)
    model, _, meta = ckpt.load(tmp_path / "n")
    assert meta["iter"] == 10  # the eval at 10 was the last good checkpoint
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(v) for r in runs.read_metrics(tmp_path / "n") for v in r.values())


@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=100, n_head=3), "divisible by n_head"),
    (dict(n_layer=0), "n_layer must be positive"),
    (dict(batch_size=-1), "--batch-size must be an integer >= 1"),
    (dict(max_iters=0), "--max-iters"),
    (dict(dropout=1.5), "dropout"),
    (dict(min_lr=1.0), "--min-lr"),
    (dict(n_layer=400, n_embd=8192, n_head=64), "will not fit"),
    (dict(name="a/b"), "must not contain"),
    (dict(name=".."), "must not contain"),
    (dict(name=""), "empty"),
    (dict(name="abc\n"), "no spaces or line breaks"),  # a regex "$" matched before the final newline
    (dict(name="é" * 65), "is 130 bytes long; use at most 128 bytes"),  # 65 characters, 130 bytes
    (dict(threads=0), "--threads must be a whole number >= 1, got 0; leave it out for the default"),
    (dict(threads=-1), "--threads must be a whole number >= 1, got -1"),
])
def test_invalid_config_refused_before_anything(tmp_path, kw, match):
    cfg = cfg_for(tmp_path, "x")
    cfg = replace(cfg, **kw)
    with pytest.raises(ValueError, match=match):
        check_config(cfg)
    with pytest.raises(ValueError, match=match):
        Trainer(cfg)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_bad_input_with_message(tmp_path, capsys):
    base = ["--root", str(tmp_path), "--data", "python-docs", "--threads", "1"]
    assert main(base + ["--n-embd", "100", "--n-head", "3"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert main(base + ["--name", "../evil"]) == 2
    assert "must not contain" in capsys.readouterr().err
    assert main(base + ["--n-layer", "400", "--n-embd", "8192", "--n-head", "64"]) == 2
    assert "will not fit" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    Trainer(cfg_for(tmp_path, "exists", max_iters=1, snapshots=False),
            callbacks=Callbacks(on_message=lambda m: None)).fit()
    assert main(base + ["--name", "exists"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "--resume", "--name", "exists", "--n-layer", "3"]) == 2
    assert "drop --n-layer" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "--resume", "--name", "exists"]) == 2
    assert "--max-iters > 1" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_lr_1e6_diverges(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainers.train", "--root", str(tmp_path), "--name", "big",
                        "--data", "python-docs", "--lr", "1e6", "--max-iters", "50", "--threads", "1",
                        "--eval-iters", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    st = runs.status("big", tmp_path)
    assert st["state"] == "failed" and st["message"].startswith("diverged at iter ")
    model, _, meta = ckpt.load(tmp_path / "big")
    assert meta["iter"] == 0 and all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoints_land_where_gpt_checkpoint_layout_says(tmp_path, monkeypatch):
    """The trainer names no checkpoint folder itself: latest/, best/ and snapshots come from
    gpt.checkpoint's layout helpers (moving the layout there moves the trainer's saves)."""
    d = tmp_path / "lay"
    Trainer(cfg_for(tmp_path, "lay", max_iters=10)).fit()
    assert [p for _, p in ckpt.list_snapshots(d)] == [ckpt.snapshot_dir(d, 0), ckpt.snapshot_dir(d, 10)]
    assert ckpt.has_checkpoint(ckpt.latest_dir(d)) and ckpt.has_checkpoint(ckpt.best_dir(d))
    monkeypatch.setattr(ckpt, "snapshot_dir", lambda run, it: Path(run) / "elsewhere" / f"at{it}")
    Trainer(cfg_for(tmp_path, "moved", max_iters=10)).fit()
    assert sorted(p.name for p in (tmp_path / "moved" / "elsewhere").iterdir()) == ["at0", "at10"]
    assert not (tmp_path / "moved" / ckpt.SNAPSHOTS).exists()


def test_cli_run_trains_the_folders_config_json(tmp_path, capsys, monkeypatch):
    """`--run DIR` trains what DIR/config.json says (as trainers.runs.start writes it), refuses
    settings beside it, refuses to train a folder twice, and `--run DIR --resume` continues it."""
    from tqdm import tqdm
    monkeypatch.setattr(tqdm, "monitor_interval", 0)  # no tqdm monitor thread left behind
    d = tmp_path / "prepared"
    d.mkdir()
    cfg = cfg_for(tmp_path, "written-elsewhere", max_iters=6, eval_interval=3, snapshots=False)
    runs.write_json_atomic(d / "config.json", {"train": cfg.to_dict(), "created_at": "then"})
    assert main(["--run", str(d), "--lr", "0.5"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    assert main(["--run", str(d), "--name", "x"]) == 2
    assert "drop --name and --root" in capsys.readouterr().err
    assert main(["--run", str(d)]) == 0
    rc = json.loads((d / "config.json").read_text())
    assert rc["train"] == {**cfg.to_dict(), "name": "prepared", "root": str(tmp_path)}  # named by its folder
    assert rc["created_at"] == "then" and rc["model"]["n_layer"] == 2
    assert ckpt.load(d)[2]["iter"] == 6 and runs.status("prepared", tmp_path)["state"] == "finished"
    assert main(["--run", str(d)]) == 2
    assert "has been trained already; continue it with --run" in capsys.readouterr().err
    assert main(["--run", str(d), "--resume", "--max-iters", "9"]) == 0
    assert ckpt.load(d)[2]["iter"] == 9
    assert json.loads((d / "config.json").read_text())["train"]["max_iters"] == 9


def test_head_refusal_suggests_values_people_pick(tmp_path):
    """n_head 3 with n_embd 64 once suggested "n_embd=63"; now the nearest head counts that divide
    n_embd, and widths that give each head a power-of-two size."""
    with pytest.raises(ValueError) as e:
        check_config(cfg_for(tmp_path, "h", n_embd=64, n_head=3))
    msg = str(e.value)
    assert "must be divisible by n_head (3)" in msg and "63" not in msg
    assert "try n_head 4 or 2 with n_embd 64, or n_embd 48 or 96 with n_head 3" in msg
    with pytest.raises(ValueError, match="try n_head 6 or 4 with n_embd 384, or n_embd 320 or 640 with n_head 5"):
        check_config(cfg_for(tmp_path, "h", n_embd=384, n_head=5))
    for n_embd, n_head in ((64, 4), (96, 3), (48, 3), (384, 6)):  # what it suggests is accepted
        check_config(cfg_for(tmp_path, "h", n_embd=n_embd, n_head=n_head))


def test_cli_threads(tmp_path, capsys, monkeypatch):
    """--threads -1 and 0 are refused with a plain message (0 is not "the default": leaving the
    flag out is); more threads than cores are capped, with a warning, unless --force-threads."""
    from tqdm import tqdm

    from trainers.machine import cap_threads, cpu_cores
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    base = ["--root", str(tmp_path), "--data", "python-docs", "--device", "cpu"]
    for bad in ("-1", "0"):
        assert main(base + ["--threads", bad]) == 2
        assert f"error: --threads must be a whole number >= 1, got {bad}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    cores = cpu_cores()
    try:
        assert main(base + ["--threads", "1000", "--name", "many", "--max-iters", "1", "--eval-iters", "1"]) == 0
    finally:
        torch.set_num_threads(1)
    out = capsys.readouterr()
    assert f"warning: --threads 1000 is more than this machine's {cores} cores; using {cores}" in out.err
    assert "pass --force-threads to use 1000 anyway" in out.err
    assert f"device: cpu, {cores} thread" in out.out
    assert json.loads((tmp_path / "many" / "config.json").read_text())["train"]["threads"] == cores
    assert cap_threads(1000, world_size=2)[0] == max(1, cores // 2)
    assert cap_threads(cores) == (cores, None)
    args = build_parser().parse_args(base + ["--threads", "1000", "--force-threads"])
    assert args.force_threads and make_config(args, 1, 0).threads == 1000  # (kept: main skips the cap)


def test_durations_survive_a_clock_jump_back(tmp_path, monkeypatch):
    """The wall clock jumps back 3 hours during the run (an NTP step, a suspended laptop). Durations
    come from a monotonic clock, so no elapsed time goes negative and no tokens/s goes absurd
    (time.time() once logged tokens_per_s = 1.28e13 and kept a negative elapsed_s in meta)."""
    import time as time_mod

    real, after = time_mod.time, {"logs": 0, "calls": 0}

    def wall() -> float:  # from the 4th reading after the 2nd log row on: 3 hours earlier (mid-step)
        if after["logs"] >= 2:
            after["calls"] += 1
        return real() - (3 * 3600 if after["calls"] >= 4 else 0)

    def on_log(_row) -> None:
        after["logs"] += 1

    monkeypatch.setattr(time_mod, "time", wall)
    st = Trainer(cfg_for(tmp_path, "jump"), callbacks=Callbacks(on_log=on_log, on_message=lambda m: None)).fit()
    monkeypatch.setattr(time_mod, "time", real)
    assert st["state"] == "finished" and after["calls"] >= 4  # the clock did jump, mid-run
    rows = [r for r in runs.read_metrics(tmp_path / "jump") if "train_loss" in r]
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert all(0 < r["tokens_per_s"] < 1e8 for r in rows), [r["tokens_per_s"] for r in rows]
    assert 0 <= ckpt.load(tmp_path / "jump")[2]["elapsed_s"] < 3600
