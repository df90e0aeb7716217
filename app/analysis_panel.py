"""The analysis job's panel for one run: what state it is in, its progress, Start and Stop.

The job (trainers/analyze.py) scores every head of every snapshot over validation windows, in a
detached process; the panel only reads analysis/status.json through app.resources and polls it
every second while the job runs (a fragment). When the job starts or ends it asks for one full
rerun, so the polling starts or stops and the page's head-score curves pick up the new results. Used by the Train
page's live panel (app.live) and the Timeline page:

    from app.analysis_panel import analysis_panel
    analysis_panel(run_dir, key="_tl_an")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app import resources
from app.job_panel import LEVELS, LIVE, POLL_S, Button, controls, follow, polled, show_status


def panel_text(status: dict[str, Any]) -> tuple[str, str]:
    """(level, text) that says where the analysis stands, e.g. ("info", "Head scores over training:
    5/11 snapshots analysed · running: iter 1000: 128/256 windows")."""
    state, done, total = status["state"], status.get("done") or 0, status.get("total") or 0
    head = f"Head scores over training: {done}/{total} snapshots analysed"
    if state == "none":
        return "info", f"{head}. {status['message'][:1].upper()}{status['message'][1:]}; Start scores them in the background."
    return LEVELS.get(state, "info"), f"{head} · {state}: {status['message']}"


def _body(run_dir: str, key: str, was_live: bool) -> None:
    try:
        status = resources.analysis_status(run_dir)
    except (ValueError, OSError) as e:
        st.caption(f"No analysis for this folder: {e}")
        return
    live = follow(status, was_live)  # started (here or elsewhere): poll; ended: new curves, and no more polling
    show_status(*panel_text(status), status.get("done"), status.get("total"))
    complete = status["state"] == "finished" and status["done"] >= status["total"]
    controls(key, "the analysis", live, status["state"] == "stopping",
             stop=Button("Stop analysis", lambda: resources.stop_analysis(run_dir)),
             start=Button("Resume analysis" if status["done"] and not complete else "Start analysis",
                          lambda: resources.start_analysis(run_dir), disabled=complete or not status["total"],
                          help="Score every head of every snapshot over validation windows, in the background "
                               "(python -m trainers.analyze); it resumes where it stopped"))


def analysis_panel(run_dir: str | Path, key: str = "_an") -> None:
    """The analysis state of the run folder at `run_dir` with Start (or Resume) and Stop buttons;
    polls every second while the job runs. `key` prefixes the widget keys (unique per page)."""
    run_dir = str(run_dir)
    try:
        live = resources.analysis_status(run_dir)["state"] in LIVE
    except (ValueError, OSError):
        live = False
    polled(_body, live, run_dir, key)


__all__ = ["analysis_panel", "panel_text", "POLL_S", "LIVE", "LEVELS"]
