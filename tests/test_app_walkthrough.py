"""The Walkthrough page in AppTest with the tiny trained run: it renders, every stage can be selected
with the selector (at several layers and heads) without an exception, the training tab shows the
two equal losses, and "Next token" runs the loop (cropping once the sequence passes block_size)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import resources
from app.views import walkthrough_stages as vs

PAGE = "screens/walkthrough.py"
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture
def at(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch):
    """AppTest of the app on the Walkthrough page, the tiny run as the only model."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tiny_checkpoint.root))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    resources.clear_caches()
    app = AppTest.from_file(MAIN, default_timeout=60)
    app.switch_page(PAGE)
    app.run()
    assert not app.exception, app.exception
    yield app
    resources.clear_caches()


def _texts(app) -> str:
    elements = [*app.markdown, *app.caption, *app.subheader, *app.info]
    return "\n".join(e.value for e in elements if isinstance(e.value, str))


def test_renders_with_the_diagram_and_selectors(at) -> None:
    assert at.title[0].value == "Walkthrough"
    assert at.selectbox(key="wt_stage").value == "tok_emb"
    assert at.session_state["wt_tab"] == "Pipeline"
    text = _texts(at)
    assert "Token embedding (wte)" in text and "(1, 32, 64)" in text  # the default prompt is cut to block 32
    assert re.search(r"ready in \d+ ms", text), "the page must show how long it took"
    assert [b.proto.label for b in at.get("download_button")][-3:] == ["Data (NPZ)", "Data (CSV)", "Open as notebook"]


def test_every_stage_can_be_selected(at) -> None:
    cfg = resources.load_model(at.session_state["model_ref"]).config
    for stage in vs.STAGE_KEYS:
        at.selectbox(key="wt_stage").set_value(stage).run()
        assert not at.exception, f"stage {stage}: {at.exception}"
        assert at.subheader[0].value.startswith(vs.STAGES[stage].label), stage
    # the in-block stages at the last layer and the attention stage at the last head (the layer
    # selector is live only for in-block stages, the head selector only for attention)
    assert at.selectbox(key="layer").disabled and at.selectbox(key="head").disabled
    at.selectbox(key="wt_stage").set_value("attn").run()
    at.selectbox(key="layer").set_value(cfg.n_layer - 1).run()
    at.selectbox(key="head").set_value(cfg.n_head - 1).run()
    for stage in ("attn", "mlp", "resid_mid"):
        at.selectbox(key="wt_stage").set_value(stage).run()
        assert not at.exception, f"stage {stage} at the last layer: {at.exception}"
        assert at.subheader[0].value.endswith(f"block {cfg.n_layer - 1}")
    at.selectbox(key="wt_stage").set_value("attn").run()
    headings = [m.value for m in at.markdown]
    assert any("q·kᵀ" in h for h in headings), headings
    assert at.subheader[1].value == f"Inside attention: head {cfg.n_head - 1} of block {cfg.n_layer - 1}"


def test_a_diagram_click_selects_a_stage(at) -> None:
    """The on_select handler reads the chart's selection; AppTest cannot click, so set what the
    browser would send (a point whose customdata is the box's key) and run the handler's path."""
    from app.views.walkthrough import pick

    assert pick({"selection": {"points": [{"customdata": "block:1"}]}}, "tok_emb", 2) == ("resid_post", 1)
    assert pick({"selection": {"points": [{"customdata": ["attn"]}]}}, "ln1", 2) == ("attn", None)


def test_training_tab_shows_equal_losses(at) -> None:
    at.session_state["wt_tab"] = "Training"
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: float(m.value) for m in at.metric}
    mean = metrics["mean of the per-position losses"]
    assert mean == pytest.approx(metrics["loss returned by forward(x, y)"], abs=1e-4)
    assert 0 < mean < 10
    table = at.dataframe[0].value
    assert len(table) == 31 and table["target y"].tolist()[:-1] == table["input x"].tolist()[1:]


def test_generation_next_crops_past_block_size(at) -> None:
    at.session_state["wt_tab"] = "Generation"
    at.run()
    assert not at.exception, at.exception
    assert any("nothing to crop" not in i.value and "crop" in i.value for i in at.info)  # 57 chars > block 32
    at.button(key="wt_next").click().run()
    assert not at.exception, at.exception
    text = _texts(at)
    assert "crop to the last 32" in text and "**4 · sample**" in text
    n = len(at.session_state["_wt_gen"]["ids"])
    at.button(key="wt_next").click().run()
    assert len(at.session_state["_wt_gen"]["ids"]) == n + 1
    at.button(key="wt_back").click().run()
    assert len(at.session_state["_wt_gen"]["ids"]) == n and not at.exception
    assert any("Press **Next token**" in i.value for i in at.info)  # the undone step is no longer shown


def test_a_one_token_prompt_still_renders_every_tab(at) -> None:
    at.text_area(key="prompt").set_value("R").run()
    for tab in ("Pipeline", "Training", "Generation"):
        at.session_state["wt_tab"] = tab
        at.run()
        assert not at.exception, f"{tab}: {at.exception}"
    at.session_state["wt_tab"] = "Training"
    at.run()
    assert any("at least two tokens" in i.value for i in at.info)
    at.session_state["wt_tab"] = "Pipeline"
    at.run()
    at.selectbox(key="wt_stage").set_value("attn").run()
    assert not at.exception and "(1, 1, 64)" in _texts(at)


def test_the_pipeline_shows_the_glyph_legend(at) -> None:
    """Issue 12, point 11: the one token legend under the stage's values, ids stage included."""
    from app.views.tokens import glyph_legend

    assert sum(m.value == glyph_legend() for m in at.markdown) == 1
    at.selectbox(key="wt_stage").set_value("ids").run()
    assert not at.exception and sum(m.value == glyph_legend() for m in at.markdown) == 1
