"""The inspection pages under AppTest (Attention, Layers, Next token, Generate) with the tiny
trained run: each renders without an exception, changing a widget changes what is drawn, and a bad
prompt (empty, unknown characters, too long, over the memory limit) gets a message, never a crash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.views import generate as vg
from app import generation as ag
from gpt.generate import Generator
from gpt.config import GPTConfig
from gpt.model import GPT

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = {"attention": "screens/attention.py", "layers": "screens/layers.py",
         "next_token": "screens/next_token.py", "generate": "screens/generate.py"}


@pytest.fixture
def root(app_root: Path) -> Path:
    """A private checkpoints root with a copy of the tiny run (see conftest.app_root)."""
    return app_root


def open_page(page: str, prompt: str | None = "To be, or not to be") -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page(PAGES[page])
    if prompt is not None:
        at.session_state["prompt"] = prompt
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    """The plotly figures on the page, as the JSON Streamlit sends."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "info", "warning", "error", "caption", "header", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def chart_titles(at: AppTest) -> list[str]:
    return [c["layout"].get("title", {}).get("text", "") for c in charts(at)]


# -- every page renders, and its widgets change it -----------------------------------------------------
def test_attention_layer_and_head_selectors_change_the_head(root: Path) -> None:
    at = open_page("attention")
    assert [h.value for h in at.header] == ["layer 0, head 0"]
    before = charts(at)
    assert before[0]["data"][0]["x"][:3] == ["0:T", "1:o", "2:·"]  # token labels on the pattern axes
    assert at.get("vega_lite_chart"), "the all-heads grid is missing"
    assert "computed in" in texts(at)
    at.selectbox(key="layer").set_value(1).run()
    at.selectbox(key="head").set_value(1).run()
    assert not at.exception
    assert [h.value for h in at.header] == ["layer 1, head 1"]
    assert charts(at)[0]["data"][0]["z"] != before[0]["data"][0]["z"]  # another head's pattern
    assert at.session_state["layer"] == 1 and at.session_state["head"] == 1  # shared with other pages


def test_attention_query_selector_moves_the_row(root: Path) -> None:
    at = open_page("attention")
    q = at.selectbox(key="attn_query")
    assert q.value == len("To be, or not to be") - 1  # starts at the last token
    q.set_value(3).run()
    assert "Where 3:b attends" in texts(at)
    bar = [c for c in charts(at) if c["data"][0]["type"] == "bar"][0]
    assert len(bar["data"][0]["x"]) == 4  # keys 0..3


def test_attention_induction_scores_on_demand(root: Path) -> None:
    at = open_page("attention")
    n = len(charts(at))
    at.button(key="attn_induction_go").click().run()
    assert not at.exception
    assert len(charts(at)) == n + 1 and any("induction" in t for t in chart_titles(at))


def test_layers_radio_changes_the_norm_heatmap(root: Path) -> None:
    at = open_page("layers")
    assert len(charts(at)) == 5  # norms, logit lens, the lens measures, PCA, positions (no tuned lens yet)
    assert any("‖resid_pre‖" in t for t in chart_titles(at))
    at.radio(key="layers_norm").set_value("MLP output").run()
    assert not at.exception
    assert any("‖mlp_out‖" in t for t in chart_titles(at))


def test_next_token_position_and_temperature_change_the_distribution(root: Path) -> None:
    at = open_page("next_token")
    assert "How expected was each token?" in texts(at)
    assert sum("<span" in m.value for m in at.markdown) >= 2  # the strip and its legend
    before = charts(at)[0]["data"][0]
    at.selectbox(key="nt_pos").set_value(2).run()
    assert "Next-token distribution after 2:·" in texts(at)
    moved = charts(at)[0]["data"][0]
    assert moved["y"] != before["y"] or moved["x"] != before["x"]
    at.slider(key="nt_temperature").set_value(0.3).run()
    colder = charts(at)[0]["data"][0]
    assert colder["x"][0] > moved["x"][0]  # a lower temperature sharpens the top probability


