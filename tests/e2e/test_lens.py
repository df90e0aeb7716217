"""The Layers page in a browser: on a copy of the tiny run with no tuned lens, click "Fit tuned lens",
watch the fit's progress, and see the tuned lens appear beside the logit lens with the three-measure
chart. Saves test-artifacts/layers-tuned-lens.png (the
two lenses) and layers-lens-measures.png (the chart). The fit it starts is killed and reaped."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal

import pytest

from gpt import tuned_lens as tl
from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app


@pytest.fixture
def lens_url(app_server, tiny_checkpoint, tmp_path_factory):
    """(Layers URL, run folder) of a server whose only run is a private copy of the tiny run."""
    root = tmp_path_factory.mktemp("lens-e2e")
    run = root / "tiny-run"
    shutil.copytree(tiny_checkpoint.run_dir, run)
    yield app_server(root, NANOLENS_BUNDLED="") + "/layers", run
    status = tl.lens_dir(run) / "status.json"
    pid = json.loads(status.read_text()).get("pid") if status.is_file() else None
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def chart(page, title: str):
    return page.locator("[data-testid='stPlotlyChart']").filter(has=page.locator(".gtitle", has_text=title))


def test_fit_from_the_app_and_see_the_tuned_lens(page, lens_url) -> None:
    url, run = lens_url
    open_app(page, url)
    assert_no_exception(page)
    chart(page, "logit lens").first.wait_for()
    assert chart(page, "tuned lens").count() == 0
    page.get_by_text("No tuned lens for this model yet").wait_for()
    page.get_by_role("button", name="Fit tuned lens").click()
    page.get_by_text("Tuned lens fit").first.wait_for(timeout=60_000)  # the panel polls the fit's status
    chart(page, "tuned lens: top next-token guess").first.wait_for(timeout=240_000)
    wait_for_app(page)
    assert_no_exception(page)
    assert chart(page, "per layer, mean over the prompt").count() == 1
    page.get_by_text("Held-out KL per layer").wait_for()
    assert tl.load_lens(tl.lens_dir(run)).meta["checkpoint"] == "latest"
    for name, title in (("layers-tuned-lens", "tuned lens: top next-token guess"),
                        ("layers-lens-measures", "per layer, mean over the prompt")):
        chart(page, title).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # let plotly finish drawing before the screenshot
        assert screenshot(page, name).stat().st_size > 10_000


def test_the_bundled_model_shows_its_shipped_lens(page, app_server, tmp_path_factory) -> None:
    from tests.e2e.helpers import REPO

    bundled = REPO / "checkpoints" / "shakespeare-char"
    if not (tl.lens_dir(bundled) / tl.META_FILE).is_file():
        pytest.skip(f"{bundled} has no lens/ (python -m trainers.fit_lens --run {bundled.name} writes it)")
    root = tmp_path_factory.mktemp("lens-bundled")
    shutil.copytree(bundled, root / bundled.name)  # a copy: nothing may write into the checkout
    open_app(page, app_server(root, NANOLENS_BUNDLED="") + "/layers")
    assert_no_exception(page)
    tuned = chart(page, "tuned lens: top next-token guess").first
    tuned.wait_for()
    assert chart(page, "logit lens").count() >= 1 and page.get_by_text("Fit tuned lens").count() == 0
    tuned.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    assert screenshot(page, "layers-bundled-lens").stat().st_size > 10_000
