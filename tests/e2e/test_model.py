"""Model page in Chromium: the chosen tab of "Choose what to inspect" survives every rerun (issue 12,
point 1). Each test first makes a message appear (a failed load) and then does the thing that made
the tabs jump back to "Bundled model and runs": Load a bad path, type a path and press Enter, choose
an upload file. Screenshot: test-artifacts/model-tabs.png.

Checks use Playwright's `expect`, which retries until the page agrees (a rerun on two busy cores
can start later than wait_for_app's settle time)."""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app
from tests.e2e.test_attention import patient_expect  # noqa: F401 (fixture)

PATH_TAB, UPLOAD_TAB = "Path", "Upload"
PATH_GO, UPLOAD_GO = "Load this path", "Load the upload"
MODEL_URL = "/model"


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    wait_for_app(page)
    expect_tab(page, name)


def expect_tab(page, name: str) -> None:
    """`name` is the selected tab, and its content (not the first tab's) is what shows."""
    expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")
    button = PATH_GO if name == PATH_TAB else UPLOAD_GO
    expect(page.get_by_role("button", name=button)).to_be_visible()


def load_path(page, path: str, press_enter: bool = False) -> None:
    box = page.get_by_role("textbox", name="Path on this machine")
    box.fill(path)
    if press_enter:
        box.press("Enter")
    else:
        page.get_by_role("button", name=PATH_GO).click()
    wait_for_app(page)


def test_failed_path_load_keeps_the_path_tab(page, live_app: str, tmp_path: Path) -> None:
    open_app(page, live_app + MODEL_URL)
    open_tab(page, PATH_TAB)
    load_path(page, str(tmp_path / "does-not-exist"))
    expect(page.locator("[data-testid='stAlert']").filter(has_text="Could not load")).to_be_visible()
    expect_tab(page, PATH_TAB)  # the error appeared above the button: the tab must not jump
    assert_no_exception(page)
    screenshot(page, "model-tabs")


def test_enter_in_the_path_box_keeps_the_path_tab(page, live_app: str, tmp_path: Path,
                                                  tiny_checkpoint) -> None:
    open_app(page, live_app + MODEL_URL)
    open_tab(page, PATH_TAB)
    load_path(page, str(tmp_path / "does-not-exist"))
    expect_tab(page, PATH_TAB)
    # the error goes away on the next rerun; Enter loads the path, as the Load button does
    load_path(page, str(tiny_checkpoint.best), press_enter=True)
    expect(page.get_by_text("Now inspecting tiny-run · best")).to_be_visible()
    expect_tab(page, PATH_TAB)
    assert_no_exception(page)


def test_choosing_an_upload_file_keeps_the_upload_tab(page, live_app: str, tmp_path: Path) -> None:
    open_app(page, live_app + MODEL_URL)
    open_tab(page, UPLOAD_TAB)
    files = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    junk = tmp_path / "ckpt.pt"
    junk.write_bytes(b"not a checkpoint")
    files.set_input_files(str(junk))
    wait_for_app(page)
    expect_tab(page, UPLOAD_TAB)
    page.get_by_role("button", name=UPLOAD_GO).click()
    wait_for_app(page)
    expect(page.locator("[data-testid='stAlert']").filter(has_text="Could not")).to_be_visible()
    expect_tab(page, UPLOAD_TAB)
    # choosing another file reruns the page and the error goes away: the tab stays
    other = tmp_path / "meta.pkl"
    other.write_bytes(b"also not a pickle")
    files.set_input_files([str(junk), str(other)])
    wait_for_app(page)
    expect_tab(page, UPLOAD_TAB)
    assert_no_exception(page)