def test_generate_step_back_reset_and_force(root: Path) -> None:
    at = open_page("generate")
    assert "0 new tokens" in texts(at)
    for _ in range(5):
        at.button(key="gen_step").click().run()
    assert not at.exception
    assert "5 new tokens" in texts(at) and "KV cache" in texts(at)
    assert [b.proto.label for b in at.get("download_button")][-3:] == ["Data (NPZ)", "Data (CSV)", "Open as notebook"]  # the export bar
    gen = at.session_state["gen"]
    assert len(gen["ids"]) == len(gen["prompt"]) + 5
    at.button(key="gen_back").click().run()
    assert "4 new tokens" in texts(at)
    assert len(at.session_state["gen"]["ids"]) == len(gen["prompt"]) + 4
    # force an alternative: the last token is replaced, the count stays
    force = [b for b in at.button if b.key and b.key.startswith("gen_force_")]
    assert force, "no alternative tokens offered"
    token = int(force[0].key.rsplit("_", 1)[1])
    force[0].click().run()
    state = at.session_state["gen"]
    assert state["ids"][-1] == token and state["steps"][-1].forced
    assert "4 new tokens" in texts(at) and "forced" in [s.value for s in at.subheader][0]
    at.button(key="gen_step10").click().run()
    assert "14 new tokens" in texts(at)
    at.button(key="gen_reset").click().run()
    assert "0 new tokens" in texts(at)


def test_generate_past_the_context_window_says_so(root: Path) -> None:
    at = open_page("generate", prompt="to be or not to be, that is the")  # 31 tokens; block_size 32
    at.button(key="gen_step10").click().run()
    assert not at.exception
    assert "10 new tokens" in texts(at) and "window slid" in texts(at)
    assert "The context window slid" in texts(at)


def test_generate_keeps_tokens_when_settings_change_and_restarts_on_a_new_prompt(root: Path) -> None:
    at = open_page("generate")
    for _ in range(3):
        at.button(key="gen_step").click().run()
    at.slider(key="gen_temperature").set_value(0.0).run()
    assert "3 new tokens" in texts(at)
    at.button(key="gen_step").click().run()
    assert "4 new tokens" in texts(at)
    at.text_area(key="prompt").input("Hello").run()
    assert "0 new tokens" in texts(at)


# -- the Generate page's session state (pure: app.views.generate, no AppTest) ---------------------------
@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=40)).eval()


def test_settings_map_neutral_values_to_off() -> None:
    kw = ag.Settings(temperature=0.7, top_k=0, top_p=1.0, seed=3).generator_kwargs()
    assert kw == {"temperature": 0.7, "top_k": None, "top_p": None, "seed": 3}
    assert ag.Settings(top_k=5, top_p=0.9).generator_kwargs()["top_k"] == 5


def test_sync_generator_keeps_or_resets_the_sequence(model: GPT) -> None:
    greedy = ag.Settings(temperature=0.0)
    gen, st = ag.sync_generator(None, ag.GenState.from_dict({}), model, "m", [1, 2, 3], greedy)
    for _ in range(4):
        ag.record_step(st, gen.step(), 1.0)
    assert st.n_new == 4 and gen.ids == st.ids
    # a rerun: the same objects come back
    same, st2 = ag.sync_generator(gen, ag.GenState.from_dict(st.to_dict()), model, "m", [1, 2, 3], greedy)
    assert same is gen and st2.ids == st.ids and len(st2.steps) == 4
    # the Generator is lost: rebuilt from the ids, and greedy generation continues the same way
    lost, st3 = ag.sync_generator(None, ag.GenState.from_dict(st.to_dict()), model, "m", [1, 2, 3], greedy)
    assert lost is not gen and lost.ids == st.ids
    assert lost.step().token == gen.step().token
    # other settings keep the tokens; another prompt or model starts over
    _, st4 = ag.sync_generator(gen, st2, model, "m", [1, 2, 3], ag.Settings(temperature=0.5))
    assert st4.ids == st2.ids and st4.settings.temperature == 0.5
    _, st5 = ag.sync_generator(gen, st4, model, "m", [1, 2], greedy)
    assert st5.ids == [1, 2] and st5.steps == []
    _, st6 = ag.sync_generator(gen, st2, model, "other", [1, 2, 3], greedy)
    assert st6.ids == [1, 2, 3]


def test_record_step_keeps_only_what_the_page_shows(model: GPT) -> None:
    gen = Generator(model, [1, 2], temperature=1.0, seed=0, record=True)
    st = ag.GenState(ref="m", prompt=(1, 2), ids=[1, 2])
    for _ in range(ag.KEEP_ATTENTION + 3):
        ag.record_step(st, gen.step(k=3), 1.0)
    assert all(s.logits.numel() == 0 for s in st.steps)
    kept = [s.attention is not None for s in st.steps]
    assert kept == [False] * 3 + [True] * ag.KEEP_ATTENTION
    assert st.ids == gen.ids


# -- bad prompts, on every page that takes one ---------------------------------------------------------
@pytest.mark.parametrize("page", list(PAGES))
def test_empty_prompt_shows_a_message(root: Path, page: str) -> None:
    at = open_page(page, prompt="")
    assert any("empty" in w.value for w in at.warning)
    assert not charts(at)


