"""The Patch page under AppTest with the tiny trained run: it renders, a sweep draws the heatmap,
and each bad input (different token lengths, unknown characters, equal metrics) gets its message."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def open_patch(clean: str, corrupt: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("screens/patch.py")
    at.session_state["pt_clean"], at.session_state["pt_corrupt"] = clean, corrupt
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def run_sweep(at: AppTest, site: str = "resid_pre", answers: tuple[str, str] = ("e", "t")) -> AppTest:
    at.text_input(key="pt_ans_Clean answer").set_value(answers[0])
    at.text_input(key="pt_ans_Corrupted answer").set_value(answers[1])
    at.selectbox(key="pt_site").set_value(site)
    [b for b in at.button if b.label == "Run the sweep"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.error)


def test_sweep_draws_a_layer_by_position_map(app_root: Path) -> None:
    at = run_sweep(open_patch("To be, or not", "To be, or nut"))
    assert not at.error, errors(at)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["data"][0]["type"] == "scatter" and fig["data"][0]["marker"]["symbol"] == "square"
    assert len(fig["data"][0]["x"]) == 2 * len("To be, or not")  # tiny run: 2 layers x T positions


def test_head_site_draws_layer_by_head(app_root: Path) -> None:
    at = run_sweep(open_patch("To be, or not", "To be, or nut"), "head")
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert set(fig["data"][0]["x"]) == {"H0", "H1"}


def test_swap_helper_replaces_one_token(app_root: Path) -> None:
    at = open_patch("To be", "To be")
    at.number_input(key="pt_swap_pos").set_value(4)
    at.text_input(key="pt_swap_new").set_value("a")
    [b for b in at.button if b.label == "Swap"][0].click().run()
    assert at.session_state["pt_corrupt"] == "To ba"


def test_different_lengths_get_their_message(app_root: Path) -> None:
    at = run_sweep(open_patch("To be, or not", "To be"))
    assert "need the same number of tokens" in errors(at)


def test_answer_of_two_tokens_gets_its_message(app_root: Path) -> None:
    at = run_sweep(open_patch("To be, or not", "To be, or nut"), answers=("ee", "t"))
    assert "must be exactly one token" in errors(at)


def test_unknown_characters_get_their_message(app_root: Path) -> None:
    at = open_patch("To be, or not", "To be, or n€t")
    assert "corrupted prompt" in errors(at)
    assert not at.get("plotly_chart")


def test_identical_prompts_say_there_is_nothing_to_normalize(app_root: Path) -> None:
    at = run_sweep(open_patch("To be, or not", "To be, or not"), answers=("e", "e"))
    assert "same metric" in errors(at)
