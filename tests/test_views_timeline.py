"""Pure parts of the Timeline page and the head table (app/views/timeline.py, app/views/heads.py):
the play step, one snapshot's figures and loss, the history frame and chart, and
the two selection handlers (chart click, table row) that map a click back to (layer, head). The
losses and the greedy sample are gpt's: tests/test_analysis.py, tests/test_generate.py; run
discovery is app.catalog's (tests/test_catalog.py, tests/test_inspection.py)."""
from __future__ import annotations

import altair as alt
import pandas as pd
import pytest
import torch

from app.inspection import Inspection, Loaded
from app.views import heads as vh
from app.views import timeline as vt
from gpt.checkpoint import load
from gpt.heads import HeadScores, head_scores, prompt_head_scores
from gpt.record import Recorder


@pytest.fixture(scope="module")
def snap(tiny_checkpoint):
    """(model, tokenizer, ids) of the tiny run's last snapshot and a prompt from its corpus."""
    model, tok, _ = load(tiny_checkpoint.snapshot(tiny_checkpoint.iters[-1]))
    return model, tok, tok.encode(tiny_checkpoint.text[:24])


@pytest.fixture(scope="module")
def scores(snap) -> HeadScores:
    return head_scores(snap[0])


# -- head ids and the head table --------------------------------------------------------------------
def test_head_ids_round_trip() -> None:
    assert vh.head_id(0, 1) == "L0H1" and vh.parse_head_id("L11H10") == (11, 10)
    for bad in ("", "L1", "H1L0", "L-1H0", None, "L1H1 "[:3]):
        assert vh.parse_head_id(bad) is None, bad


def test_head_frame_rows_match_the_scores(scores: HeadScores) -> None:
    L, H = scores.entropy.shape
    frame = vh.head_frame(scores)
    assert len(frame) == L * H
    assert list(frame.columns) == ["head", "layer", "head_index", *vh.SCORES]
    for _, row in frame.iterrows():
        l, h = int(row["layer"]), int(row["head_index"])
        assert row["head"] == vh.head_id(l, h)
        for k in vh.SCORES:
            assert row[k] == pytest.approx(float(getattr(scores, k)[l, h]))


def test_head_frame_takes_a_partial_mapping_and_checks_shapes(snap) -> None:
    model, _, ids = snap
    rec = Recorder(["blocks.*.attn.hook_pattern"])
    model(torch.tensor([ids]), rec=rec)
    pats = torch.stack([rec[f"blocks.{i}.attn.hook_pattern"][0] for i in range(model.config.n_layer)])
    frame = vh.head_frame(prompt_head_scores(pats))  # the Attention page's dict: no induction
    assert "induction" not in frame.columns and {"prev_token", "entropy", "first_token"} <= set(frame.columns)
    with pytest.raises(ValueError, match="same|matrices"):
        vh.head_frame({"entropy": torch.zeros(2, 2), "prev_token": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="no head scores"):
        vh.head_frame({"something": torch.zeros(2, 2)})


def test_sorting_and_row_picks_follow_the_displayed_frame(scores: HeadScores) -> None:
    by_prev = vh.head_frame(scores, sort_by="prev_token")
    assert list(by_prev.index) == list(range(len(by_prev)))
    assert by_prev["prev_token"].is_monotonic_decreasing
    assert vh.sort_rows(by_prev, "entropy")["entropy"].is_monotonic_increasing  # focused heads first
    best = torch.argmax(scores.prev_token).item()
    H = scores.prev_token.size(1)
    assert vh.pick_row({"selection": {"rows": [0], "columns": []}}, by_prev) == divmod(best, H)
    last = by_prev.iloc[-1]
    assert vh.pick_row({"rows": [len(by_prev) - 1]}, by_prev) == (last["layer"], last["head_index"])
    assert vh.top_heads(by_prev, "prev_token", 1) == [vh.head_id(*divmod(best, H))]
    for nothing in (None, {}, {"selection": {"rows": []}}, {"selection": {"rows": [99]}}, "0"):
        assert vh.pick_row(nothing, by_prev) is None
    with pytest.raises(ValueError, match="cannot sort"):
        vh.sort_rows(by_prev, "layer")


# -- playing ------------------------------------------------------------------------------------------
def test_next_iter_walks_to_the_end() -> None:
    iters = [0, 10, 25]
    assert vt.next_iter(iters, 0) == (10, False)
    assert vt.next_iter(iters, 10) == (25, True)
    assert vt.next_iter(iters, 25) == (25, True)
    assert vt.next_iter(iters, 7) == (0, False)  # unknown: start over
    with pytest.raises(ValueError):
        vt.next_iter([], None)


# -- one snapshot ----------------------------------------------------------------------------------
def test_snapshot_view_shows_the_chosen_head(snap) -> None:
    model, tok, ids = snap
    rec = Recorder(list(vt.NAMES))
    model(torch.tensor([ids]), rec=rec)
    L, H = model.config.n_layer, model.config.n_head
    loaded = Loaded(model=model, tokenizer=tok, meta={}, ref="test", label="test", config=model.config)
    view = vt.snapshot_view(Inspection.of(loaded, tuple(ids), rec, vt.NAMES, L - 1, H - 1))
    z = torch.tensor(view.pattern.data[0].z)
    assert torch.allclose(z, rec[f"blocks.{L - 1}.attn.hook_pattern"][0, H - 1], atol=1e-6)
    assert view.pattern.data[0].zmax == 1.0  # same color scale at every snapshot
    assert len(view.labels) == len(ids) and list(view.pattern.data[0].x) == view.labels
    assert view.lens.data[0].z.shape == (L + 1, len(ids))
    assert f"L{L - 1}H{H - 1}" in view.pattern.layout.title.text
    _, want = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))  # the loss off the same recording
    assert view.loss == pytest.approx(want.item(), rel=1e-5)