@pytest.mark.parametrize("page", list(PAGES))
def test_unknown_characters_are_listed_and_can_be_dropped(root: Path, page: str) -> None:
    at = open_page(page, prompt="To be ☃ or not ✓")
    msg = " ".join(e.value for e in at.error)
    assert "☃" in msg and "✓" in msg
    assert not charts(at)
    at.checkbox(key="drop_unknown").check().run()
    assert not at.exception
    assert "Dropped 2 character(s)" in texts(at)
    if page == "generate":
        at.button(key="gen_step").click().run()
    assert charts(at), "dropping the unknown characters should let the page run"


@pytest.mark.parametrize("page", list(PAGES))
def test_too_long_prompt_is_truncated_with_a_notice(root: Path, page: str) -> None:
    at = open_page(page, prompt="to be or not to be " * 10)  # 190 characters; the tiny model sees 32
    assert any("only the last 32 are used" in w.value for w in at.warning)
    if page == "attention":
        assert len(charts(at)[0]["data"][0]["x"]) == 32
    if page == "generate":
        at.button(key="gen_step").click().run()
        assert len(at.session_state["gen"]["prompt"]) == 32
    assert not at.exception


@pytest.mark.parametrize("page", ["attention", "layers", "next_token"])
def test_prompt_over_the_memory_limit_is_refused_with_the_estimate(root: Path, page: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOLENS_MAX_TRACE_BYTES", "2000")
    at = open_page(page)
    msg = " ".join(e.value for e in at.error)
    assert "would take about" in msg and "KiB" in msg
    assert not charts(at) and not at.get("vega_lite_chart")


# -- issue 12: reading the pictures ----------------------------------------------------------------------
def markdowns(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


@pytest.mark.parametrize("page", ["attention", "layers", "next_token", "generate"])
def test_every_page_that_draws_tokens_shows_the_glyph_legend(root: Path, page: str) -> None:
    """Point 11: one legend (app.views.tokens.glyph_legend), the same on every page."""
    from app.views.tokens import glyph_legend

    at = open_page(page)
    assert sum(m.value == glyph_legend() for m in at.markdown) == 1


def test_attention_explains_how_to_read_and_colours_weight_in_blue(root: Path) -> None:
    """Point 12: a "how to read this" caption, and the strip's own legend under it."""
    at = open_page("attention")
    assert any("rows = query" in c.value and "clipped at" in c.value for c in at.caption)
    assert "attention weight" in markdowns(at) and "uniform over its" in markdowns(at)


def head_table_rows(at: AppTest) -> list[int]:
    """The rows the head table's widget holds as selected (what the browser ticks)."""
    (table,) = [d for d in at.dataframe if "attn_head_table" in d.proto.id]
    key = table.proto.id.split("-", 2)[-1]  # "$$ID-<hash>-<user key>"
    return list(at.session_state[key]["selection"]["rows"])


def test_head_table_ticks_the_head_opened_elsewhere(root: Path) -> None:
    """Point 15: opening L1H1 outside the table (the grid's on_select and the selectboxes both set
    the shared layer/head) moves the table's tick to L1H1; L0H0 stays ticked no more."""
    at = open_page("attention")
    assert head_table_rows(at) == [0]  # L0H0, rows in (layer, head) order
    at.session_state["layer"], at.session_state["head"] = 1, 1  # what components.open_head does
    at.run()
    assert not at.exception and [h.value for h in at.header] == ["layer 1, head 1"]
    assert head_table_rows(at) == [3]  # L1H1 of a 2 x 2 model
    at.selectbox(key="head").set_value(0).run()
    assert head_table_rows(at) == [2]


def test_a_one_token_prompt_says_the_summary_needs_two_tokens(root: Path) -> None:
    """Point 16: no head-summary numbers for one token, but words."""
    at = open_page("attention", prompt="T")
    assert any("needs ≥2 tokens" in i.value for i in at.info)
    assert "Head table" not in [s.value for s in at.subheader]
    assert not any("entropy" in c.value and "bits ·" in c.value for c in at.caption)
    at.button(key="attn_induction_go").click().run()  # induction needs no prompt: still measurable
    assert not at.exception and "Head table" in [s.value for s in at.subheader]


def test_layers_lens_explains_the_embed_row(root: Path) -> None:
    """Point 13: the tied-embedding sentence under the lens."""
    at = open_page("layers")
    assert any("tied" in c.value and "embed" in c.value for c in at.caption)
