"""A full disk while training: the failure says "could not write the checkpoint: the disk is full
(N MB free)" and names the last good checkpoint, which stays intact; the CLI exits with that line
and no traceback; the status never stays "running" (even when "failed" cannot be written either);
and the run resumes once space is freed. With a patched writer that raises ENOSPC, a torch.save
that fails mid-file as torch does ("unexpected pos"), and, where this user may mount one, a real
8 MiB tmpfs."""
from __future__ import annotations

import errno
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from trainers import runfolder, runs, runstatus
from trainers.config import TrainConfig
from trainers.runfolder import RunWriteError
from trainers.trainer import Callbacks, Trainer

REPO = Path(__file__).resolve().parents[1]
QUIET = Callbacks(on_message=lambda m: None)


@pytest.fixture(autouse=True)
def env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


def cfg_for(root: Path, name: str, **kw) -> TrainConfig:
    base = dict(data="python-docs", name=name, root=str(root), max_iters=30, eval_interval=10,
                eval_iters=2, log_interval=5, threads=1, device="cpu")
    return TrainConfig.from_preset("tiny", **{**base, **kw})


def full_after(monkeypatch, saves: int) -> dict:
    """ckpt.save raises ENOSPC for latest/ after `saves` saves (iteration 0 saves latest, best and
    a snapshot); returns a switch: state["full"] = False frees the space."""
    orig, state = ckpt.save, {"calls": 0, "full": True}

    def save(path, *a, **k):
        state["calls"] += 1
        if state["full"] and Path(path).name == "latest" and state["calls"] > saves:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return orig(path, *a, **k)

    monkeypatch.setattr(ckpt, "save", save)
    return state


def assert_intact_at(run: Path, it: int) -> None:
    assert ckpt.load(run)[2]["iter"] == it and ckpt.load_optimizer_state(run) is not None
    assert not list(run.glob(".latest.*")), "a half-written copy was left behind"


def test_disk_full_names_the_cause_keeps_the_last_checkpoint_and_resumes(tmp_path, monkeypatch) -> None:
    space = full_after(monkeypatch, 3)
    with pytest.raises(RunWriteError) as e:
        Trainer(cfg_for(tmp_path, "full"), callbacks=QUIET).fit()
    msg = str(e.value)
    assert msg.startswith("could not write the checkpoint: the disk is full (") and " MB free)" in msg
    assert "the last good checkpoint is latest/ at iter 0, intact" in msg and "then resume" in msg
    st = runs.status("full", tmp_path)
    assert st["state"] == "failed" and st["message"] == msg
    assert_intact_at(tmp_path / "full", 0)
    space["full"] = False  # space freed: the run continues from latest/
    done = Trainer(cfg_for(tmp_path, "full"), resume=True, callbacks=QUIET).fit()
    assert done["state"] == "finished" and done["iter"] == 30


@pytest.mark.parametrize("free, says", [
    (400_000, "could not write the checkpoint: the disk is full (0.4 MB free)"),
    (None, "could not write the checkpoint: RuntimeError: [enforce fail at inline_container.cc:672] . "
           "unexpected pos 500800 vs 500688"),
])
def test_torch_save_failing_mid_file(tmp_path, monkeypatch, free, says) -> None:
    """torch.save reports a full disk as a RuntimeError about file positions; with fewer bytes
    free than the checkpoint needs, that is called a full disk, else the error is quoted."""
    real, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **k):  # the optimizer state of latest/: fine at iter 0, then cut short
        calls["n"] += 1
        if calls["n"] > 1:
            f.write(b"PK\x03\x04" + b"\0" * 4096)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 500800 vs 500688")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    if free is not None:
        monkeypatch.setattr(runfolder, "free_bytes", lambda _path: free)
    with pytest.raises(RunWriteError, match="the last good checkpoint is latest/ at iter 0, intact") as e:
        Trainer(cfg_for(tmp_path, "cut"), callbacks=QUIET).fit()
    assert str(e.value).startswith(says)
    assert runs.status("cut", tmp_path)["message"] == str(e.value)
    monkeypatch.setattr(torch, "save", real)
    assert_intact_at(tmp_path / "cut", 0)


def test_cli_says_disk_full_without_a_traceback(tmp_path, capsys, monkeypatch) -> None:
    from tqdm import tqdm

    from trainers.train import main
    monkeypatch.setattr(tqdm, "monitor_interval", 0)  # no tqdm monitor thread left behind
    full_after(monkeypatch, 3)
    rc = main(["--root", str(tmp_path), "--name", "cli", "--data", "python-docs", "--threads", "1",
               "--max-iters", "30", "--eval-interval", "10", "--eval-iters", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: could not write the checkpoint: the disk is full (" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("in_place_works", [True, False])
def test_status_never_stays_running_when_failed_cannot_be_written(tmp_path, monkeypatch, in_place_works) -> None:
    """On a full disk the temp file of an atomic status write fails too. The failure is then
    written over the old status.json's own blocks; and should that fail as well, readers find the
    run's lock free once the trainer ends and show it interrupted, never running."""
    full_after(monkeypatch, 3)
    real_atomic = runfolder.write_json_atomic

    def atomic(path, obj):
        if obj.get("state") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_atomic(path, obj)

    monkeypatch.setattr(runs, "write_json_atomic", atomic)
    if not in_place_works:
        def in_place(path, obj):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        monkeypatch.setattr(runstatus, "write_json_in_place", in_place)
    with pytest.raises(RunWriteError):
        Trainer(cfg_for(tmp_path, "st"), callbacks=QUIET).fit()
    disk = runfolder.read_json(tmp_path / "st" / "status.json")
    st = runs.status("st", tmp_path)
    if in_place_works:
        assert disk["state"] == st["state"] == "failed" and "the disk is full" in disk["message"]
    else:
        assert disk["state"] == "running"  # what the trainer wrote last, before the disk filled
        assert st["state"] == "interrupted" and "see train.log" in st["message"]


# -- a real full disk ---------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path):
    """An 8 MiB tmpfs at tmp_path/disk (root only); skipped where it cannot be mounted."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:100]}); the patched "
                    "writers above cover this case")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_a_real_full_disk(tmpfs: Path) -> None:
    """The issue's reproduction: the CLI on a small tmpfs. It fails at a checkpoint with a plain
    message and no traceback, the latest/ it names stays loadable, and once space is freed the run
    resumes to the end."""
    filler = tmpfs / "filler"
    # what the first evaluation writes (latest with optimizer state, best, a snapshot) fits; a
    # second latest/ beside the first does not
    filler.write_bytes(b"\0" * (8 * 2**20 - int(2.9 * 2**20)))
    argv = [sys.executable, "-m", "trainers.train", "--root", str(tmpfs), "--name", "small",
            "--data", "python-docs", "--threads", "1", "--device", "cpu", "--max-iters", "30",
            "--eval-interval", "10", "--eval-iters", "2"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "error: could not write the checkpoint: the disk is full (" in r.stderr, r.stderr
    good = re.search(r"the last good checkpoint is latest/ at iter (\d+), intact", r.stderr)
    assert good and "Traceback" not in r.stderr, r.stderr
    st = runs.status("small", tmpfs)
    assert st["state"] == "failed" and "the disk is full" in st["message"]
    assert_intact_at(tmpfs / "small", int(good.group(1)))
    filler.unlink()  # space freed
    r = subprocess.run(argv[:5] + ["--resume", "--name", "small"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert runs.status("small", tmpfs)["state"] == "finished" and ckpt.load(tmpfs / "small")[2]["iter"] == 30
    shutil.rmtree(tmpfs / "small")
