"""app/views/training.py: the form's fields and corpus default, the estimate's caption,
downsampling, the loss figure, progress and its ETA, the runs table and the page's small decisions
(the estimate's numbers are tests/test_estimate.py's)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from app.views import training as tv
from trainers.config import PRESETS, preset_values
from trainers.estimate import Estimate, StepCost
from trainers.metrics import loss_series


def test_preset_values_fill_shape_from_the_model_preset() -> None:
    v = preset_values("tiny", tv.FIELD_NAMES)
    assert [f for f, _, _ in tv.FIELDS] == list(v)
    assert (v["n_layer"], v["n_head"], v["n_embd"], v["block_size"]) == (2, 2, 64, 32)
    assert v["max_iters"] == PRESETS["tiny"].max_iters and isinstance(v["learning_rate"], float)
    assert preset_values("baby", tv.FIELD_NAMES)["dropout"] == 0.2


def test_number_args_give_each_field_its_kind() -> None:
    for name, _label, kind in tv.FIELDS:
        args = tv.number_args(name, kind, preset_values("cpu-small", [name])[name])
        assert type(args["value"]) is kind and type(args["min_value"]) is kind and args["min_value"] == 0
    assert tv.number_args("learning_rate", float, 1e-3)["format"] == "%.5f"
    assert tv.number_args("dropout", float, 0.2) == dict(min_value=0.0, value=0.2, format="%.2f", step=0.05)


def test_resume_args_go_past_the_run() -> None:
    assert tv.resume_args({"iter": 40, "max_iters": 100}) == {"min_value": 41, "value": 100}
    assert tv.resume_args({"iter": 100, "max_iters": 100}) == {"min_value": 101, "value": 200}
    assert tv.resume_args({}) == {"min_value": 1, "value": 2}


@pytest.mark.parametrize("bundled, offline, want", [
    ("shakespeare", "shakespeare", "shakespeare"),  # the bundled model's corpus, there offline
    ("shakespeare", "python-docs", "python-docs"),  # not there offline: never a download by default
    ("python-docs", "shakespeare", "python-docs"),  # the bundled model's, always there
    (None, "shakespeare", "shakespeare"),  # no bundled model: what trainers.data prefers offline
    (None, "python-docs", "python-docs"),
    ("file", "shakespeare", "shakespeare"),  # trained on a file: not a choice of the form
])
def test_default_data_is_the_bundled_models_corpus_when_there_offline(bundled, offline, want) -> None:
    assert tv.default_data(bundled, offline) == want and want in tv.DATA_SOURCES


def cost(**kw) -> StepCost:
    base = dict(micro_s=0.2, opt_s=0.01, eval_s=0.07, save_s=0.09, startup_s=5.0, steps=8, rows=12,
                batch_size=12, threads=1, device="cpu")
    return StepCost(**{**base, **kw})


def test_estimate_caption_says_how_the_time_was_found() -> None:
    est = Estimate(params=1, memory_bytes=1, tokens=1, tokens_per_s=3657.1, seconds=80.0, eval_seconds=12.0,
                   startup_seconds=5.0)
    assert tv.estimate_caption(est, cost()) == (
        "Timed here: 8 training steps of this model on 1 thread, as the run will use: 210 ms a step, "
        "3,657 tok/s. Evaluations and checkpoints add 12.0 s, starting the run's process 5.0 s.")
    assert "(at 4 of its 64 rows, scaled)" in tv.estimate_caption(est, cost(rows=4, batch_size=64, threads=3))
    assert "on 3 threads" in tv.estimate_caption(est, cost(threads=3))
    none = Estimate(params=1, memory_bytes=1, tokens=1, tokens_per_s=None, seconds=None)
    assert tv.estimate_caption(none, None, "timing the step failed: boom") == \
        "No time estimate: timing the step failed: boom. Starting a run is not affected."
    assert dict(tv.estimate_cells(none))["Estimated time"] == "—"
    assert dict(tv.estimate_cells(est))["Estimated time"] == "1 min 20 s"


def test_human_formats() -> None:
    assert tv.human_duration(12) == "12 s" and tv.human_duration(75) == "1 min 15 s"
    assert tv.human_duration(7300) == "2 h 1 min" and tv.human_duration(None) == "—"
    assert tv.human_duration(float("nan")) == "—"
    assert tv.human_bytes(512) == "512 B" and tv.human_bytes(3 * 2 ** 20) == "3.0 MiB"
    assert tv.human_step(0.0213) == "21 ms" and tv.human_step(1.54) == "1.5 s" and tv.human_step(75) == "1 min 15 s"


@given(n=hs.integers(0, 6000), m=hs.integers(2, 2000))
@settings(max_examples=60, deadline=None)
def test_downsample_keeps_ends_order_and_budget(n: int, m: int) -> None:
    xs = list(range(n))
    ys = [math.sin(i) for i in xs]
    dx, dy = tv.downsample(xs, ys, max_points=m)
    assert len(dx) == len(dy) == min(n, m)  # the whole budget is used, never exceeded
    if n:
        assert dx[0] == 0 and dx[-1] == n - 1
    assert dx == sorted(set(dx))  # strictly increasing: no point twice
    assert all(dy[i] == math.sin(x) for i, x in enumerate(dx))  # pairs stay together
    if n <= m:
        assert dx == xs


def test_downsample_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        tv.downsample([1, 2], [1])
    with pytest.raises(ValueError):
        tv.downsample(list(range(10)), list(range(10)), max_points=1)


def rows(n_train: int, eval_every: int) -> list[dict]:
    out = []
    for it in range(n_train):
        out.append({"iter": it, "train_loss": 4.0 / (1 + it), "lr": 1e-3, "tokens_per_s": 100.0 + it})
        if it % eval_every == 0:
            out.append({"iter": it, "val_loss": 4.5 / (1 + it), "train_loss_eval": 4.2 / (1 + it)})
    out.append({"iter": n_train, "train_loss": None})  # JSON null: the first row of a run has none
    out.append({"iter": n_train, "val_loss": float("nan")})
    return out


def test_loss_series_and_figure() -> None:
    r = rows(5000, 100)
    s = loss_series(r)
    assert len(s["train"][0]) == 5000 and len(s["val"][0]) == 50 and len(s["train (eval)"][0]) == 50
    fig, points = tv.loss_figure(s, max_points=1500)
    names = [t.name for t in fig.data]
    assert names == ["train loss", "train (eval) loss", "val loss"]
    assert [len(t.x) for t in fig.data] == [1500, 50, 50] and points == 1600
    assert fig.data[0].x[-1] == 4999 and fig.layout.yaxis.type == "linear"
    log_fig, _ = tv.loss_figure(s, log_y=True)
    assert log_fig.layout.yaxis.type == "log"
    empty, n = tv.loss_figure({})
    assert n == 0 and len(empty.data) == 0


def test_progress_prefers_status_and_drops_eta_when_not_going() -> None:
    going = tv.progress({"state": "running", "iter": 50, "max_iters": 200, "eta_s": 30.0,
                         "tokens_per_s": 900.0}, 149.0)
    assert (going.iter, going.max_iters, going.fraction, going.tokens_per_s, going.eta_s) == (50, 200, 0.25, 900.0, 30.0)
    stopped = tv.progress({"state": "stopped", "iter": 50, "max_iters": 200, "eta_s": 30.0}, 149.0)
    assert stopped.eta_s is None and stopped.tokens_per_s == 149.0  # the last logged figure
    fresh = tv.progress({"state": "starting"})
    assert fresh.fraction == 0.0 and fresh.tokens_per_s is None


def test_eta_counts_down_from_the_trainers_measured_figure() -> None:
    """status.json's eta_s is the trainer's (from the run's own step and eval times, written every
    log interval); between two writes the page takes off the time since, never below 0."""
    st_ = {"state": "running", "iter": 50, "max_iters": 200, "eta_s": 30.0, "updated_ts": 1000.0}
    assert tv.progress(st_, now=1000.0).eta_s == 30.0
    assert tv.progress(st_, now=1012.5).eta_s == 17.5
    assert tv.progress(st_, now=1100.0).eta_s == 0.0
    assert tv.progress(st_, now=990.0).eta_s == 30.0  # a clock behind the writer's adds nothing
    assert tv.progress(dict(st_, eta_s=None), now=1000.0).eta_s is None  # its first steps: not measured yet


def test_run_rows() -> None:
    now = 1_000_000.0
    table = tv.run_rows([{"name": "a", "state": "running", "iter": 10, "max_iters": 100, "val_loss": 2.345678,
                          "preset": "tiny", "data": "python-docs", "updated_ts": now - 75},
                         {"name": "b", "state": "starting"}], now=now)
    assert table[0] == {"run": "a", "state": "running", "iter": "10 / 100", "val loss": "2.3457",
                        "preset": "tiny", "data": "python-docs", "updated": "1 min 15 s ago"}
    assert table[1]["iter"] == "— / —" and table[1]["val loss"] == "—" and table[1]["updated"] == "—"


def test_run_rows_val_loss_after_a_resume() -> None:
    """A resumed run's status.json has val_loss None until it evaluates (issue 12: the table said
    "None"): the last val loss it logged shows, else its best, else "—"."""
    resumed = {"name": "r", "state": "running", "iter": 300, "max_iters": 600, "val_loss": None}
    assert tv.run_rows([resumed], logged_val={"r": 1.87654})[0]["val loss"] == "1.8765"
    assert tv.run_rows([dict(resumed, best_val_loss=1.5)], logged_val={"r": 1.87654})[0]["val loss"] == "1.8765"
    assert tv.run_rows([dict(resumed, best_val_loss=1.5)])[0]["val loss"] == "1.5000"
    assert tv.run_rows([resumed], logged_val={"other": 1.0})[0]["val loss"] == "—"
    assert tv.run_rows([dict(resumed, val_loss=2.0)], logged_val={"r": 1.8})[0]["val loss"] == "2.0000"


def test_status_caption_and_note() -> None:
    prog = tv.progress({"state": "running", "iter": 50, "max_iters": 200, "eta_s": 75.0, "tokens_per_s": 1234.5})
    assert tv.status_caption("running", prog, 7, live=True) == \
        "**running** · iter 50 / 200 · 7 points · 1,234 tok/s · ETA 1 min 15 s"
    assert tv.status_caption("stopped", prog, 7, live=False).endswith("ETA —")
    assert tv.status_note({"state": "failed", "message": "boom"}) == ("error", "boom")
    assert tv.status_note({"state": "stopped", "message": "stopped at iter 3"}) == ("info", "stopped at iter 3")
    assert tv.status_note({"state": "running", "message": "training"}) is None


def test_threads_caption() -> None:
    assert tv.threads_caption(1, 2) == "Training uses 1 thread, leaving 1 core for the UI."
    assert tv.threads_caption(3, 4) == "Training uses 3 threads, leaving 1 core for the UI."
    assert tv.threads_caption(2, 1) == "Training uses 2 threads, leaving 0 cores for the UI."


def test_next_sample_redraws_at_most_every_so_often() -> None:
    draws: list[int] = []

    def draw() -> str:
        draws.append(1)
        return f"text {len(draws)}"

    shown, keep = tv.next_sample(None, "ck", 10, now=100.0, every_s=10.0, draw=draw)
    assert shown == ("ck", 10, 100.0, "text 1") and keep
    assert tv.next_sample(shown, "ck", 10, 500.0, 10.0, draw)[0] == shown  # same iter: never redrawn
    assert tv.next_sample(shown, "ck", 20, 105.0, 10.0, draw)[0] == shown  # newer, but too soon
    assert tv.next_sample(shown, "ck", 20, 111.0, 10.0, draw)[0] == ("ck", 20, 111.0, "text 2")
    assert tv.next_sample(shown, "other", 10, 101.0, 10.0, draw)[0][3] == "text 3"  # another run

    def broken() -> str:
        raise OSError("replaced mid-read")

    failed, keep = tv.next_sample(shown, "ck", 30, 200.0, 10.0, broken)
    assert failed[3] == "(no sample yet: OSError)" and not keep  # shown, but retried next time


def test_next_sample_of_an_ended_run_is_never_stale() -> None:
    """every_s=0 (the run ended: nothing polls any more) draws the final checkpoint's sample at
    once, however recent the shown one is; the same iteration is still not redrawn."""
    shown = ("ck", 250, 100.0, "from iter 250")
    assert tv.next_sample(shown, "ck", 300, 100.5, 10.0, lambda: "final")[0] == shown  # live: throttled
    final, keep = tv.next_sample(shown, "ck", 300, 100.5, 0.0, lambda: "final")
    assert final == ("ck", 300, 100.5, "final") and keep
    assert tv.next_sample(final, "ck", 300, 100.6, 0.0, lambda: "again")[0] == final


def test_is_within(tmp_path) -> None:
    run = tmp_path / "run"
    assert tv.is_within(str(run), run) and tv.is_within(str(run / "snapshots" / "iter_0000010"), run)
    assert not tv.is_within(str(tmp_path / "runner"), run) and not tv.is_within(None, run)


def test_views_take_whatever_a_run_folder_held() -> None:
    """list_runs checks status.json, but these views are pure and may be handed anything: a value
    of the wrong type shows as "—" (or 0) rather than failing, and an unreadable run says why."""
    junk = {"name": "j", "state": "running", "iter": "abc", "max_iters": [1], "val_loss": "low",
            "best_val_loss": True, "updated_ts": "soon", "tokens_per_s": "fast", "eta_s": {}, "preset": 3}
    assert tv.run_rows([junk], now=10.0)[0] == {"run": "j", "state": "running", "iter": "— / —", "val loss": "—",
                                                "preset": "3", "data": "—", "updated": "—"}
    prog = tv.progress(junk, logged_tokens_per_s=5.0)
    assert (prog.iter, prog.max_iters, prog.fraction, prog.tokens_per_s, prog.eta_s) == (0, 0, 0.0, 5.0, None)
    assert tv.resume_args(junk) == {"min_value": 1, "value": 2}
    assert tv.resume_args({"iter": True, "max_iters": -5}) == {"min_value": 1, "value": 2}
    bad = {"name": "u", "state": "unreadable", "message": "unreadable: status.json holds a list, not a JSON "
                                                           "object; delete the run, or resume it to rewrite its status"}
    assert tv.run_rows([bad])[0]["state"] == "unreadable: status.json holds a list, not a JSON object"
    assert tv.status_note(bad) == ("error", bad["message"])
    assert tv.status_note({"state": "failed", "message": ["not", "text"]}) is None


def test_the_tokenizer_is_kept_per_preset_and_starts_at_the_presets() -> None:
    """gpt2 starts on GPT-2's BPE, the others on characters, until the user picks another for that preset."""
    from trainers.config import PRESETS

    for preset, want in (("gpt2", "gpt2"), ("tiny", "char")):
        assert PRESETS[preset].tokenizer == want
        assert tv.form_values({}, "_p_", preset, {}, PRESETS[preset].tokenizer)["tokenizer"] == want
    store = {"_p_tokenizer_tiny": "gpt2"}
    assert tv.form_values(store, "_p_", "tiny", {}, "char")["tokenizer"] == "gpt2"
    assert tv.form_values(store, "_p_", "gpt2", {}, "gpt2")["tokenizer"] == "gpt2"
    assert tv.form_values({"_p_tokenizer_gpt2": "char"}, "_p_", "gpt2", {}, "gpt2")["tokenizer"] == "char"
