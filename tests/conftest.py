"""Shared fixtures: a tiny trained run, live Streamlit servers, and a Chromium page.

- `tiny_config`      GPTConfig.preset("tiny").
- `tiny_checkpoint`  (session) a TinyRun: the "tiny" preset trained for 30 iterations by the real
                     trainer: <root>/tiny-run/{config.json, metrics.jsonl, status.json (finished),
                     latest/, best/, snapshots/iter_0000000, _0000010, _0000025, _0000030}.
- `started`          pids of the background jobs a test launched (it appends them); killed and reaped
                     at teardown (tests/job_fixtures.py, with wait_for).
- `job_run`          a private copy of the tiny run for the background-job tests: tmp_path/ckpts/tiny-run;
                     at teardown the jobs its analysis/, lens/ and sae/*/ status.json name are reaped too.
- `app_server`       (session) factory: app_server(checkpoints_root, **env) -> base URL of a Streamlit
                     server for app/main.py with NANOLENS_CHECKPOINTS=checkpoints_root and no bundled
                     model (NANOLENS_BUNDLED=""; pass one in env); one server per (root, env).
- `live_app`         (session) base URL of a server whose root holds only the tiny run.
- `browser`, `page`  Playwright on the system Chromium (/usr/bin/chromium, or $NANOLENS_CHROMIUM).
                     Where that or playwright is missing the test SKIPS with a loud reason; set
                     NANOLENS_REQUIRE_BROWSER=1 to make that a failure instead.

Page helpers (open_app, wait_for_app, assert_no_exception, screenshot) live in tests/e2e/helpers.py,
the server process in tests/e2e/server.py.

Everything here runs torch on one thread (the machine's cores are shared), NANOLENS_CACHE points
into a temp folder for the whole session, and at the end of the session we check that no test left
a thread or child process behind: a thread still running torch when Python exits aborts it (134).
"""
from __future__ import annotations

