"""app/catalog.py: what can be inspected. The bundled model, runs with their latest / best /
snapshots, an interrupted run, a run with no checkpoint yet, an empty or missing root, uploads,
labels and the default, all read through gpt.checkpoint's layout helpers."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from app import catalog
from gpt.checkpoint import best_dir, latest_dir, snapshot_dir
from trainers.runs import list_runs


@pytest.fixture
def root(app_root: Path) -> Path:
    """A private checkpoints root with a copy of the tiny run (see conftest.app_root)."""
    return app_root


def test_empty_and_missing_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    for where in (tmp_path / "missing", tmp_path / "empty"):
        if where.name == "empty":
            where.mkdir()
        monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(where))
        assert catalog.bundled_path() is None and catalog.default_ref() is None
        assert catalog.entries() == [] and catalog.sources() == [] and catalog.timeline_runs(None) == []
        assert catalog.checkpoints("anything") == []


def test_a_run_without_a_checkpoint_is_a_source_but_not_an_entry(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    run = tmp_path / "half-run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "starting", "pid": None,
                                                 "updated_ts": 1e12}))  # still within its grace
    assert [s.key for s in catalog.sources()] == ["half-run"]
    assert catalog.checkpoints("half-run") == [] and catalog.entries() == []
    assert catalog.default_ref() is None  # nothing loadable yet


def test_bundled_wins_and_is_labelled(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    best = best_dir(root / "tiny-run")
    monkeypatch.setenv("NANOLENS_BUNDLED", str(best))
    assert catalog.bundled_path() == best
    assert catalog.default_ref() == str(best)
    assert catalog.describe(best) == "bundled · best"
    first = catalog.sources()[0]
    assert first.key == catalog.BUNDLED_SOURCE and first.path == best
    assert catalog.checkpoints(catalog.BUNDLED_SOURCE) == [catalog.Entry(str(best), "bundled · best", "bundled")]
    assert catalog.entries()[0].which == "bundled"
    monkeypatch.setenv("NANOLENS_BUNDLED", str(root / "missing"))
    assert catalog.bundled_path() is None  # a bundled path without a checkpoint is no model


def test_a_bundled_run_is_listed_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = root / "tiny-run"
    monkeypatch.setenv("NANOLENS_BUNDLED", str(run))
    keys = [s.key for s in catalog.sources()]
    assert keys == [catalog.BUNDLED_SOURCE]  # not again as a run
    assert [s.path for s in catalog.timeline_runs(str(run))] == [run]
    assert catalog.timeline_runs(str(run))[0].label == "bundled · tiny-run"  # current, and still "bundled"


def test_both_repo_bundled_models_are_listed_the_first_the_default(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With NANOLENS_BUNDLED unset, the repo's checkpoints/shakespeare-char (the default) and
    checkpoints/shakespeare-induction are both bundled models: picked, labelled and on the Timeline,
    never listed again as runs (they live under the default checkpoints root)."""
    monkeypatch.delenv("NANOLENS_BUNDLED", raising=False)
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(catalog.REPO / "checkpoints"))
    char, induction = (catalog.REPO / "checkpoints" / n for n in catalog.BUNDLED_NAMES)
    assert catalog.bundled_paths() == [char, induction]
    assert catalog.bundled_path() == char and catalog.default_ref() == str(char)
    assert catalog.describe(induction) == "bundled · shakespeare-induction"
    srcs = catalog.sources()
    assert [(s.key, s.path) for s in srcs[:2]] == [(catalog.BUNDLED_SOURCE, char),
                                                   ("(bundled model) shakespeare-induction", induction)]
    assert [s.path for s in srcs].count(induction) == 1  # not again as a run
    assert catalog.checkpoints(srcs[1].key) == [
        catalog.Entry(str(induction), "bundled · shakespeare-induction", "bundled")]
    assert [(e.ref, e.which) for e in catalog.entries()[:2]] == [(str(char), "bundled"),
                                                                 (str(induction), "bundled")]
    timeline = catalog.timeline_runs(str(induction))  # the current model's run first, still "bundled"
    assert [(s.path, s.label) for s in timeline[:2]] == [(induction, "bundled · shakespeare-induction"),
                                                         (char, "bundled · shakespeare-char")]
    # NANOLENS_BUNDLED lists bundled models (os.pathsep between them); a missing one is left out
    monkeypatch.setenv("NANOLENS_BUNDLED", os.pathsep.join([str(induction), str(tmp_path / "gone"), str(char)]))
    assert catalog.bundled_paths() == [induction, char] and catalog.default_ref() == str(induction)
    assert catalog.checkpoints("(bundled model) gone") == []


