"""The Timeline page in Chromium: moving the snapshot slider replays the prompt at another snapshot
(the caption and the heatmap change), Play walks to the last snapshot by itself and stops, and a
click on a line of the history chart opens that head. Timeline 2.0 (issue 16): on a run with
analysis results the curves and the phase-change marker are drawn and a click on a line opens the
head and its top examples, on a synthetic analysis and on the bundled induction model's own. Saves
test-artifacts/timeline.png, timeline-analysis.png and timeline-induction.png."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.e2e.helpers import REPO, assert_no_exception, open_app, screenshot, wait_for_app

HEADING = re.compile(r"^iter (\d+)$")


@pytest.fixture(scope="module")
def url(app_server, tiny_checkpoint) -> str:
    """The Timeline page of a server whose only run is the tiny run (and no bundled model)."""
    return app_server(tiny_checkpoint.root, NANOLENS_BUNDLED="") + "/timeline"


def shown_iter(page) -> int:
    """The iteration in the replay's heading ("iter N")."""
    h = page.locator("h4").filter(has_text=HEADING)
    h.first.wait_for()
    return int(HEADING.match(h.first.inner_text().strip()).group(1))


def step_slider_to(page, target: int, iters: tuple[int, ...]) -> None:
    """Move the snapshot slider to `target` with the keyboard, one snapshot per key press, waiting
    for each replay (each press is a rerun that redraws the slider)."""
    for _ in range(len(iters)):
        now = shown_iter(page)
        if now == target:
            return
        key = "ArrowLeft" if target < now else "ArrowRight"
        page.get_by_role("slider").first.press(key)
        page.wait_for_function("([sel, old]) => { const h = [...document.querySelectorAll(sel)]"
                               ".find(e => /^iter \\d+$/.test(e.innerText.trim()));"
                               " return h && h.innerText.trim() !== old; }", arg=["h4", f"iter {now}"])
        wait_for_app(page)
    assert shown_iter(page) == target


def heatmap(page):
    """The selected head's pattern heatmap of the replayed snapshot."""
    return page.locator("[data-testid='stPlotlyChart']").filter(
        has=page.locator(".gtitle", has_text="attention pattern")).first


def lens_texts(page) -> list[str]:
    """The token texts drawn in the replayed snapshot's logit-lens cells."""
    lens = page.locator("[data-testid='stPlotlyChart']").filter(has=page.locator(".gtitle", has_text="logit lens"))
    return lens.first.evaluate("e => [...e.querySelectorAll('.heatmaplayer text')].map(t => t.textContent)")


def test_slider_replays_another_snapshot(page, url: str, tiny_checkpoint) -> None:
    iters = tiny_checkpoint.iters
    open_app(page, url)
    assert_no_exception(page)
    assert shown_iter(page) == iters[-1]
    heatmap(page).scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # let plotly finish drawing before the screenshot
    before = heatmap(page).screenshot()

    step_slider_to(page, iters[0], iters)
    assert_no_exception(page)
    heatmap(page).scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    after = heatmap(page).screenshot()
    assert after != before, "the heatmap did not change with the snapshot"
    assert page.get_by_text(f"iter {iters[0]}: figures in").count() == 1
    # issue 12, point 13: the lens carries its token texts (2 layers + embed, the prompt's last 32 positions)
    texts = lens_texts(page)
    assert len(texts) == 3 * 32 and all(len(t) == 1 for t in texts), texts[:5]
    page.get_by_text("All heads at the last snapshot").click()  # show the head table in the artifact
    page.locator("[data-testid='stDataFrame']").first.wait_for()
    # Streamlit scrolls inside its own container, so a "full page" shot is one viewport: make the
    # viewport as tall as the page for the artifact.
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(800)
    shot = screenshot(page, "timeline")
    assert shot.stat().st_size > 10_000


def test_play_walks_to_the_end_and_stops(page, url: str, tiny_checkpoint) -> None:
    iters = tiny_checkpoint.iters
    open_app(page, url)
    step_slider_to(page, iters[0], iters)
    page.get_by_role("button", name=re.compile("Play")).click()
    seen = set()
    for _ in range(100):  # 0.6 s per snapshot; give it up to 20 s on a busy machine
        page.wait_for_timeout(200)
        try:
            seen.add(shown_iter(page))
        except Exception:  # the heading is being redrawn
            continue
        if page.get_by_role("button", name=re.compile("Play")).count() and iters[-1] in seen:
            break
    assert iters[-1] in seen and len(seen) >= 2, f"playing showed {sorted(seen)}"
    wait_for_app(page)
    assert shown_iter(page) == iters[-1]
    assert page.get_by_role("button", name=re.compile("Play")).count() == 1  # stopped: Play again
    assert_no_exception(page)


