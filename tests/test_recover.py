"""A process killed inside gpt.checkpoint.save, at each of its renames, for latest/, best/ and a
snapshot (issue 13, point 4): recover puts the newest complete copy in place and deletes nothing
complete that is not superseded; load says when it reads through a swap.

The kills are real: one subprocess (tests/test_recover.py run as a script) imports torch once,
writes a baseline run per scenario and forks a child per scenario, whose os.rename (or config
write) calls os._exit(9) at the chosen point, so the folders are exactly what a kill -9 leaves.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one subprocess writes 12 killed runs (about 10 s here)
TARGETS = {"latest": "latest", "best": "best", "snapshot": "snapshots/iter_0000010"}
# where the child dies: mid-write (no config.json yet), before the first rename (path -> .old),
# between the renames (.tmp -> path not done), after the second rename (.old not yet deleted)
POINTS = ("mid-write", "before-rename-1", "between-renames", "after-rename-2")
OLD_ITER, NEW_ITER = 10, 20


def _new_iter(target: str) -> int:
    return OLD_ITER if target == "snapshot" else NEW_ITER  # a snapshot keeps its iteration


def _scenario(root: Path, target: str, point: str) -> None:
    """In the script: a run with latest/, best/ and one snapshot (model A), then a child that
    saves model B over `target` and is killed at `point`."""
    import torch

    import gpt.checkpoint as ck
    from gpt.config import GPTConfig
    from gpt.model import GPT
    from gpt.tokenizer import CharTokenizer

    tok = CharTokenizer(list("abcdefgh"))
    cfg = GPTConfig.preset("tiny", vocab_size=8, n_layer=1)
    torch.manual_seed(0)
    a, b = GPT(cfg), GPT(cfg)
    run = root / f"{target}-{point}"
    for name in TARGETS.values():
        ck.save(run / name, a, tok, meta={"iter": OLD_ITER}, optimizer={"state": {}, "param_groups": []})
    pid = os.fork()
    if pid == 0:
        try:
            real, calls = os.rename, []

            def rename(src, dst):
                calls.append(src)
                if (point, len(calls)) in (("before-rename-1", 1), ("between-renames", 2)):
                    os._exit(9)
                real(src, dst)
                if point == "after-rename-2" and len(calls) == 2:
                    os._exit(9)

            def write_json(path, obj):
                os._exit(9)

            os.rename = rename
            if point == "mid-write":
                ck._write_json = write_json
            ck.save(run / TARGETS[target], b, tok, meta={"iter": _new_iter(target)})
        finally:
            os._exit(0)  # not killed: the test sees exit status 0 and fails
    _, status = os.waitpid(pid, 0)
    (run / "child-exit").write_text(str(os.waitstatus_to_exitcode(status)))


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every scenario, from one subprocess; returns the folder holding one run per scenario."""
    root = tmp_path_factory.mktemp("killed")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, __file__, str(root)], check=True, env=env, timeout=300)
    return root


def _copy(killed: Path, name: str, tmp_path: Path) -> Path:
    """A private copy of one scenario's run (tests change it)."""
    return Path(shutil.copytree(killed / name, tmp_path / name, symlinks=True))


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def _complete_copies(run: Path) -> dict[str, list[tuple[int, int, str]]]:
    """{target: [(iter, config.json mtime, weights digest)] of every complete copy of it (config.json
    written last by save, so present means complete), hidden ones included}, read here directly:
    the newest of each must survive recovery."""
    out = {}
    for rel in TARGETS.values():
        target = run / rel
        copies = [target, *target.parent.glob(f".{target.name}.*")]
        out[rel] = [(json.loads((c / "config.json").read_text())["meta"]["iter"],
                     (c / "config.json").stat().st_mtime_ns, _digest(c))
                    for c in copies if (c / "config.json").is_file()]
    return out


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_kill_inside_save_then_recover(killed: Path, tmp_path: Path, target: str, point: str) -> None:
    from gpt.checkpoint import has_checkpoint, load, recover

    run = _copy(killed, f"{target}-{point}", tmp_path)
    assert (run / "child-exit").read_text() == "9"  # really killed at that point
    before = _complete_copies(run)
    assert all(before.values())  # every target has at least one complete copy somewhere
    if point == "between-renames":
        assert not (run / TARGETS[target]).exists()  # the window of the issue
    restored = recover(run)

    for rel, copies in before.items():
        newest = max(copies)
        assert has_checkpoint(run / rel), rel
        assert _digest(run / rel) == newest[2], f"{rel}: the newest complete copy is not in place"
    hidden = sorted(p.name for p in run.rglob(".*") if p.is_dir())
    assert hidden == []  # what is left over is superseded or incomplete
    new_in_place = point != "mid-write"
    want_iter = _new_iter(target) if new_in_place else OLD_ITER
    assert load(run / TARGETS[target])[2]["iter"] == want_iter
    rel = TARGETS[target]
    moved = point in ("before-rename-1", "between-renames")  # the new copy was still hidden
    assert [r.split(":")[0] for r in restored] == ([f"{rel}/"] if moved else [])
    assert recover(run) == []  # a second pass has nothing to do


def test_load_reads_through_the_swap_instead_of_best(killed: Path, tmp_path: Path) -> None:
    """Between the renames of latest/, load(run) is the new latest (from its hidden copy), said
    in load_note; before recovery nothing is moved by reading."""
    from gpt.checkpoint import load

    run = _copy(killed, "latest-between-renames", tmp_path)
    snapshot = sorted(p.name for p in run.iterdir())
    model, _, meta = load(run)
    assert meta["iter"] == NEW_ITER and "latest/ is being replaced" in meta["load_note"]
    assert sorted(p.name for p in run.iterdir()) == snapshot  # reading never writes


def test_best_kept_when_only_its_hidden_copy_is_complete(killed: Path, tmp_path: Path) -> None:
    """The data loss of the issue: best/ killed between its renames, then the old recovery (only
    latest/, every hidden folder deleted) lost it. runs.recover_latest now restores it."""
    from trainers import runs

    run = _copy(killed, "best-between-renames", tmp_path)
    assert not (run / "best").exists()
    restored = runs.recover_latest(run)
    assert restored and restored[0].startswith("best/: restored the complete copy .best.")
    from gpt.checkpoint import load
    assert load(run / "best")[2]["iter"] == NEW_ITER


def test_recover_leaves_a_foreign_folder_alone(tmp_path: Path) -> None:
    """A folder in the way that is not a nanolens checkpoint is never replaced, and the complete
    copies beside it are kept."""
    import torch

    from gpt.checkpoint import recover, save
    from gpt.config import GPTConfig
    from gpt.model import GPT
    from gpt.tokenizer import CharTokenizer

    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=8, n_layer=1))
    run = tmp_path / "run"
    save(run / "latest", m, CharTokenizer(list("abcdefgh")), meta={"iter": 3})
    os.rename(run / "latest", run / ".best.old-1-abc")
    (run / "best").mkdir()
    (run / "best" / "notes.txt").write_text("mine")
    assert recover(run) == []
    assert (run / "best" / "notes.txt").read_text() == "mine" and (run / ".best.old-1-abc").is_dir()


if __name__ == "__main__":  # the subprocess of the `killed` fixture
    import torch

    torch.set_num_threads(1)  # no thread pool before the forks
    for t in TARGETS:
        for pt in POINTS:
            _scenario(Path(sys.argv[1]), t, pt)