def test_run_entries_latest_best_and_snapshots(root: Path, tiny_checkpoint) -> None:
    run = root / "tiny-run"
    entries = catalog.checkpoints("tiny-run")
    assert [e.which for e in entries[:2]] == ["latest", "best"]
    assert entries[0].ref == str(run) and entries[1].ref == str(best_dir(run))
    snaps = [e for e in entries if e.which.startswith("iter")]
    # newest first, each at the layout's own path
    assert [int(e.which[5:]) for e in snaps] == sorted(tiny_checkpoint.iters, reverse=True)
    assert all(e.ref == str(snapshot_dir(run, int(e.which[5:]))) for e in snaps)
    assert [it for it, _ in catalog.snapshots(run)] == list(tiny_checkpoint.iters)
    flat = catalog.entries(snapshots=False)
    assert [e.label for e in flat] == ["tiny-run · latest", "tiny-run · best"]
    assert {f"tiny-run · iter {i}" for i in tiny_checkpoint.iters} <= {e.label for e in catalog.entries()}


def test_labels(root: Path) -> None:
    run = root / "tiny-run"
    assert catalog.describe(run) == "tiny-run · latest"
    assert catalog.describe(latest_dir(run)) == "tiny-run · latest"
    assert catalog.describe(best_dir(run)) == "tiny-run · best"
    assert catalog.describe(snapshot_dir(run, 10)) == "tiny-run · iter 10"
    assert catalog.describe(catalog.uploads_dir() / "x-upload" / "ckpt.pt") == "upload · x-upload"
    assert catalog.describe("/somewhere/else/ckpt.pt") == "else/ckpt.pt"


def test_interrupted_run_keeps_its_checkpoints(root: Path) -> None:
    """A run whose process died mid-training is listed as interrupted and still inspectable."""
    run = root / "tiny-run"
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": 2 ** 22 + 12345, "iter": 20,
                                                 "updated_ts": 1.0}))
    assert next(r for r in list_runs() if r["name"] == "tiny-run")["state"] == "interrupted"
    assert [e.which for e in catalog.checkpoints("tiny-run")][:2] == ["latest", "best"]
    assert catalog.default_ref() == str(run)


def test_newest_run_is_the_default_and_timeline_order(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = root / "tiny-run", root / "newer-run"
    shutil.copytree(old, new)
    (new / "status.json").write_text(json.dumps({"state": "finished", "updated_ts": 4e9}))
    assert catalog.default_ref() == str(new)
    assert [s.key for s in catalog.sources()][:2] == ["newer-run", "tiny-run"]
    # the current model's run comes first on the Timeline (no bundled model here)
    order = [s.path for s in catalog.timeline_runs(str(snapshot_dir(old, 10)))]
    assert order == [old, new]
    assert catalog.timeline_runs(str(old))[0].label == "tiny-run (current model)"
    # with a bundled model too, the current model's run still comes first (issue 12, point 18)
    monkeypatch.setenv("NANOLENS_BUNDLED", str(best_dir(new)))
    assert [(s.path, s.label) for s in catalog.timeline_runs(str(old))] == [
        (old, "tiny-run (current model)"), (new, "bundled · newer-run")]


def test_a_run_without_snapshots_is_not_on_the_timeline(root: Path) -> None:
    shutil.rmtree(root / "tiny-run" / "snapshots")
    assert catalog.timeline_runs(None) == []
    assert [e.which for e in catalog.checkpoints("tiny-run")] == ["latest", "best"]


def test_has_checkpoint(root: Path, tmp_path: Path) -> None:
    assert catalog.has_checkpoint(root / "tiny-run") and catalog.has_checkpoint(best_dir(root / "tiny-run"))
    assert not catalog.has_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert not catalog.has_checkpoint(tmp_path / "empty")


def test_corrupted_runs_list_no_checkpoints_and_hide_nothing(root: Path, tiny_checkpoint) -> None:
    """A run folder holding anything (the corruptions of tests/test_runfolder.py, and a latest/
    config.json nested too deep for json) neither raises here nor hides the intact run."""
    from tests.test_runfolder import CORRUPTIONS, corrupt

    for case in CORRUPTIONS:
        shutil.copytree(root / "tiny-run", root / f"bad-{case}")
        corrupt(root / f"bad-{case}", case)
    deep = root / "bad-deep"
    shutil.copytree(root / "tiny-run", deep)
    (deep / "latest" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (deep / "snapshots" / "iter_0000010" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    keys = {s.key for s in catalog.sources()}
    assert keys == {"tiny-run", "bad-deep"} | {f"bad-{c}" for c in CORRUPTIONS}
    labels = {e.label for e in catalog.entries()}
    assert {"tiny-run · latest", "tiny-run · best", "tiny-run · iter 30"} <= labels
    assert "bad-deep · latest" not in labels and "bad-deep · iter 30" in labels
    assert [s.path for s in catalog.timeline_runs(str(root / "tiny-run"))][0] == root / "tiny-run"
    assert catalog.checkpoints("bad-deep")[0].which == "best"
    assert catalog.default_ref() is not None
