"""Deep links (app/deeplink.py, app/main.py): a URL's model, prompt, layer, head and pos open that
view; garbage parameters fall back to the defaults with a note and never raise; the URL follows the
view; the default page also answers at its own path; and the export bar is on the inspector pages."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from app import deeplink as dl

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
BUNDLED_REL = "checkpoints/shakespeare-char"  # relative: resolved from the repository


@pytest.fixture
def root(app_root: Path) -> Path:
    return app_root


def open_link(params: dict[str, str], page: str = "screens/attention.py") -> AppTest:
    """The app opened at `page` with these query parameters, as a browser following a link would."""
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()  # AppTest finds a page by its url_path only after a first run (its docs)
    at.query_params.clear()  # what that run wrote: the link alone is in the URL now
    at.query_params.update(params)
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def warnings(at: AppTest) -> str:
    """The deep-link notes (the page's own warnings, e.g. a prompt cut to the context, left out)."""
    return "\n".join(str(w.value) for w in at.warning if w.icon == ":material/link_off:")


# -- the pure check -------------------------------------------------------------------------------------------
class FakeModel(SimpleNamespace):
    pass


def fake(n_layer: int = 4, n_head: int = 4) -> FakeModel:
    return FakeModel(config=SimpleNamespace(n_layer=n_layer, n_head=n_head), tokenizer=SimpleNamespace(kind="char"))


def encode(_loaded, text: str):
    return (tuple(range(len(text))), None) if text and "☃" not in text else (None, "unknown character ☃.")


def test_check_keeps_good_values_and_notes_each_bad_one() -> None:
    cur = fake()
    good = dl.check({"layer": "3", "head": " 1 ", "prompt": "abcdef", "pos": "5"}, lambda r: cur, cur, encode)
    assert good.values == {"layer": 3, "head": 1, "prompt": "abcdef", "pos": 5, "ids": tuple(range(6))}
    assert good.notes == []
    bad = dl.check({"layer": "99", "head": "-1", "pos": "x1", "prompt": "a☃"}, lambda r: cur, cur, encode, "abc")
    assert bad.values == {}
    assert len(bad.notes) == 4 and "layer=99" in bad.notes[1] and "0…3" in bad.notes[1]
    assert "head=-1" in bad.notes[2] and "not a whole number" in bad.notes[3]
    assert "prompt cannot be used" in bad.notes[0] and "☃" in bad.notes[0]
    far = dl.check({"pos": "3"}, lambda r: cur, cur, encode, "ab")  # the session's prompt has 2 tokens
    assert far.values == {} and "outside the prompt's tokens (0…1)" in far.notes[0]


def test_check_never_raises_on_a_model_that_fails() -> None:
    def boom(ref: str):
        raise RuntimeError("not a checkpoint")

    c = dl.check({"model": "/no/such/thing", "layer": "1"}, boom, fake(), encode)
    assert "cannot be loaded" in c.notes[0] and c.values == {"layer": 1}
    c = dl.check({"model": BUNDLED_REL}, boom, None, encode)  # it exists, but its load fails
    assert "not a checkpoint" in c.notes[0]
    c = dl.check({"model": "x", "prompt": "ab"}, boom, None, encode)
    assert "No model is loaded" in c.notes[-1]
    assert dl.resolve_model(BUNDLED_REL) == str((Path(MAIN).parents[1] / BUNDLED_REL).resolve())
    assert dl.resolve_model("   ") is None


def test_link_replaces_the_page_path_and_encodes_the_prompt() -> None:
    url = dl.link("http://localhost:8501/layers?x=1", "attention", {"prompt": "a b&c\n", "layer": "1"},
                  ["attention", "layers"])
    assert url == "http://localhost:8501/attention?prompt=a+b%26c%0A&layer=1"
    assert dl.link("http://h:1/", "home", {}, ["home"]) == "http://h:1/home"


# -- in the app ---------------------------------------------------------------------------------------------
def test_a_link_opens_that_view(root: Path) -> None:
    at = open_link({"model": BUNDLED_REL, "prompt": "ROMEO:\nWhat light", "layer": "3", "head": "2", "pos": "4"})
    assert warnings(at) == ""
    assert at.selectbox(key="layer").value == 3 and at.selectbox(key="head").value == 2  # the bundled model's
    assert at.text_area(key="prompt").value == "ROMEO:\nWhat light"
    assert at.selectbox(key="attn_query").value == 4
    assert [h.value for h in at.header] == ["layer 3, head 2"]
    assert at.session_state["model_ref"].endswith("shakespeare-char")
    assert at.query_params["layer"] == "3" and at.query_params["pos"] == "4"  # the URL keeps the view
    at.selectbox(key="head").set_value(1).run()  # the URL follows the user
    assert at.query_params["head"] == "1" and not at.exception
    at.switch_page("screens/next_token.py")
    at.run()
    assert at.selectbox(key="nt_pos").value == 4 and not warnings(at)


@pytest.mark.parametrize("params", [
    {"model": "/nowhere/at/all", "layer": "99", "head": "-1", "pos": "1e9", "prompt": "☃ snow"},
    {"model": "", "layer": "", "head": "💥", "pos": "-3", "prompt": ""},
    {"layer": "1; DROP TABLE", "head": "0x1", "pos": "NaN", "prompt": "x" * 5000},
])
def test_garbage_parameters_fall_back_with_a_note(root: Path, params: dict[str, str]) -> None:
    at = open_link(params)
    assert warnings(at)  # one note per bad parameter, and the page still renders
    assert at.selectbox(key="layer").value == 0 and at.selectbox(key="head").value == 0
    assert [h.value for h in at.header] == ["layer 0, head 0"]


def test_the_note_names_what_was_wrong(root: Path) -> None:
    at = open_link({"model": "/nowhere/at/all", "layer": "99", "prompt": "☃"})
    text = warnings(at)
    assert "/nowhere/at/all" in text and "layer=99" in text and "prompt cannot be used" in text
    at.run()  # shown once: a rerun with the same URL applies nothing again
    assert warnings(at) == ""


def test_the_default_page_has_its_own_path_and_a_link(root: Path) -> None:
    at = open_link({}, page="screens/home.py")
    assert at.title[0].value == "nanolens"
    link = at.sidebar.code[0].value  # the "Link to this view" box (no browser here: a path, not a full URL)
    assert link.startswith("/home?model=") and "&layer=0&head=0" in link
    assert at.query_params["model"] == at.session_state["model_ref"]


@pytest.mark.parametrize("page", ["layers", "attention", "next_token", "attribution"])
def test_inspector_pages_offer_the_export_bar(root: Path, page: str) -> None:
    at = open_link({}, page=f"screens/{page}.py")
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[-3:] == ["Data (NPZ)", "Data (CSV)", "Open as notebook"]


def test_the_csv_zip_holds_one_file_per_table_small_enough() -> None:
    import io
    import zipfile

    import numpy as np

    from app import components, exporting

    small = exporting.table("a", np.arange(3.0), ("x", ["0", "1", "2"]))
    big = exporting.table("b", np.zeros(components.CSV_MAX_CELLS + 1), ("x", range(components.CSV_MAX_CELLS + 1)))
    with zipfile.ZipFile(io.BytesIO(components._csv_zip([small, big]))) as z:
        assert z.namelist() == ["a.csv"] and z.read("a.csv") == exporting.to_csv(small)
