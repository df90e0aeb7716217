"""Train in a real browser: the form starts on the bundled model's corpus with a time estimate
timed on this machine; start a tiny run from the Train page, watch the live chart gain points
without touching the page and an ETA from the run's own rate, reload (the run goes on, the chart
keeps growing), stop it from the page: the sample is then the final checkpoint's.
Screenshots: test-artifacts/train-form.png, train-running.png, train.png and model.png."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

CAPTION = re.compile(r"(\w+) · iter (\d+) / (\d+) · (\d+) points")


def status_line(page) -> tuple[str, int, int]:
    """(state, iter, points) from the live panel's caption, as the browser shows it now."""
    loc = page.get_by_text(CAPTION).first
    loc.wait_for(timeout=60_000)
    m = CAPTION.search(loc.inner_text())
    assert m, loc.inner_text()
    return m.group(1), int(m.group(2)), int(m.group(4))


def wait_until(page, pred, what: str, timeout_s: float = 90) -> tuple[str, int, int]:
    """Poll the caption (the page is only read, never touched) until pred(state, iter, points)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = status_line(page)
        except Exception:  # the fragment may be re-rendering the caption right now
            last = last
        if last and pred(*last):
            return last
        page.wait_for_timeout(500)
    raise AssertionError(f"timed out waiting for {what}; last caption: {last}")


@pytest.fixture
def train_root(tmp_path: Path):
    root = tmp_path / "ckpts"
    root.mkdir()
    yield root
    from trainers import runs

    for r in runs.list_runs(root):  # never leave a trainer behind (they are detached processes)
        pid = r.get("pid")
        if pid and runs.pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_train_live_reload_stop(page, app_server, train_root: Path) -> None:
    url = app_server(train_root, NANOLENS_BUNDLED="")
    open_app(page, url + "/train")
    assert_no_exception(page)
    page.get_by_text(re.compile(r"Training uses \d+ threads?, leaving")).first.wait_for()
    assert page.get_by_text("No runs yet").count() == 1
    page.get_by_text(re.compile(r"Timed here: \d+ training steps of this model on \d+ threads?")).first.wait_for()
    screenshot(page, "train-form")  # the estimate and the Data default, as a new user sees them

    iters = page.get_by_label("Iterations", exact=True)
    iters.fill("20000")  # far more than it will do: it must still be going after the reload
    iters.press("Enter")
    wait_for_app(page)
    page.get_by_label("Eval every", exact=True).fill("50")
    page.get_by_label("Eval every", exact=True).press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Start training").click()
    wait_for_app(page)
    assert_no_exception(page)
    # Tiny Shakespeare (the bundled model's corpus) is at hand offline here: the form's default
    page.get_by_text(re.compile("Started run tiny-(shakespeare|python-docs)-")).first.wait_for()

    # the chart gains points on its own
    _, _, p0 = wait_until(page, lambda s, it, p: s == "running" and p > 0, "the first losses")
    _, it1, p1 = wait_until(page, lambda s, it, p: p > p0 + 5, "the chart to grow without a touch")
    # past its first steps the ETA is the run's own measured figure, not "—"
    page.get_by_text(re.compile(r"· ETA \d+ (s|min|h)")).first.wait_for(timeout=30_000)
    screenshot(page, "train-running")
    # the fragment redraws the chart every second: wait for it rather than catch it mid-redraw
    expect(page.locator("[data-testid='stPlotlyChart']").first).to_be_visible(timeout=15_000)

    # a reload is a new session; the run is a detached process and goes on
    page.reload(wait_until="domcontentloaded")
    wait_for_app(page)
    assert_no_exception(page)
    state, it2, p2 = wait_until(page, lambda s, it, p: s == "running" and it > it1, "the run after reload")
    wait_until(page, lambda s, it, p: p > p2, "the chart to keep growing after reload")
    # drawn after the chart, once the run's first checkpoint is there: wait for it, do not race it
    expect(page.get_by_text(re.compile(r"Sample from the latest checkpoint"))).to_have_count(1, timeout=30_000)

    page.get_by_role("button", name="Stop").click()
    _, it_stop, _ = wait_until(page, lambda s, it, p: s == "stopped", "the run to stop", timeout_s=60)
    wait_for_app(page)
    assert_no_exception(page)
    # nothing polls a stopped run: the sample must already be the checkpoint it stopped at (issue 12)
    expect(page.get_by_text(re.compile(rf"Sample from the latest checkpoint \(iter {it_stop}, "))).to_have_count(1)
    table = page.locator("[data-testid='stDataFrame']").first
    table.wait_for()
    page.get_by_text("stopped at iter").first.wait_for()  # the trainer's own message
    assert page.get_by_role("button", name="Resume").count() == 1
    page.wait_for_timeout(2500)  # no more polling: the caption must not change any more
    assert status_line(page)[0] == "stopped"
    page.set_viewport_size({"width": 1280, "height": 1800})  # Streamlit scrolls inside the page:
    wait_for_app(page)  # a tall viewport is what gets the whole page into the screenshot
    screenshot(page, "train")

    page.set_viewport_size({"width": 1280, "height": 1600})
    open_app(page, url + "/model")  # the stopped run is now the model to inspect
    assert_no_exception(page)
    page.get_by_text("Iterations trained").first.wait_for()
    assert page.get_by_text("No model yet").count() == 0
    screenshot(page, "model")