def test_clicking_a_line_opens_that_head(page, url: str) -> None:
    open_app(page, url)
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    chart.scroll_into_view_if_needed()
    target = chart.locator("path[role='graphics-symbol'][aria-label*='L1H1']").first
    target.wait_for(state="attached")
    box = target.bounding_box()
    assert box is not None, "the L1H1 point is not drawn"
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    wait_for_app(page, settle_ms=600)
    assert_no_exception(page)
    head = page.locator("[data-testid='stMetric']").filter(has_text="Head")
    assert "L1H1" in head.inner_text()


# -- issue 16: Timeline 2.0 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analysed(app_server, tiny_checkpoint, tmp_path_factory):
    """(Timeline URL, run) of a server whose only run is a copy of the tiny run with analysis results
    (tests/analysis_fixture.py: L1H1's induction score jumps between its 2nd and 3rd snapshot)."""
    from tests.analysis_fixture import analysed_run

    run = analysed_run(tmp_path_factory.mktemp("analysed"), tiny_checkpoint.run_dir, tiny_checkpoint.text)
    return app_server(run.root, NANOLENS_BUNDLED="") + "/timeline", run


def test_analysis_marker_curves_and_a_click_on_a_line(page, analysed) -> None:
    url, run = analysed
    open_app(page, url)
    assert_no_exception(page)
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    chart.scroll_into_view_if_needed()
    S, L, H = run.scores["induction_random"].shape
    points = chart.locator("path[role='graphics-symbol'][aria-label*='; iter: ']")  # the clickable points
    points.first.wait_for(state="attached")
    assert points.count() == S * L * H  # a point per head and snapshot, on one line per head
    band = chart.locator("path[role='graphics-symbol'][aria-label*=\"L1H1's induction score rose\"]")
    assert band.count() >= 1, "the phase-change band is not drawn"
    assert chart.locator("text", has_text="L1H1 ↑").count() == 1  # the band's tag
    assert page.get_by_text("Phase change:").count() == 1 and page.get_by_text("Loss bump:").count() == 1
    assert page.get_by_text(re.compile(r"L1H1's induction score rose from [\d.]+ to [\d.]+ between iter "
                                       rf"{run.iters[1]} and {run.iters[2]}")).count() == 1
    assert "L0H0" in page.locator("[data-testid='stMetric']").filter(has_text="Head").inner_text()

    # L1H1's last point stands well above every other head's, so the nearest point is its own
    target = chart.locator(f"path[role='graphics-symbol'][aria-label$='head: L1H1; iter: {run.iters[-1]}']")
    box = target.bounding_box()
    assert box is not None, "the L1H1 point is not drawn"
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    wait_for_app(page, settle_ms=600)
    assert_no_exception(page)
    assert "L1H1" in page.locator("[data-testid='stMetric']").filter(has_text="Head").inner_text()
    heading = page.get_by_role("heading", name="L1H1's top validation examples")
    heading.wait_for()
    heading.scroll_into_view_if_needed()
    assert page.get_by_text(re.compile(r"^L1H1 at iter \d+, from query position \d+")).count() == 1
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(800)
    assert screenshot(page, "timeline-analysis").stat().st_size > 10_000


INDUCTION = REPO / "checkpoints" / "shakespeare-induction"  # the bundled model that forms an induction head
PHASE = re.compile(r"(L\d+H\d+)'s induction score rose from ([\d.]+) to ([\d.]+) between iter (\d+) and (\d+)")


@pytest.fixture(scope="module")
def induction_url(app_server, tmp_path_factory) -> str:
    """The Timeline of a server whose only run is a copy of the bundled induction model."""
    if not (INDUCTION / "analysis" / "meta.json").is_file():
        pytest.skip(f"{INDUCTION} has no analysis/ (python -m trainers.analyze --run {INDUCTION.name} writes it)")
    root = tmp_path_factory.mktemp("induction")
    shutil.copytree(INDUCTION, root / INDUCTION.name)
    return app_server(root, NANOLENS_BUNDLED="") + "/timeline"


def test_the_induction_model_shows_its_phase_change_and_a_click_opens_the_head(page, induction_url: str) -> None:
    open_app(page, induction_url)
    assert_no_exception(page)
    said = page.get_by_text(PHASE)
    said.first.wait_for()
    head, before, after, start, end = PHASE.search(said.first.inner_text()).groups()
    assert float(before) <= 0.02 and float(after) >= 0.10, said.first.inner_text()  # the numbers
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    chart.scroll_into_view_if_needed()
    assert chart.locator("text", has_text=f"{head} ↑").count() == 1  # its band on the chart
    points = chart.locator(f"path[role='graphics-symbol'][aria-label*='head: {head}; iter: ']")
    assert points.count() >= 2
    box = points.last.bounding_box()  # the head's last snapshot: far above the heads that never formed
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    wait_for_app(page, settle_ms=600)
    assert_no_exception(page)
    assert head in page.locator("[data-testid='stMetric']").filter(has_text="Head").inner_text()
    heading = page.get_by_role("heading", name=f"{head}'s top validation examples")
    heading.wait_for()
    heading.scroll_into_view_if_needed()
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(800)
    assert screenshot(page, "timeline-induction").stat().st_size > 10_000
