"""The Train page (AppTest): renders with and without runs, the estimate follows the form, an
invalid config is refused before anything starts, delete asks first, and a real tiny run can be
started, followed, stopped and resumed from the page."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from trainers import runs

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def _reap_runs(root: Path, grace_s: float = 10.0) -> None:
    """Let every trainer process of a run under root exit (a finished run's process may still be
    shutting down), then SIGKILL the group of any that is still there."""
    deadline = time.time() + grace_s
    for r in runs.list_runs(root):
        pid = r.get("pid")
        if r.get("state") in runs.LIVE_STATES and pid:
            runs.stop(r["name"], root)
        while pid and runs.pid_alive(pid) and time.time() < deadline:  # pid_alive reaps our children
            time.sleep(0.1)
        if pid and runs.pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # start_new_session: the trainer leads its group
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


@pytest.fixture
def root(app_root: Path) -> Iterator[Path]:
    """A private checkpoints root with a copy of the tiny run; every run a test started is reaped."""
    yield app_root
    _reap_runs(app_root)


def train_page() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("screens/train.py")
    at.run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_renders_without_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    st.cache_resource.clear()
    at = train_page()
    assert "No runs yet" in captions(at)
    from trainers.machine import default_threads
    n = default_threads()
    assert f"Training uses {n} thread{'s' if n != 1 else ''}, leaving" in captions(at)
    assert metric(at, "Parameters").endswith("M")


def test_runs_table_and_estimate_follow_the_form(root: Path) -> None:
    at = train_page()
    table = at.dataframe[0].value
    assert list(table["run"]) == ["tiny-run"] and list(table["state"]) == ["finished"]
    assert "iter 30 / 30" in captions(at) and "points" in captions(at)  # the chart of the finished run
    before = metric(at, "Parameters"), metric(at, "Estimated time"), metric(at, "Memory (training)")
    from trainers.machine import default_threads
    assert "Timed here: " in captions(at) and f"on {default_threads()} thread" in captions(at)  # the run's
    at.number_input(key="_tr_n_layer_tiny").set_value(8)
    at.run()
    after = metric(at, "Parameters"), metric(at, "Estimated time"), metric(at, "Memory (training)")
    assert all(a != b for a, b in zip(before, after)), (before, after)
    assert float(after[0][:-1]) > float(before[0][:-1])
    at.selectbox(key="_tr_preset").set_value("cpu-small")
    at.run()
    assert at.number_input(key="_tr_n_embd_cpu-small").value == 128  # the preset's own values


@pytest.mark.parametrize("offline", [True, False])
def test_data_defaults_to_the_bundled_models_corpus_when_there_offline(
        root: Path, monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    """The bundled model was trained on Tiny Shakespeare (its config.json says so): the form starts
    there when the text is at hand without the network (issue 12: it said Python docs), and on
    Python docs when it is not (a default must never mean a download)."""
    import trainers.data

    bundled = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char"
    assert runs.read_json(bundled / "config.json")["data"]["name"] == "shakespeare"
    monkeypatch.setenv("NANOLENS_BUNDLED", str(bundled))
    monkeypatch.setattr(trainers.data, "_cached_shakespeare", lambda: bundled / "config.json" if offline else None)
    at = train_page()
    assert at.selectbox(key="_tr_data").value == ("shakespeare" if offline else "python-docs")


def test_a_finished_runs_sample_is_its_final_checkpoints(root: Path) -> None:
    """Issue 12: the sample under a finished run said "iter 250" after it finished at 300, because
    the sample was throttled and nothing polls once a run has ended. A sample shown just now from
    an older checkpoint gives way to the final one."""
    from gpt.checkpoint import latest_dir

    at = train_page()
    final = runs.latest_iter(root / "tiny-run")
    assert final == 30
    at.session_state["_tr_sample"] = (str(latest_dir(str(root / "tiny-run"))), 20, time.time(), "stale text")
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["_tr_sample"][1] == 30 and "(iter 30, temperature 0.8)" in captions(at)
    assert at.code[0].value != "stale text"


def test_runs_table_shows_the_last_val_loss_after_a_resume(root: Path) -> None:
    """Issue 12: a resumed run's status.json has no val_loss until it evaluates, and the table said
    "None". It shows the last val loss the run logged."""
    run = root / "tiny-run"
    st_ = runs.read_json(run / "status.json")
    runs.write_json_atomic(run / "status.json", dict(st_, val_loss=None, best_val_loss=None))
    last = [r["val_loss"] for r in runs.read_metrics(run) if r.get("val_loss") is not None][-1]
    at = train_page()
    assert list(at.dataframe[0].value["val loss"]) == [f"{last:.4f}"]


def test_invalid_config_is_refused_before_anything_starts(root: Path) -> None:
    at = train_page()
    at.number_input(key="_tr_n_head_tiny").set_value(3)  # 64 % 3 != 0
    at.run()
    assert any("divisible by n_head" in e.value for e in at.error)
    at.button(key="_tr_start").click()
    at.run()
    assert any(e.value.startswith("Nothing started") and "n_head" in e.value for e in at.error)
    assert [r["name"] for r in runs.list_runs(root)] == ["tiny-run"]
    at.number_input(key="_tr_n_head_tiny").set_value(2)
    at.number_input(key="_tr_learning_rate_tiny").set_value(0.0)
    at.run()
    assert any("--lr must be positive" in e.value for e in at.error)


def test_delete_asks_for_confirmation(root: Path) -> None:
    at = train_page()
    at.button(key="_tr_delete").click()
    at.run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert (root / "tiny-run").is_dir()
    at.button(key="_tr_delete_no").click()
    at.run()
    assert not at.warning and (root / "tiny-run").is_dir()
    at.button(key="_tr_delete").click()
    at.run()
    at.button(key="_tr_delete_yes").click()
    at.run()
    assert not at.exception and not (root / "tiny-run").exists()
    assert "No runs yet" in captions(at)
    assert at.session_state["model_ref"] is None  # the deleted run was the model being inspected


def wait_state(name: str, root: Path, states: tuple[str, ...], timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st_ = runs.status(name, root)
        if st_["state"] in states:
            return st_
        time.sleep(0.3)
    log = (root / name / "train.log").read_text(errors="replace")[-2000:] if (root / name / "train.log").exists() else ""
    raise AssertionError(f"{name} did not reach {states}: {runs.status(name, root)}\n{log}")


@pytest.mark.slow
def test_start_stop_resume_a_real_run(root: Path) -> None:
    at = train_page()
    at.number_input(key="_tr_max_iters_tiny").set_value(5000)
    at.number_input(key="_tr_eval_interval_tiny").set_value(20)
    at.text_input(key="_tr_name").input("ui-run")
    at.button(key="_tr_start").click()
    at.run()
    assert not at.exception and any("Started run ui-run" in s.value for s in at.success)
    assert at.selectbox(key="_tr_selected").value == "ui-run"
    wait_state("ui-run", root, ("running",))
    deadline = time.time() + 60
    while not (root / "ui-run" / "latest").is_dir() and time.time() < deadline:
        time.sleep(0.3)
    at.run()
    assert "running" in list(at.dataframe[0].value["state"])
    assert "Sample from the latest checkpoint" in captions(at) and at.code[0].value.strip()
    # a new sample at most every SAMPLE_EVERY_S: a newer checkpoint within that keeps the old one
    shown = at.session_state["_tr_sample"]
    latest_iter = lambda: (runs.read_json(root / "ui-run" / "latest" / "config.json") or {}).get("meta", {}).get("iter")  # noqa: E731
    deadline = time.time() + 30
    while latest_iter() in (None, shown[1]) and time.time() < deadline:
        time.sleep(0.2)
    at.run()
    assert at.session_state["_tr_sample"] == shown and f"(iter {shown[1]}," in captions(at)
    at.session_state["_tr_sample"] = (shown[0], shown[1], 0.0, shown[3])  # as if shown long ago
    at.run()
    newer = at.session_state["_tr_sample"]
    assert newer[1] > shown[1] and f"(iter {newer[1]}," in captions(at)
    at.button(key="_tr_stop").click()
    at.run()
    stopped = wait_state("ui-run", root, ("stopped",))
    at.run()
    assert at.dataframe[0].value.set_index("run").loc["ui-run", "state"] == "stopped"
    target = stopped["iter"] + 20
    at.number_input(key="_tr_resume_to_ui-run").set_value(target)
    at.button(key="_tr_resume").click()
    at.run()
    assert any("Resumed ui-run" in s.value for s in at.success), [e.value for e in at.error]
    done = wait_state("ui-run", root, ("finished",))
    assert done["iter"] == target
    at.run()
    assert f"iter {target} / {target}" in captions(at)


@pytest.mark.slow
def test_train_on_an_uploaded_text(root: Path) -> None:
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))[:20_000]
    at = train_page()
    at.selectbox(key="_tr_data").set_value("upload")
    at.run()
    assert any("Upload a .txt" in e.value for e in at.error)  # nothing to train on yet
    at.file_uploader(key="_tr_upload").set_value(("my corpus.txt", text.encode(), "text/plain"))
    at.number_input(key="_tr_max_iters_tiny").set_value(5)
    at.number_input(key="_tr_eval_interval_tiny").set_value(5)
    at.run()
    assert not at.error
    at.button(key="_tr_start").click()
    at.run()
    assert not at.exception and any("Started run tiny-my-corpus" in s.value for s in at.success), \
        [e.value for e in at.error]
    name = at.selectbox(key="_tr_selected").value
    done = wait_state(name, root, ("finished",))
    data = runs.read_json(root / name / "config.json")["train"]["data"]
    assert Path(data).read_text(encoding="utf-8") == text and (root / ".uploads") in Path(data).parents
    assert done["iter"] == 5


def test_read_only_run_offers_no_resume_or_delete(root: Path) -> None:
    """The bundled model is a shipped, read-only run (trainers.export marks it): the page says so
    instead of offering buttons that trainers.runs would refuse."""
    import shutil

    bundled = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char"
    shutil.copytree(bundled, root / "shipped")
    at = train_page()
    at.selectbox(key="_tr_selected").set_value("shipped")
    at.run()
    assert not at.exception, at.exception
    keys = {b.key for b in at.button}
    assert "_tr_resume" not in keys and "_tr_delete" not in keys and "_tr_inspect" in keys
    assert "shipped, read-only run" in captions(at)
    at.selectbox(key="_tr_selected").set_value("tiny-run")  # an ordinary run still offers both
    at.run()
    assert {"_tr_resume", "_tr_delete"} <= {b.key for b in at.button}


# -- a bad file in a run folder, a full disk -----------------------------------------------------------
def page_files() -> list[str]:
    """Every page the app lists (app/main.py PAGES whose file exists)."""
    from app.main import HERE, PAGES  # noqa: PLC0415  (importing main runs no page)
    return [f for f, *_ in PAGES if (HERE / f).is_file()]


def test_every_page_survives_corrupted_runs(root: Path) -> None:
    """One run folder per corruption of tests/test_runfolder.py (status.json a list or a string,
    config.json [1], "train": "x", pid "abc", 2**40 or -1, updated_ts "soon", iter "abc", a latest/
    meta that is a list, ...): every page renders without an exception, the runs table lists each
    unreadable run with its reason, and one can be selected and deleted from the page."""
    import shutil

    from tests.test_runfolder import CORRUPTIONS, corrupt

    for case in CORRUPTIONS:
        shutil.copytree(root / "tiny-run", root / f"bad-{case}")
        corrupt(root / f"bad-{case}", case)
    future = time.time() + 3600  # the intact run stays the newest: the default model every page loads
    os.utime(root / "tiny-run" / "status.json", (future, future))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    for f in page_files():
        at.switch_page(f)
        at.run()
        assert not at.exception, (f, at.exception)
    at.switch_page("screens/train.py")
    at.run()
    table = at.dataframe[0].value.set_index("run")
    assert len(table) == len(CORRUPTIONS) + 1
    assert table.loc["bad-status-list", "state"] == "unreadable: status.json holds a list, not a JSON object"
    assert table.loc["bad-pid-minus-one", "state"].startswith("unreadable: status.json: its pid is -1")
    for case in CORRUPTIONS:  # each one's panel and actions
        at.selectbox(key="_tr_selected").set_value(f"bad-{case}")
        at.run()
        assert not at.exception, (case, at.exception)
    at.selectbox(key="_tr_selected").set_value("bad-status-list")
    at.run()
    assert any("unreadable: status.json holds a list" in e.value for e in at.error)
    at.button(key="_tr_delete").click()
    at.run()
    at.button(key="_tr_delete_yes").click()
    at.run()
    assert not at.exception and not (root / "bad-status-list").exists()
    assert any("Deleted bad-status-list" in s.value for s in at.success)


def test_pages_never_write_a_run_folder_on_a_full_disk(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose trainer died while "running", on a disk where nothing can be written: Train,
    Model and Timeline render (they once tried to write "interrupted" and showed ENOSPC), the run
    reads as interrupted, and its status.json is left as it was."""
    import errno
    import tempfile

    run = root / "tiny-run"
    runs.write_json_atomic(run / "status.json", {"state": "running", "pid": 1, "iter": 20, "max_iters": 30,
                                                 "updated_ts": 1.0})
    before = (run / "status.json").read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    at = AppTest.from_file(MAIN, default_timeout=120)
    monkeypatch.setattr(tempfile, "mkstemp", full)
    monkeypatch.setattr(os, "replace", full)
    at.run()
    for f in ("screens/train.py", "screens/model.py", "screens/timeline.py"):
        at.switch_page(f)
        at.run()
        assert not at.exception, (f, at.exception)
    at.switch_page("screens/train.py")
    at.run()
    assert list(at.dataframe[0].value["state"]) == ["interrupted"]
    assert (run / "status.json").read_bytes() == before
