"""The Features page in Chromium: train a tiny SAE from the page, watch its live chart grow without
touching the page, then open a feature and see its top examples shaded over their tokens.
Screenshots: test-artifacts/features-training.png and features.png."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, wait_for_app
from tests.e2e.test_attention import full_screenshot, patient_expect  # noqa: F401 (fixture)

HOOK = "blocks.1.hook_resid_post"
STEP = re.compile(r"running: step (\d+)/(\d+)")


@pytest.fixture
def sae_root(tmp_path: Path, tiny_checkpoint):
    root = tmp_path / "ckpts"
    shutil.copytree(tiny_checkpoint.run_dir, root / "tiny-run")
    yield root
    status = root / "tiny-run" / "sae" / HOOK / "status.json"  # never leave the job behind
    pid = json.loads(status.read_text()).get("pid") if status.is_file() else None
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def chart_points(page) -> int:
    """Markers drawn in the live chart (0 while it is not there)."""
    return page.locator("[data-testid='stPlotlyChart'] .scatterlayer .point").count()


def test_train_an_sae_watch_it_and_open_a_feature(page, app_server, sae_root: Path) -> None:
    url = app_server(sae_root, NANOLENS_BUNDLED="")
    open_app(page, url + "/features")
    assert_no_exception(page)
    expect(page.get_by_text("No SAE for this model yet")).to_have_count(1)
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("400")
    steps.press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Train SAE").click()
    # the chart grows while nobody touches the page (the panel polls every second)
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        loc = page.get_by_text(STEP)
        if loc.count():
            with contextlib.suppress(Exception):
                seen.append((int(STEP.search(loc.first.inner_text()).group(1)), chart_points(page)))
        if len(seen) >= 2 and seen[-1][0] > seen[0][0] and seen[-1][1] > seen[0][1] > 0:
            break
        if page.get_by_text(re.compile(r"finished: trained")).count():
            break
        page.wait_for_timeout(300)
    assert any(p > 0 for _, p in seen), f"the live chart never showed points: {seen}"
    assert seen[-1][0] > seen[0][0] and seen[-1][1] > seen[0][1], f"the chart did not grow: {seen}"
    full_screenshot(page, "features-training")
    page.get_by_text(re.compile(r"finished: trained 400 steps")).first.wait_for(timeout=240_000)
    wait_for_app(page)
    assert_no_exception(page)

    # the SAE is listed now: open a feature and read its top examples
    expect(page.get_by_role("heading", name="Feature list")).to_have_count(1)
    box = page.get_by_label("Feature", exact=True)
    box.fill("3")
    box.press("Enter")
    wait_for_app(page)
    expect(page.get_by_role("heading", name="Feature 3")).to_have_count(1)
    expect(page.get_by_text("Top held-out examples")).to_have_count(1)
    shaded = page.locator("span[title*='activation=']")
    assert shaded.count() > 20, "the top examples and the prompt should be shaded token by token"
    assert_no_exception(page)
    full_screenshot(page, "features")