# -- history -------------------------------------------------------------------------------------------
def test_history_frame_and_chart(tiny_checkpoint, scores: HeadScores) -> None:
    first = head_scores(load(tiny_checkpoint.snapshot(tiny_checkpoint.iters[0]))[0])
    history = [(tiny_checkpoint.iters[0], first), (tiny_checkpoint.iters[-1], scores)]
    L, H = scores.entropy.shape
    frame = vt.history_frame(history, "induction")
    assert len(frame) == 2 * L * H and frame["head"].nunique() == L * H
    row = frame[(frame["iter"] == tiny_checkpoint.iters[0]) & (frame["head"] == "L1H0")]
    assert row["value"].item() == pytest.approx(float(first.induction[1, 0]))
    assert set(frame["layer"]) == {f"L{l}" for l in range(L)}
    spec = vt.history_chart(frame, "induction", selected="L1H0").to_dict()  # validates the schema
    params = spec.get("params", []) + [p for layer in spec["layer"] for p in layer.get("params", [])]
    assert [p["name"] for p in params] == [vt.PICK_PARAM]
    assert params[0]["select"]["fields"] == ["head"]
    assert any(layer["mark"]["type"] == "text" for layer in spec["layer"])  # the selected head's label
    assert isinstance(vt.history_chart(frame, "entropy"), alt.LayerChart)
    with pytest.raises(ValueError, match="unknown score"):
        vt.history_frame(history, "loss")


def test_chart_pick_maps_a_click_to_a_head() -> None:
    ev = {"selection": {vt.PICK_PARAM: [{"head": "L1H0", "iter": 10}]}}
    assert vt.chart_pick(ev, 2, 2) == (1, 0)
    assert vt.chart_pick(ev["selection"], 2, 2) == (1, 0)
    assert vt.chart_pick({"head": "L0H1"}, 2, 2) == (0, 1)
    for nothing in (None, {}, {"selection": {vt.PICK_PARAM: []}}, {"selection": {vt.PICK_PARAM: [{"x": 1}]}}):
        assert vt.chart_pick(nothing, 2, 2) is None
    assert vt.chart_pick({"selection": {vt.PICK_PARAM: [{"head": "L5H0"}]}}, 2, 2) is None  # stale


def test_history_frame_accepts_mappings() -> None:
    m = {"prev_token": torch.tensor([[0.1, 0.9]])}
    frame = vt.history_frame([(0, m), (5, {"prev_token": torch.tensor([[0.2, 0.8]])})], "prev_token")
    assert isinstance(frame, pd.DataFrame)
    assert frame.loc[frame["head"] == "L0H1", "value"].tolist() == pytest.approx([0.9, 0.8])