import os
import shutil

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before anything imports torch

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.helpers import screenshot
from tests.e2e.server import StreamlitServer, descendants, kill_all
from tests.job_fixtures import reap, status_pids

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from gpt.config import GPTConfig

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"  # absent: python-docs
CHROMIUM = os.environ.get("NANOLENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- markers -----------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an `e2e` test, so `-m "not e2e"` skips the browser."""
    e2e_dir = REPO / "tests" / "e2e"
    for item in items:
        if e2e_dir in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so `page` can screenshot a failed test."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """NANOLENS_CACHE (token caches, downloads) in a temp folder for the whole session, servers
    included, so tests neither read nor fill the user's ~/.cache/nanolens."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLENS_CACHE", str(tmp_path_factory.mktemp("nanolens-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _step_timer_closed() -> Iterator[None]:
    """The Train page's step timer (a worker process, app.resources) outlives cache clears, since
    its start costs seconds; it ends with the session."""
    yield
    import sys

    if (resources := sys.modules.get("app.resources")) is not None:
        resources.close_step_timer()


# -- a tiny trained run ------------------------------------------------------------------------------
@pytest.fixture
def tiny_config() -> "GPTConfig":
    """A fresh GPTConfig.preset("tiny") (2 layers, 2 heads, 64 wide, block 32, vocab 65)."""
    from gpt.config import GPTConfig

    return GPTConfig.preset("tiny")


@dataclass(frozen=True)
class TinyRun:
    """A finished run folder written by trainers.trainer.Trainer, as the app finds real runs."""

    root: Path  # checkpoints root (use as NANOLENS_CHECKPOINTS); holds only this run
    run_dir: Path  # root / "tiny-run": config.json, metrics.jsonl, status.json, latest/, best/, snapshots/
    data: str  # what it trained on: the path of Tiny Shakespeare, or "python-docs" where that is absent
    text: str  # the training text; every character of it is in the tokenizer's vocabulary
    iters: tuple[int, ...]  # iterations with a snapshot: (0, 10, 25, 30)

    @property
    def latest(self) -> Path:
        return self.run_dir / "latest"

    @property
    def best(self) -> Path:
        return self.run_dir / "best"

    def snapshot(self, it: int) -> Path:
        return self.run_dir / "snapshots" / f"iter_{it:07d}"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The "tiny" preset trained for 30 iterations on CPU by the real trainer (~2 s), evaluated every
    10, saved as `<root>/tiny-run`. Shared by the whole session: treat it as read-only."""
    from gpt.checkpoint import list_snapshots
    from trainers.config import TrainConfig
    from trainers.data import load_text
    from trainers.trainer import Callbacks, Trainer

    data = str(SHAKESPEARE) if SHAKESPEARE.is_file() else "python-docs"
    root = tmp_path_factory.mktemp("checkpoints")
    cfg = TrainConfig.from_preset("tiny", data=data, name="tiny-run", root=str(root), max_iters=30,
                                  eval_interval=10, device="cpu", threads=1, seed=1337)
    status = Trainer(cfg, callbacks=Callbacks(on_message=lambda _msg: None)).fit()
    text, _source = load_text(data, log=lambda _msg: None)
    assert status["state"] == "finished", f"training the tiny run failed: {status}"
    run_dir = root / "tiny-run"
    iters = tuple(it for it, _ in list_snapshots(run_dir))
    return TinyRun(root=root, run_dir=run_dir, data=data, text=text, iters=iters)


# -- background jobs (analysis, tuned-lens fit, SAE) on a copy of the tiny run ----------------------
@pytest.fixture
def started() -> Iterator[list[int]]:
    """Append the pid of every detached job the test launches; teardown kills and reaps them all."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        reap(pids)


@pytest.fixture
def job_run(tmp_path: Path, tiny_checkpoint: TinyRun, started: list[int]) -> Iterator[Path]:
    """A private copy of the tiny run (tmp_path/ckpts/tiny-run; 4 snapshots). Teardown kills and
    reaps the jobs its status.json files still name, then `started`'s (a job the app launched
    writes its own pid, so a test may not know it)."""
    d = tmp_path / "ckpts" / "tiny-run"
    shutil.copytree(tiny_checkpoint.run_dir, d)
    try:
        yield d
    finally:
        reap(status_pids(d))


# -- live Streamlit servers --------------------------------------------------------------------------
AppServer = Callable[..., str]


@pytest.fixture
def app_root(tmp_path: Path, tiny_checkpoint: TinyRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private checkpoints root holding a copy of the tiny run (tests may write to it), set as the
    app's root with no bundled model and no trace-size override; every app cache is cleared before
    and after, since AppTest instances in one process share them."""
    import streamlit as st

    from app import resources

    r = tmp_path / "ckpts"
    shutil.copytree(tiny_checkpoint.run_dir, r / "tiny-run")
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(r))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    monkeypatch.delenv("NANOLENS_MAX_TRACE_BYTES", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()
    resources.clear_caches()
    yield r
    st.cache_resource.clear()
    st.cache_data.clear()
    resources.clear_caches()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """Factory: `app_server(checkpoints_root, **env) -> base URL` ("http://127.0.0.1:PORT").

    Starts app/main.py with NANOLENS_CHECKPOINTS=checkpoints_root, NANOLENS_BUNDLED="" (no bundled
    model), OMP_NUM_THREADS=1 and any extra env vars, and waits for /_stcore/health. Servers live
    for the session and are shared: the same (root, env) gives the same server. A server that does
    not start fails the test with its log. All stop (with anything they started) at session end.
    """
    servers: dict[tuple[str, tuple[tuple[str, str], ...]], StreamlitServer] = {}
    logs = tmp_path_factory.mktemp("streamlit-logs")

    def start(checkpoints_root: str | os.PathLike, **env: str) -> str:
        root = Path(checkpoints_root).resolve()
        key = (str(root), tuple(sorted(env.items())))
        if key in servers:
            return servers[key].url
        for attempt in range(3):  # the free port can be taken between bind and streamlit's listen
            server = StreamlitServer(root, logs / f"server-{len(servers)}-{attempt}.log", env)
            try:
                server.wait_healthy()
                servers[key] = server
                return server.url
            except RuntimeError as e:
                server.stop()
                if "already in use" not in str(e) or attempt == 2:
                    pytest.fail(f"the Streamlit app did not start (NANOLENS_CHECKPOINTS={root}): {e}",
                                pytrace=False)
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def live_app(app_server: AppServer, tiny_checkpoint: TinyRun) -> str:
    """Base URL of the app serving a checkpoints root that holds only the tiny run."""
    return app_server(tiny_checkpoint.root)


# -- a browser ---------------------------------------------------------------------------------------
def _no_browser(reason: str) -> None:
    msg = f"BROWSER TESTS SKIPPED: {reason}"
    if os.environ.get("NANOLENS_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " (NANOLENS_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def browser() -> Iterator["Browser"]:
    """Headless system Chromium through Playwright's sync API (Playwright cannot download one here)."""
    if not os.access(CHROMIUM, os.X_OK):
        _no_browser(f"{CHROMIUM} not found; run `make test` as root on Debian, or `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed; `make test` installs requirements-dev.txt")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception:
        pw.stop()
        raise
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture
def page(browser: "Browser", request: pytest.FixtureRequest) -> Iterator["Page"]:
    """A fresh tab (own context, 1280x900) per test; a failed test leaves test-artifacts/FAILED-<test>.png."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            try:
                screenshot(pg, "FAILED-" + re.sub(r"[^\w.-]+", "_", request.node.nodeid))
            except Exception:  # the page may be gone; the failure itself is what matters
                pass
        context.close()


# -- nothing may outlive the session -----------------------------------------------------------------
_leftovers: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a test left a thread or a process it started running (session fixtures
    are torn down by now). Threads get 5 s to finish; leftover processes are killed."""
    deadline = time.monotonic() + 5
    threads = [t for t in threading.enumerate() if t is not threading.main_thread()]
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    _leftovers.extend(f"thread {t.name!r} (daemon={t.daemon})" for t in threads if t.is_alive())
    procs = descendants(os.getpid())
    for pid, _ in procs:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        _leftovers.append(f"process {pid} ({cmd.strip()[:200]}), killed")
    kill_all(procs)
    if _leftovers and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _leftovers:
        terminalreporter.section("LEFT RUNNING AFTER THE TESTS", sep="!", red=True, bold=True)
        for line in _leftovers:
            terminalreporter.write_line(line)
        terminalreporter.write_line("Stop and join threads and processes in fixture teardown: a torch "
                                    "thread alive at exit aborts Python (exit 134).")
