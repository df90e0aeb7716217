"""trainers/runfolder.py through trainers.runs: a malformed file in a run folder never takes a
listing down (one test per corrupted file), an unreadable run says why and can still be resumed or
deleted, reading never writes (a full disk or a read-only root), and leftovers of killed writes
are cleaned when a run is resumed."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from trainers import runfolder, runs

# name: (file in the run folder, what it is replaced with, the state listed, words of the reason).
# The reproductions: each of these took every page down, or hid or froze the run.
CORRUPTIONS: dict[str, tuple[str, Any, str, str | None]] = {
    "status-list": ("status.json", [1, 2, 3], "unreadable", "status.json holds a list, not a JSON object"),
    "status-string": ("status.json", "running", "unreadable", "status.json holds a string"),
    "status-not-json": ("status.json", "{not json", "unreadable", "status.json is not valid JSON"),
    "status-nested": ("status.json", "[" * 100_000 + "]" * 100_000, "unreadable", "not valid JSON"),
    "config-list": ("config.json", [1], "finished", None),
    "config-train-string": ("config.json", {"train": "x", "data": "y"}, "finished", None),
    "pid-string": ("status.json", {"state": "running", "pid": "abc"}, "unreadable", "its pid is 'abc'"),
    "pid-huge": ("status.json", {"state": "running", "pid": 1099511627776}, "interrupted", None),
    "pid-minus-one": ("status.json", {"state": "running", "pid": -1}, "unreadable", "its pid is -1"),
    "pid-bool": ("status.json", {"state": "running", "pid": True}, "unreadable", "its pid is True"),
    "updated-ts-text": ("status.json", {"state": "starting", "pid": None, "updated_ts": "soon"},
                        "unreadable", "its updated_ts is 'soon'"),
    "iter-text": ("status.json", {"state": "finished", "iter": "abc", "max_iters": 30}, "unreadable",
                  "its iter is 'abc'"),
    "state-unknown": ("status.json", {"state": 7}, "unreadable", "its state is 7"),
    "meta-list": ("latest/config.json", None, "finished", None),  # its "meta" becomes [1]
}


def corrupt(run: Path, case: str) -> None:
    """Replace one file of a (copied) run folder as CORRUPTIONS[case] says."""
    rel, content, _state, _why = CORRUPTIONS[case]
    path = run / rel
    if case == "meta-list":
        info = json.loads(path.read_text())
        info["meta"] = [1]
        content = info
    path.write_text(content if isinstance(content, str) and content[:1] in "{[" else json.dumps(content))


@pytest.fixture
def root(tmp_path: Path, tiny_checkpoint) -> Path:
    """A root with an intact copy of the tiny run ("ok")."""
    r = tmp_path / "ckpts"
    shutil.copytree(tiny_checkpoint.run_dir, r / "ok")
    return r


class FakeProc:
    pid = 4242


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupted_file_is_listed_with_its_reason_and_can_be_resumed_or_deleted(
        root: Path, tiny_checkpoint, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    _rel, _content, state, why = CORRUPTIONS[case]
    shutil.copytree(tiny_checkpoint.run_dir, root / "bad")
    corrupt(root / "bad", case)
    listed = {r["name"]: r for r in runs.list_runs(root)}
    assert set(listed) == {"ok", "bad"} and listed["ok"]["state"] == "finished"  # it hides nothing
    bad = listed["bad"]
    assert bad["state"] == state and bad["state"] not in runs.LIVE_STATES
    if why:
        assert bad["message"].startswith("unreadable: ") and why in bad["message"], bad["message"]
    assert runs.status("bad", root)["state"] == state
    assert all(v is None or isinstance(v, (int, float)) for k, v in bad.items()
               if k in ("pid", "iter", "max_iters", "updated_ts", "val_loss"))
    assert bad["preset"] in (None, "tiny") and bad["data"] in (None, listed["ok"]["data"])
    assert runs.latest_iter(root / "bad") == (None if case == "meta-list" else 30)
    # resume rewrites its status (the child is faked: only what runs.resume decides is checked)
    monkeypatch.setattr(runs.subprocess, "Popen", lambda cmd, **kw: FakeProc())
    runs.resume("bad", max_iters=40, root=root)  # (a child refuses a bad config.json itself, saying why)
    st = runfolder.read_json(root / "bad" / "status.json")
    assert runfolder.check_status(st)[1] is None and st["max_iters"] == 40 and st["pid"] == FakeProc.pid
    runs.delete("bad", root)
    assert not (root / "bad").exists() and (root / "ok").is_dir()


def test_bad_pids_are_never_alive() -> None:
    for pid in (None, -1, 0, True, "abc", 1099511627776, 2.5):
        assert runs.pid_alive(pid) is False


def test_a_run_without_status_and_with_a_bad_config_is_unreadable(root: Path) -> None:
    (root / "half").mkdir()
    (root / "half" / "config.json").write_text("[1]")
    half = next(r for r in runs.list_runs(root) if r["name"] == "half")
    assert half["state"] == "unreadable" and "config.json holds a list" in half["message"]
    runs.delete("half", root)
    assert not (root / "half").exists()


@contextmanager
def no_writes() -> Iterator[list[str]]:
    """Every way of writing a file raises ENOSPC, as on a full disk (or EROFS on a read-only root)
    would; yields the list of attempts."""
    tried: list[str] = []

    def refuse(what: str) -> None:
        tried.append(what)
        raise OSError(errno.ENOSPC, "No space left on device", what)

    real_open, real_os_open = io.open, os.open

    def guarded_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            refuse(str(file))
        return real_open(file, mode, *a, **k)

    def guarded_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(str(path))
        return real_os_open(path, flags, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", guarded_open)
        mp.setattr(io, "open", guarded_open)  # (pathlib opens through io.open)
        mp.setattr(os, "open", guarded_os_open)
        for mod, name in ((tempfile, "mkstemp"), (os, "replace"), (os, "rename"), (os, "unlink")):
            mp.setattr(mod, name, lambda *a, _n=name, **k: refuse(_n))
        yield tried


def test_reading_never_writes_even_on_a_full_disk(root: Path, tiny_checkpoint, monkeypatch) -> None:
    """A live state whose process is gone reads as interrupted without writing it down (the next
    writer does); before, status() wrote it and every page failed with ENOSPC on a full disk."""
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(root))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    dead = root / "dead"
    shutil.copytree(tiny_checkpoint.run_dir, dead)
    runfolder.write_json_atomic(dead / "status.json", {"state": "running", "pid": 1, "iter": 20,
                                                       "max_iters": 30, "updated_ts": 1.0})
    (dead / runs.STOP_FILE).write_text("asked")
    before = {p: p.read_bytes() for p in dead.iterdir() if p.is_file()}
    from app import catalog
    with no_writes() as tried:
        listed = {r["name"]: r for r in runs.list_runs(root)}
        assert listed["dead"]["state"] == "interrupted" and "resume" in listed["dead"]["message"]
        assert runs.status("dead", root)["state"] == "interrupted"
        assert {s.key for s in catalog.sources()} == {"ok", "dead"}
        assert len(catalog.entries()) > 2 and catalog.timeline_runs(None)
    assert tried == []
    assert {p: p.read_bytes() for p in dead.iterdir() if p.is_file()} == before


def test_leftovers_of_killed_writes_are_cleaned_when_a_run_is_resumed(root: Path, monkeypatch) -> None:
    """A kill inside write_json_atomic leaves .status.json.*.tmp (or .config.json.*.tmp); inside the
    metrics rewrite of a resume, .metrics.jsonl.tmp. Resuming, under the run's lock, removes them."""
    d = root / "ok"
    left = [".status.json.ab12cd.tmp", ".config.json.x9.tmp", ".metrics.jsonl.tmp"]
    for name in left:
        (d / name).write_text("{half")
    keep = d / ".unrelated.tmp"
    keep.write_text("not ours")
    monkeypatch.setattr(runs.subprocess, "Popen", lambda cmd, **kw: FakeProc())
    runs.resume("ok", max_iters=40, root=root)
    assert not any((d / name).exists() for name in left) and keep.exists()
    assert runfolder.clean_leftovers(d) == []
    # the CLI's --resume path cleans them too (trainers.train.make_config, under the lock)
    from trainers.train import build_parser, make_config
    (d / left[0]).write_text("{half")
    runfolder.write_json_atomic(d / "status.json", {"state": "stopped", "iter": 30})
    args = build_parser().parse_args(["--resume", "--name", "ok", "--root", str(root), "--max-iters", "50"])
    assert make_config(args, 1, 0).max_iters == 50
    assert not (d / left[0]).exists()


def test_json_readers_return_only_objects(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    for text, ok in (("[1]", False), ('"s"', False), ("3", False), ("null", False), ("{", False),
                     ('{"a": NaN}', True), ("", False)):
        p.write_text(text)
        assert (runfolder.read_json(p) is not None) == ok, text
    assert runfolder.read_json(p.with_name("missing.json")) is None
    p.write_text('{"a": NaN, "b": Infinity}')
    assert runfolder.read_json(p) == {"a": None, "b": None}
    (tmp_path / "metrics.jsonl").write_text('{"iter": 1}\n[1]\n"x"\n{"iter": 2}\n{"it')
    assert runfolder.read_metrics(tmp_path) == [{"iter": 1}, {"iter": 2}]
