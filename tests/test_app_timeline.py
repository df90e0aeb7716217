"""The Timeline page under Streamlit's AppTest (no browser): it renders for the tiny run, the
slider replays the prompt at another snapshot, the head selector and Play drive the same state,
and a checkpoints root without snapshots gets guidance instead of an error."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import resources  # noqa: E402

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGE = "screens/timeline.py"
TIMEOUT = 120


@pytest.fixture
def env(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch):
    """The tiny run as the only run; no bundled model; fresh caches (they are per process)."""
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tiny_checkpoint.root))
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    resources.clear_caches()
    yield tiny_checkpoint
    resources.clear_caches()


def open_timeline(prompt: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    if prompt is not None:
        at.session_state["prompt"] = prompt
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Every markdown, caption and metric value on the page, for asserting on what is shown."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [f"{m.label}={m.value}" for m in at.metric] + [c.value for c in at.code]
    return "\n".join(str(p) for p in parts)


def slider(at: AppTest):
    """The snapshot slider (its key changes whenever the page moves it; see the page's docstring)."""
    (s,) = at.select_slider
    return s


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def prompt_from(text: str) -> str:
    """A prompt every character of which the tiny run's vocabulary has."""
    return text[:48]


def prompt_loss(env, it: int, prompt: str) -> float:
    import torch
    from gpt.checkpoint import load
    model, tok, _ = load(env.snapshot(it))
    ids = torch.tensor([tok.encode(prompt)])[:, -model.config.block_size:]  # the page keeps the last block
    with torch.no_grad():
        return model(ids[:, :-1], targets=ids[:, 1:])[1].item()


def test_renders_and_the_slider_replays_another_snapshot(env) -> None:
    prompt = prompt_from(env.text)
    at = open_timeline(prompt)
    sl = slider(at)
    assert list(sl.options) == [f"iter {i}" for i in env.iters]
    assert sl.value == env.iters[-1]  # starts at the most trained snapshot
    assert f"iter {env.iters[-1]}" in texts(at)
    loss_last, sample_last = metric(at, "Loss on the prompt"), at.code[0].value

    sl.set_value(env.iters[0]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["_tl_iter"] == env.iters[0]
    shown = texts(at)
    assert f"#### iter {env.iters[0]}" in shown and f"#### iter {env.iters[-1]}" not in shown
    assert metric(at, "Loss on the prompt") != loss_last
    # the loss shown is that snapshot's own loss on the prompt, computed independently here
    assert float(metric(at, "Loss on the prompt")) == pytest.approx(prompt_loss(env, env.iters[0], prompt), abs=1e-3)
    assert float(loss_last) == pytest.approx(prompt_loss(env, env.iters[-1], prompt), abs=1e-3)
    assert at.code[0].value != sample_last  # greedy text of the random init differs
    assert not next(m for m in at.metric if m.label == "Loss on the prompt").delta  # no earlier one

    sl = slider(at)
    sl.set_value(env.iters[1]).run()
    d = next(m for m in at.metric if m.label == "Loss on the prompt").delta
    # the change since the snapshot shown before, with its sign (a few steps of the tiny run may not
    # help on this one prompt yet, so the sign is checked against an independent computation)
    change = prompt_loss(env, env.iters[1], prompt) - prompt_loss(env, env.iters[0], prompt)
    assert d is not None and d.endswith(f"since iter {env.iters[0]}"), d
    assert float(d.split()[0]) == pytest.approx(change, abs=2e-3) and d.startswith("-" if change < 0 else "+")


def test_head_selector_sets_the_shared_head(env) -> None:
    at = open_timeline(prompt_from(env.text))
    assert metric(at, "Head") == "L0H0"
    at.selectbox(key="_tl_head").set_value("L1H1").run()
    assert not at.exception
    assert at.session_state["layer"] == 1 and at.session_state["head"] == 1
    assert metric(at, "Head") == "L1H1"
    for score in ("induction", "entropy", "prev_token"):
        at.radio(key="_tl_score").set_value(score).run()
        assert not at.exception, score


def test_play_advances_then_stops_at_the_end(env) -> None:
    at = open_timeline(prompt_from(env.text))
    slider(at).set_value(env.iters[0]).run()
    at.button(key="_tl_play").click().run()  # play: shows the current snapshot first
    assert at.session_state["_tl_playing"] is True
    assert slider(at).value == env.iters[0]
    seen = [env.iters[0]]
    for _ in range(len(env.iters) + 2):  # each run is one timer tick (run_every does not tick in AppTest)
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        seen.append(slider(at).value)
        if not at.session_state["_tl_playing"]:
            break
    assert at.session_state["_tl_playing"] is False, "playing must stop at the last snapshot"
    assert sorted(set(seen)) == list(env.iters) and seen[-1] == env.iters[-1]


def test_unknown_characters_are_reported_not_raised(env) -> None:
    assert "\u2603" not in env.text
    at = open_timeline("ROMEO: \u2603 snowman")
    shown = " ".join(e.value for e in at.error) + " ".join(w.value for w in at.warning)
    assert "not in this model's vocabulary" in shown
    assert not at.select_slider  # nothing replayed for a prompt the model cannot read
    at.checkbox(key="drop_unknown").check().run()  # the offered way out: drop them
    assert not at.exception and len(at.select_slider) == 1


def test_no_snapshots_gives_guidance(tmp_path: Path, env, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    shutil.copytree(env.run_dir, root / "no-snaps")
    shutil.rmtree(root / "no-snaps" / "snapshots")
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(root))
    at = open_timeline()
    assert any("No run with snapshots yet" in i.value for i in at.info)


def test_head_table_component_lists_every_head_sorted() -> None:
    def page() -> None:
        import streamlit as st
        import torch

        from app.components import head_table

        scores = {"prev_token": torch.tensor([[0.1, 0.9], [0.5, 0.2]]),
                  "entropy": torch.tensor([[2.0, 0.5], [1.0, 3.0]])}
        st.session_state["picked"] = head_table(scores, key="heads", selected=(1, 0), sort_by="prev_token")

    at = AppTest.from_function(page, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.message for e in at.exception]
    (table,) = at.dataframe
    assert list(table.value["head"]) == ["L0H1", "L1H0", "L1H1", "L0H0"]  # by previous-token, high first
    assert table.value["prev_token"].tolist() == pytest.approx([0.9, 0.5, 0.2, 0.1])
    assert at.session_state["picked"] == (1, 0)  # the open head's row starts selected


# -- issue 12: reading the pictures ----------------------------------------------------------------------
def test_opens_on_the_model_being_inspected_not_the_bundled_one(tmp_path: Path, env,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Point 18: with a bundled model present, the Run box starts on the current model's run."""
    bundled = tmp_path / "bundled-run"
    shutil.copytree(env.run_dir, bundled)
    monkeypatch.setenv("NANOLENS_BUNDLED", str(bundled))
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.session_state["model_ref"] = str(env.run_dir)  # the user inspects the tiny run
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    run = at.selectbox(key="_tl_run")
    assert run.value == str(env.run_dir) and run.options[0].endswith("(current model)")
    fresh = open_timeline()  # the bundled model is the default model: it comes first then
    assert fresh.selectbox(key="_tl_run").value == str(bundled)


def test_replay_shows_the_lens_text_the_legends_and_the_verdict(env) -> None:
    """Points 11, 13, 14 on the page: the lens carries text and its note, the glyph legend is
    shown, and the history caption says in words whether any head qualifies."""
    import json

    from app.views.tokens import glyph_legend

    at = open_timeline(prompt_from(env.text))
    lens = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if "logit lens" in json.loads(c.proto.spec)["layout"].get("title", {}).get("text", ""))
    assert lens["data"][0].get("texttemplate") == "%{text}"
    assert any("tied" in c.value and "positions" in c.value.lower() for c in at.caption)
    assert sum(m.value == glyph_legend() for m in at.markdown) == 1
    at.radio(key="_tl_score").set_value("induction").run()
    assert any("At the last snapshot:" in c.value and "induction head" in c.value for c in at.caption)


# -- issue 16: Timeline 2.0, from the analysis job's results ---------------------------------------------
@pytest.fixture
def analysed(tmp_path: Path, env, monkeypatch: pytest.MonkeyPatch):
    """A copy of the tiny run with analysis/ written by the job's writers (tests/analysis_fixture.py:
    L1H1's induction scores jump between the 2nd and 3rd snapshot; the val loss falls sharply once)."""
    from tests.analysis_fixture import analysed_run

    run = analysed_run(tmp_path / "analysed-root", env.run_dir, env.text)
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(run.root))
    resources.clear_caches()
    return run


def chart_frames(at: AppTest) -> list:
    """The data sets of the page's Altair charts, as pandas frames."""
    import pyarrow as pa

    charts = [e for e in at.main if getattr(e, "type", None) == "vega_lite_chart"]
    return [pa.ipc.open_stream(ds.data.data).read_all().to_pandas() for c in charts for ds in c.proto.datasets]


def test_analysis_curves_and_markers(analysed, env) -> None:
    at = open_timeline(prompt_from(env.text))
    score = at.selectbox(key="_tl_ascore")
    assert score.value == "induction_random" and set(score.options) == {
        "induction (random repeats)", "induction (natural repeats)", "previous-token", "first-token (sink)",
        "self", "entropy (bits)"}
    assert all(r.key != "_tl_score" for r in at.radio)  # no per-snapshot scores where the analysis is
    frames = chart_frames(at)
    curves = next(f for f in frames if "head" in f.columns and len(f) > 4)
    S, L, H = analysed.scores["induction_random"].shape
    assert len(curves) == S * L * H  # one line per head, a point per snapshot
    for _, row in curves.iterrows():
        s = analysed.iters.index(int(row["iter"]))
        l, h = int(row["head"][1]), int(row["head"][3])
        assert row["value"] == pytest.approx(float(analysed.scores["induction_random"][s, l, h]), abs=1e-6)
    assert set(curves.loc[curves["head"] == "L1H1", "role"]) == {"mover"}  # the head that jumped is highlighted

    before, after = (float(analysed.scores["induction_random"][i, 1, 1]) for i in (1, 2))
    shown = texts(at)
    assert (f"L1H1's induction score rose from {before:.2f} to {after:.2f} between iter {analysed.iters[1]} "
            f"and {analysed.iters[2]}") in shown
    (v20, x20), (v22, x22) = analysed.val[10], analysed.val[11]
    assert f"The val loss fell sharply from {x20:.2f} to {x22:.2f} between iter {v20} and {v22}" in shown
    bands = next(f for f in frames if "tag" in f.columns)
    assert list(bands["kind"]) == ["score", "loss"] and bands["tag"][0] == "L1H1 ↑"
    assert bands["x"][0] == pytest.approx(1.0) and bands["x2"][0] == pytest.approx(2.0)  # snapshots 1 -> 2

    score.set_value("entropy").run()  # only noise in entropy: no phase change, said in words
    assert not at.exception, [e.message for e in at.exception]
    assert "No head's attention entropy changed by 0.50 bits or more between snapshots" in texts(at)
    assert "Phase change" not in texts(at) and "Loss bump" in texts(at)


def test_analysis_head_choice_opens_its_examples(analysed, env) -> None:
    import torch

    from gpt.checkpoint import load
    from gpt.record import Recorder

    at = open_timeline(prompt_from(env.text))
    at.selectbox(key="_tl_head").set_value("L1H1").run()  # the selector (a chart click does the same)
    assert not at.exception, [e.message for e in at.exception]
    assert (at.session_state["layer"], at.session_state["head"]) == (1, 1)
    assert metric(at, "Head") == "L1H1"
    assert "#### L1H1's top validation examples" in texts(at)
    last = analysed.iters[-1]
    top = analysed.top["induction_natural"][-1][1][1]  # random repeats have no windows: natural ones shown
    example = at.selectbox(key="_tl_ex")
    assert example.options == [f"#{r + 1} · window {w} · {v:.2f}" for r, (w, v) in enumerate(top)]
    assert any("Random repeats are not text" in c.value for c in at.caption)

    def check_query() -> int:
        """The caption names the strongest key of the query shown, as an independent forward says."""
        (q,) = [s.value for s in at.slider if s.key.startswith("_tl_ex_q_")]
        ids = analysed.windows[top[0][0]]
        model, _, _ = load(env.snapshot(last))
        rec = Recorder(["blocks.1.attn.hook_pattern"])
        with torch.no_grad():
            model(torch.tensor([ids]), rec=rec)
        row = rec["blocks.1.attn.hook_pattern"][0, 1, q]  # (T,)
        key = int(row.argmax())
        cap = next(c.value for c in at.caption if c.value.startswith("L1H1 at iter"))
        assert "induction (natural repeats) term here is" in cap
        assert f"from query position {q} " in cap and f"strongest key is position {key} " in cap, cap
        assert f"with weight {float(row[key]):.2f}" in cap
        return q

    q = check_query()
    slider_key = next(s.key for s in at.slider if s.key.startswith("_tl_ex_q_"))
    at.slider(key=slider_key).set_value(max(q - 3, 1)).run()  # another query position
    assert not at.exception and check_query() == max(q - 3, 1)
    strip = next(m.value for m in at.markdown if m.value.startswith('<div style="line-height:1.9">'))
    assert strip.count("<span") == len(analysed.windows[top[0][0]])  # every token of the window drawn

    first = analysed.iters[0]
    at.selectbox(key="_tl_ex_iter").set_value(first).run()  # the examples of another snapshot
    assert not at.exception
    top0 = analysed.top["induction_natural"][0][1][1]
    assert at.selectbox(key="_tl_ex").options[0] == f"#1 · window {top0[0][0]} · {top0[0][1]:.2f}"
    assert any(c.value.startswith(f"L1H1 at iter {first},") for c in at.caption)


def test_a_malformed_analysis_falls_back_to_scores_per_snapshot(analysed, env) -> None:
    bad = analysed.run_dir / "analysis" / f"iter_{analysed.iters[1]:07d}.json"
    bad.write_text("{not json", encoding="utf-8")
    at = open_timeline(prompt_from(env.text))
    assert any("analysis cannot be read" in w.value and bad.name in w.value for w in at.warning)
    assert at.radio(key="_tl_score").value == "prev_token"  # today's per-snapshot chart


def test_without_analysis_the_job_panel_is_offered_and_with_it_it_is_not(env, analysed, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_timeline(prompt_from(env.text))
    assert not any(b.key == "_tl_an_start" for b in at.button)  # a complete analysis: curves, no panel
    plain = tmp_path / "plain"
    shutil.copytree(env.run_dir, plain / "tiny-run")
    monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(plain))
    resources.clear_caches()
    at = open_timeline(prompt_from(env.text))
    assert at.radio(key="_tl_score").value == "prev_token"  # today's per-snapshot chart ...
    start = next(b for b in at.button if b.key == "_tl_an_start")  # ... and the job's Start button
    assert start.label == "Start analysis"
    assert any(i.value.startswith("Head scores over training: 0/") for i in at.info)


# -- issue 17 part 5: export -------------------------------------------------------------------------------
def test_export_and_png_buttons_are_offered_and_draw_nothing_on_load(env, analysed, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sources of the heads chart get "Figure (PNG)" beside it and the export bar (NPZ, CSV,
    notebook) under the section; none of them computes anything until it is clicked."""
    from app import export_history, figure_png

    calls: list[str] = []
    monkeypatch.setattr(figure_png, "to_png", lambda *a, **k: calls.append("png"))
    monkeypatch.setattr(export_history, "page_tables", lambda *a, **k: calls.append("tables"))
    monkeypatch.setattr(export_history, "page_notebook", lambda *a, **k: calls.append("notebook"))
    for root in (analysed.root, None):  # the analysis' curves, then scores per snapshot
        if root is None:
            shutil.copytree(env.run_dir, tmp_path / "plain" / "tiny-run")
            monkeypatch.setenv("NANOLENS_CHECKPOINTS", str(tmp_path / "plain"))
            resources.clear_caches()
        at = open_timeline(prompt_from(env.text))
        buttons = {b.label: b for b in at.download_button}
        assert {"Figure (PNG)", "Data (NPZ)", "Data (CSV)", "Open as notebook"} <= set(buttons), list(buttons)
        assert buttons["Figure (PNG)"].key == ("_tl_apng" if root else "_tl_png")
        assert calls == []  # lazy: drawn and exported only on click
