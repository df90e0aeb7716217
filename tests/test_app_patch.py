"""The Patch page under AppTest with the tiny trained run: it renders, a sweep draws the heatmap,
the metric and direction selectors reach the sweep (values equal gpt.patching run directly), the
answers follow their prompts, a snapshot of the run can be the source, a head cell opens on the
Attention page, and each bad input (different token lengths, unknown characters, equal metrics)
gets its message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app import catalog, resources
from gpt import patching
from gpt.checkpoint import list_snapshots, load

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


# -- metric, direction, answers, source, the Attention link ------------------------------------------
def raw_values(at: AppTest) -> dict[tuple[int, ...], float]:
    """{cell: raw metric} from the heatmap's customdata ([*cell, raw] per square)."""
    tr = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    return {tuple(int(c) for c in d[:-1]): d[-1] for d in tr["customdata"]}


def ids(at: AppTest, text: str) -> list[int]:
    return resources.load_model(at.session_state["model_ref"]).tokenizer.encode(text)


def top_text(at: AppTest, text: str) -> str:
    """The model's top next token after `text`, from a plain forward (not the page's cache)."""
    loaded = resources.load_model(at.session_state["model_ref"])
    with torch.no_grad():
        logits, _ = loaded.model.eval()(torch.tensor([ids(at, text)]))
    return loaded.tokenizer.token_str(int(logits[0, -1].argmax()))  # as the box shows it


def caption_text(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption if "Metric:" in c.value)


@pytest.mark.parametrize("metric, direction, reads", [
    ("prob", "noise", "p('e')"), ("loss", "denoise", "loss of the clean prompt"), ("logit_diff", "noise", "logit('e')")])
def test_metric_and_direction_reach_the_sweep(app_root: Path, metric: str, direction: str, reads: str) -> None:
    clean, corrupt = "To be, or not", "To be, or nut"
    at = run_sweep(open_patch(clean, corrupt))  # first logit_diff, denoise: the switch must not reuse it
    at.selectbox(key="pt_metric").set_value(metric)
    at.selectbox(key="pt_direction").set_value(direction).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    e, t = ids(at, "e")[0], ids(at, "t")[0]
    m = {"prob": patching.prob(e), "loss": patching.loss(), "logit_diff": patching.logit_diff(e, t)}[metric]
    model = resources.load_model(at.session_state["model_ref"]).model
    want = patching.sweep(model, ids(at, clean), ids(at, corrupt), "resid_pre", m, direction=direction)
    got = raw_values(at)
    assert len(got) == want.values.numel()
    for cell, v in got.items():
        assert v == pytest.approx(float(want.values[cell]), abs=1e-5)
    cap = caption_text(at)
    assert reads in cap and f"clean run {want.clean:.4g}, corrupted run {want.corrupt:.4g}" in cap
    assert ("taken from the corrupted run" if direction == "noise" else "taken from the clean run") in cap
    # a box the metric does not read is greyed out
    assert at.text_input(key="pt_ans_Corrupted answer").disabled == (metric != "logit_diff")
    assert at.text_input(key="pt_ans_Clean answer").disabled == (metric == "loss")


CANDIDATES = ["To be, or not", "ROMEO:", "First Citizen:", "What is", "KING HENRY", "O", "And", "the"]


def test_answers_follow_their_prompts_unless_typed(app_root: Path) -> None:
    at = open_patch("To be, or not", "To be, or nut")
    box = lambda: at.text_input(key="pt_ans_Clean answer").value  # noqa: E731
    assert box() == top_text(at, "To be, or not")
    assert at.text_input(key="pt_ans_Corrupted answer").value == top_text(at, "To be, or nut")
    tops = {p: top_text(at, p) for p in CANDIDATES}
    a = CANDIDATES[0]
    b = next((p for p in CANDIDATES if tops[p] != tops[a]), None)
    assert b is not None, f"every candidate prompt has the same top token {tops[a]!r}: add one that differs"
    at.text_area(key="pt_clean").set_value(b).run()
    assert box() == tops[b]  # the answer followed the new prompt
    typed = next(c for c in "xzqe" if c != tops[b])
    at.text_input(key="pt_ans_Clean answer").set_value(typed).run()
    at.selectbox(key="pt_site").set_value("head").run()  # another rerun: the typed answer stays
    assert box() == typed
    at.text_area(key="pt_clean").set_value(a).run()
    assert box() == tops[a]  # a new prompt: its own top token
    at.text_area(key="pt_clean").set_value(b).run()
    assert box() == typed  # back to the prompt it was typed for


def test_a_snapshot_of_the_run_is_offered_and_patches_in(app_root: Path) -> None:
    clean, corrupt = "To be, or not", "To be, or nut"
    at = open_patch(clean, corrupt)
    snaps = [str(p) for _, p in list_snapshots(app_root / "tiny-run")]
    assert len(snaps) >= 2
    box = at.selectbox(key="pt_source")
    assert box.options == ["the same model"] + [catalog.describe(s) for s in snaps]
    box.set_value(snaps[1])
    at = run_sweep(at)
    assert not at.error, errors(at)
    model = resources.load_model(at.session_state["model_ref"]).model
    source, _, _ = load(snaps[1])
    m = patching.logit_diff(ids(at, "e")[0], ids(at, "t")[0])
    want = patching.sweep(model, ids(at, clean), ids(at, corrupt), "resid_pre", m, source_model=source.eval())
    same = patching.sweep(model, ids(at, clean), ids(at, corrupt), "resid_pre", m)
    got = raw_values(at)
    assert not torch.allclose(want.values, same.values, atol=1e-4), "the snapshot should patch in other values"
    for cell, v in got.items():
        assert v == pytest.approx(float(want.values[cell]), abs=1e-5)
    assert catalog.describe(snaps[1]) in caption_text(at)


def test_a_head_cell_opens_that_head_on_the_attention_page(app_root: Path) -> None:
    at = run_sweep(open_patch("To be, or not", "To be, or nut"), "head")
    assert not [b for b in at.button if b.label.startswith("Open layer")]  # no cell clicked yet
    # AppTest cannot click a plotly point: set the selection the chart's on_select would report
    at.session_state["pt_map"] = {"selection": {"points": [{"x": "H1", "y": "L1", "customdata": [1, 1, 0.5]}]}}
    at.run()
    assert len(at.get("plotly_chart")) == 4  # the map and the clean, patched, corrupted distributions
    [b for b in at.button if b.label == "Open layer 1, head 1 on the Attention page"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Attention"
    assert at.selectbox(key="layer").value == 1 and at.selectbox(key="head").value == 1


def test_whitespace_answers_are_typed_as_their_glyphs(app_root: Path) -> None:
    """The answer boxes show a space as · and a newline as ⏎ (a text box cannot show a newline),
    and read them back as those tokens."""
    at = run_sweep(open_patch("To be, or not", "To be, or nut"), answers=("·", "⏎"))
    assert not at.error, errors(at)
    assert "logit('·') − logit('⏎')" in " ".join(c.value for c in at.caption)  # read as those tokens
