"""The tuned-lens fit's panel for one checkpoint: its state, progress, Start (or Resume) and Stop, and
a corpus picker when the checkpoint names no corpus of its own (an upload).

The fit (trainers/fit_lens.py) runs in a detached process; the panel only reads lens/status.json
through app.resources and polls it every second while the fit runs (a fragment). When the fit starts
or ends it asks for one full rerun, so the polling starts or stops and the page shows the new lens.

    from app.lens_panel import lens_panel
    lens_panel(state, key="_lens")      # state: app.resources.lens_state(loaded)
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from app import resources
from app.job_panel import LEVELS, LIVE, POLL_S, Button, controls, follow, polled, show_status


def panel_text(status: dict[str, Any]) -> tuple[str, str]:
    """(level, text) that says where the fit stands, e.g. ("info", "Tuned lens fit: step 120/250 ·
    running: step 120/250 · mean KL 0.95 nats")."""
    state, done, total = status["state"], status.get("done") or 0, status.get("total") or 0
    if state == "none":
        return "info", ("No tuned lens for this model yet. Fit one in the background (about a minute on one "
                        "CPU thread for the bundled model); it resumes where it stopped."
                        if not status.get("resumable") else "A stopped fit waits: Resume continues it.")
    head = f"Tuned lens fit: step {done}/{total}" if total else "Tuned lens fit"
    return LEVELS.get(state, "info"), f"{head} · {state}: {status['message']}"


def _body(checkpoint: str, corpus: str | None, key: str, was_live: bool) -> None:
    try:
        status = resources.lens_status(checkpoint)
    except (ValueError, OSError) as e:
        st.caption(f"No tuned lens for this checkpoint: {e}")
        return
    live = follow(status, was_live)  # started (here or elsewhere): poll; ended: the page shows the new lens
    show_status(*panel_text(status), status.get("done"), status.get("total"))
    bar = st.container(horizontal=True)
    data = corpus
    if corpus is None and not live:  # an upload: the user picks the text to fit on
        data = bar.selectbox("Fit on corpus", resources.fit_corpora(), key=key + "_corpus",
                             help="This checkpoint names no training corpus; the fit reads validation "
                                  "windows of the one you pick (its last 10%)")
    resume = status["state"] in ("stopped", "interrupted") or status.get("resumable")
    controls(key, "the fit", live, status["state"] == "stopping", bar=bar,
             stop=Button("Stop fit", lambda: resources.stop_lens(checkpoint)),
             start=Button("Resume tuned-lens fit" if resume else "Fit tuned lens",
                          lambda: resources.start_lens(checkpoint, data),
                          help="One affine translator per layer, fitted so each layer's readout matches the final "
                               "distribution (python -m trainers.fit_lens); runs in the background on one thread"))


def lens_panel(state: "resources.LensState", key: str = "_lens") -> None:
    """The fit's state for the checkpoint of `state` with Start (or Resume) and Stop; polls every
    second while the fit runs. `key` prefixes the widget keys (unique per page)."""
    try:
        live = resources.lens_status(state.checkpoint)["state"] in LIVE
    except (ValueError, OSError):
        live = False
    polled(_body, live, state.checkpoint, state.corpus, key)


__all__ = ["lens_panel", "panel_text", "POLL_S", "LIVE", "LEVELS"]
