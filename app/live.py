"""The Train page's live panel: the runs table, then the selected run's progress, loss chart, a
sample from its latest checkpoint, and its analysis job (app.analysis_panel, polling on its own).
It runs as a fragment that the page polls every second while any run is going; the figures are
small (downsampled) so each tick stays cheap (bench/bench_live.py).
"""
from __future__ import annotations

import time

import streamlit as st

from app import resources
from app.analysis_panel import analysis_panel
from app.views import training as tv
from gpt.checkpoint import latest_dir
from trainers import runs

SAMPLE_KEY = "_tr_sample"  # (checkpoint, iter, when, text) of the sample shown
# a new sample costs a checkpoint load and 100 tokens on the server; a run that evaluates every
# second would otherwise pay that on every tick
SAMPLE_EVERY_S = 10.0


def panel(name: str, live_names: frozenset[str]) -> None:
    """The runs table, then progress, loss chart and sample of the selected run. A change in the
    set of going runs (one ended, started elsewhere, was deleted) asks for a full rerun."""
    all_runs = runs.list_runs()
    now_live = frozenset(r["name"] for r in all_runs if r["state"] in runs.LIVE_STATES)
    if now_live != live_names or (status := next((r for r in all_runs if r["name"] == name), None)) is None:
        st.rerun()
    st.dataframe(tv.run_rows(all_runs, logged_val=logged_val_losses(all_runs)), hide_index=True, width="stretch")
    logged = resources.metrics_tail(str(status["path"])).update()  # only the new rows are parsed
    fig, points = tv.loss_figure(logged.series, log_y=st.toggle("Log scale", key="_tr_logy"))
    prog = tv.progress(status, logged.last_tokens_per_s)  # the ETA: the run's own measured rate
    st.caption(tv.status_caption(status["state"], prog, points, live=name in now_live))
    st.progress(prog.fraction)
    if note := tv.status_note(status):
        getattr(st, note[0])(note[1])
    if points:
        st.plotly_chart(fig, key="_tr_chart", width="stretch", config={"displaylogo": False})
    else:
        st.caption("No losses yet: the first ones appear after the first logged step.")
    if (it := runs.latest_iter(status["path"])) is not None:
        latest = str(latest_dir(status["path"]))
        # throttled only while the run goes: once it ended nothing polls, and the full rerun that
        # follows its end must show the final checkpoint's sample, not keep one from before
        every = SAMPLE_EVERY_S if name in now_live else 0.0
        shown, keep = tv.next_sample(st.session_state.get(SAMPLE_KEY), latest, it, time.time(), every,
                                     lambda: resources.run_sample(latest, it))
        if keep:
            st.session_state[SAMPLE_KEY] = shown
        st.caption(f"Sample from the latest checkpoint (iter {shown[1]}, temperature 0.8"
                   + (f"; refreshed at most every {every:.0f} s):" if every else "):"))
        st.code(shown[3] or " ", language=None)
    analysis_panel(status["path"], key="_tr_an")  # head scores over its snapshots: a job of its own


def logged_val_losses(all_runs: list[dict]) -> dict[str, float]:
    """The last val loss each run logged in metrics.jsonl, for the runs whose status.json has none
    (a resumed run until its first evaluation): the runs table shows that, not a blank."""
    out = {}
    for r in all_runs:
        if r.get("val_loss") is None and r.get("state") != "unreadable":
            vals = resources.metrics_tail(str(r["path"])).update().series["val"][1]
            if vals:
                out[r["name"]] = vals[-1]
    return out