# -- issue 12: reading the pictures ----------------------------------------------------------------------
def test_snapshot_lens_carries_text_for_a_long_prompt() -> None:
    """Point 13: the Timeline's lens showed no text past 48 positions. Now it shows the last
    positions (as many as the Layers page shows), with the token texts, the matches outlined, and a
    note on what is shown and on the embed row."""
    from pathlib import Path

    from app.views import layers as vl
    from app.views.tokens import unique_labels
    from gpt.analysis import logit_lens

    model, tok, _ = load(Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char")
    ids = tok.encode("ROMEO:\nBut soft, what light through yonder window breaks?")  # 57 tokens
    rec = Recorder(list(vt.NAMES))
    model(torch.tensor([ids]), rec=rec)
    loaded = Loaded(model=model, tokenizer=tok, meta={}, ref="test", label="test", config=model.config)
    view = vt.snapshot_view(Inspection.of(loaded, tuple(ids), rec, vt.NAMES, 0, 0))
    T, W = len(ids), vl.lens_width("char")
    tr = view.lens.data[0]
    assert list(tr.x) == unique_labels([tok.token_str(i) for i in ids])[T - W:]
    assert tr.texttemplate == "%{text}" and tr.text[-1][-1] == tok.token_str(int(tr_top(model, rec, ids, T - 1)))
    lens = logit_lens(model, rec, k=1, positions=range(T - W, T), ids=ids)
    n = sum(int(lens.top_ids[r, p, 0]) == ids[T - W + p + 1] for r in range(lens.top_ids.size(0)) for p in range(W - 1))
    assert n > 0 and len(view.lens.layout.shapes) == n
    assert f"Positions {T - W}…{T - 1} of {T}" in view.lens_note and "tied" in view.lens_note


def tr_top(model, rec, ids, pos: int) -> int:
    """The last row's top guess at `pos`: the model's own logits' argmax (independent of the lens)."""
    return int(rec["logits"][0, pos].argmax())


@pytest.mark.parametrize("score", list(vh.SCORES))
def test_history_chart_draws_mass_scores_on_0_to_1(score: str) -> None:
    """Point 14: attention-mass scores keep their whole 0..1 axis, so noise stays a flat line near
    0 instead of filling the chart; entropy (bits) starts at 0."""
    frame = vt.history_frame([(0, {score: torch.tensor([[0.001, 0.004]])}),
                              (10, {score: torch.tensor([[0.002, 0.007]])})], score)
    spec = vt.history_chart(frame, score).to_dict()
    scales = [layer["encoding"]["y"].get("scale", {}) for layer in spec["layer"] if "y" in layer.get("encoding", {})]
    if score == "entropy":
        assert scales and all(s.get("zero") is True and "domain" not in s for s in scales)
    else:
        assert scales and all(s.get("domain") == [0, 1] for s in scales)


def test_history_caption_says_when_no_head_qualifies() -> None:
    """Point 14: in words, "no induction head (max 0.007 …)" at the last snapshot."""
    noise = {"induction": torch.tensor([[0.001, 0.007]])}
    text = vt.history_caption("induction", noise, 100)
    assert "At the last snapshot: no induction head (max 0.007, L0H1" in text and "100 tokens" in text
    strong = vt.history_caption("induction", {"induction": torch.tensor([[0.6, 0.007]])}, 100)
    assert "1 induction head: L0H0 (0.60)" in strong
    assert "At the last snapshot" not in vt.history_caption("entropy", {"entropy": torch.ones(1, 2)}, 100)


def test_loss_delta() -> None:
    assert vt.loss_delta(1.3, (5000, 1.365)) == "-0.065 since iter 5000"
    assert vt.loss_delta(None, (0, 1.0)) is None and vt.loss_delta(1.0, None) is None
    assert vt.loss_delta(1.0, (0, None)) is None


# -- issue 16: Timeline 2.0 (app/views/score_history.py) ------------------------------------------------
def test_positions_place_iterations_between_evenly_spaced_snapshots() -> None:
    from app.views import score_history as vs

    iters = [0, 10, 25, 100]
    assert vs.positions(iters, [0, 10, 25, 100]) == [0.0, 1.0, 2.0, 3.0]
    assert vs.positions(iters, [5, 40, -3, 500]) == pytest.approx([0.5, 2 + 15 / 75, 0.0, 3.0])


def test_curves_frame_has_every_head_and_highlights_the_movers() -> None:
    from app.views import score_history as vs

    g = torch.Generator().manual_seed(0)
    v = 0.01 * torch.rand(4, 2, 3, generator=g)  # (S, L, H)
    v[2:, 1, 2] += 0.5  # L1H2 moves most ...
    v[:, 0, 1] += torch.tensor([0.0, 0.1, 0.2, 0.3])  # ... then L0H1
    frame = vs.curves_frame([0, 10, 25, 50], v, selected="L1H0", movers=[(1, 2), (0, 1)])
    assert len(frame) == 4 * 6 and frame["x"].max() == 3.0
    for _, row in frame.iterrows():
        assert row["value"] == pytest.approx(float(v[int(row["x"]), int(row["head"][1]), int(row["head"][3])]))
    role = dict(zip(frame["head"], frame["role"]))
    assert role["L1H2"] == role["L0H1"] == "mover" and role["L1H0"] == "selected" and role["L0H0"] == "other"
    color = dict(zip(frame["head"], frame["color"]))
    assert color["L0H0"] == vs.GREY and len({color["L1H2"], color["L0H1"], color["L1H0"]}) == 3
    default = vs.curves_frame([0, 10, 25, 50], v)  # movers default to the largest ranges
    assert set(default.loc[default["role"] == "mover", "head"]) >= {"L1H2", "L0H1"}


def test_curves_chart_marks_the_jump_and_a_click_opens_a_head() -> None:
    from app.views import score_history as vs

    iters = [0, 10, 25, 50]
    v = 0.01 + torch.zeros(4, 2, 2)
    v[2:, 1, 1] = 0.15
    marks = vs.markers_for(iters, v, "induction_random",
                           {"val": ([0, 10, 20, 30, 40, 50], [4.0, 3.0, 2.95, 2.94, 2.2, 2.19])})
    lines = vs.marker_lines(marks)
    assert lines[0] == ":orange[**Phase change:**] L1H1's induction score rose from 0.01 to 0.15 between iter 10 and 25."
    assert lines[1].startswith(":red[**Loss bump:**] The val loss fell sharply from 2.94 to 2.20 between iter 30 and 40")
    bands = vs.marker_frame(marks.shown, iters)
    assert list(bands["x"]) == pytest.approx([1.0, 2 + 5 / 25]) and list(bands["kind"]) == ["score", "loss"]
    spec = vs.curves_chart(vs.curves_frame(iters, v), "induction_random", iters, bands).to_dict()
    marks_drawn = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert marks_drawn[:3] == ["rect", "rule", "text"] and marks_drawn.count("line") == 2
    (param,) = spec["params"]  # Altair lifts a layer's selection to the top, naming its view
    assert param["name"] == vt.PICK_PARAM and param["select"]["fields"] == ["head"]
    assert vt.chart_pick({"selection": {vt.PICK_PARAM: [{"head": "L1H1", "x": 2}]}}, 2, 2) == (1, 1)
    quiet = vs.markers_for(iters, 0.01 + torch.zeros(4, 2, 2), "self")
    assert quiet.shown == [] and quiet.note.startswith("No head's self-attention score changed by 0.05")


def test_example_view_draws_the_window_and_names_the_strongest_key() -> None:
    from app.views import score_history as vs

    ids = [7, 2, 9, 5, 7, 2, 9, 5]
    strs = ["a", "b", "<", "d", "a", "b", "<", "d"]
    p = torch.eye(8)
    p[6] = 0.0
    p[6, 3], p[6, 6] = 0.8, 0.2  # query 6 ("<") looks at the token after its earlier copy
    assert vs.default_query(p, ids, "induction_natural") == 6
    view = vs.example_view(strs, ids, p, "induction_natural", 6, "L1H1", 500)
    assert view.html.count("<span") == 8 and "&#60;" in view.html and "<b" not in view.html.replace("<br", "")
    assert "strongest key is position 3" in view.caption and "weight 0.80" in view.caption
    assert "induction (natural repeats) term here is 0.80" in view.caption and "iter 500" in view.caption
