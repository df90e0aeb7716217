"""What the three background-job panels share (app/analysis_panel.py, lens_panel.py, sae_panel.py):
the polled fragment, the full rerun when a job starts or ends, the status line and progress bar,
the Start (or Resume) / Stop buttons and the error a click left.

A job runs in a detached process (trainers/job_runs.py); a panel only reads its status.json through
app.resources. While the job is live the panel's body runs as a fragment every POLL_S seconds; the
fragment's run_every is fixed until the next full rerun, so when the job starts or ends the body
asks for one (st.rerun), which starts or stops the polling and lets the page show the new results.
Widget keys: <key>_start, <key>_stop; session state <key>_msg holds the last click's error.

    def _body(run_dir, key, was_live):
        status = resources.analysis_status(run_dir)
        live = follow(status, was_live)
        show_status(*panel_text(status), status["done"], status["total"])
        controls(key, "the analysis", live, status["state"] == "stopping",
                 stop=Button("Stop analysis", lambda: resources.stop_analysis(run_dir)),
                 start=Button("Start analysis", lambda: resources.start_analysis(run_dir)))
    polled(_body, live, run_dir, key)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

POLL_S = 1.0
LIVE = ("starting", "running", "stopping")  # as trainers.job_runs.LIVE (the app does not import trainers)
LEVELS = {"failed": "error", "interrupted": "warning"}  # st.<level> of a state; any other: info


@dataclass(frozen=True)
class Button:
    """One of the panel's two buttons: its label, what a click calls (with no arguments: a lambda,
    which looks the app.resources function up at click time), its tooltip, and whether it is
    greyed out."""
    label: str
    action: Callable[[], Any]
    help: str | None = None
    disabled: bool = False


def act(key: str, failure: str, action: Callable[[], Any]) -> None:
    """A button's on_click: run action(); a ValueError or OSError (FileNotFoundError included: the
    job's refusal, e.g. already running) is kept in session state as "<failure>: <why>" for
    controls() to show, until the next click."""
    try:
        st.session_state.pop(key + "_msg", None)
        action()
    except (ValueError, OSError) as e:
        st.session_state[key + "_msg"] = f"{failure}: {e}"


def follow(status: dict[str, Any], was_live: bool) -> bool:
    """Whether the job of `status` is live; when that differs from what the fragment was started
    with (the job started, here or elsewhere, or it ended), ask for a full rerun so the polling
    starts or stops (st.rerun does not return)."""
    live = status["state"] in LIVE
    if live != was_live:
        st.rerun()
    return live


def show_status(level: str, text: str, done: int | None, total: int | None) -> None:
    """st.<level>(text), then a progress bar of done/total when there is a total."""
    getattr(st, level)(text)
    if total:
        st.progress(min(1.0, (done or 0) / total))


def controls(key: str, what: str, live: bool, stopping: bool, stop: Button, start: Button,
             bar: Any = None) -> None:
    """Stop (key <key>_stop, greyed out while `stopping`) when the job is live, else Start (key
    <key>_start), in `bar` (default: a new horizontal container; pass one to put a widget before
    the button), then the error the last click left ("Could not start <what>: ..."). `stop` and
    `start` are both given so the caller names them side by side; only one is drawn."""
    bar = st.container(horizontal=True) if bar is None else bar
    if live:
        bar.button(stop.label, key=key + "_stop", icon=":material/stop:", on_click=act,
                   args=(key, f"Could not stop {what}", stop.action), disabled=stopping or stop.disabled,
                   help=stop.help)
    else:
        bar.button(start.label, key=key + "_start", icon=":material/play_arrow:", on_click=act,
                   args=(key, f"Could not start {what}", start.action), disabled=start.disabled,
                   help=start.help)
    if msg := st.session_state.get(key + "_msg"):
        st.error(msg)


def polled(body: Callable[..., None], live: bool, *args: Any) -> None:
    """Run body(*args, live) as a fragment that reruns every POLL_S seconds while the job is live
    (and never otherwise). Each panel passes its own body, so each fragment keeps its own id."""
    st.fragment(run_every=POLL_S if live else None)(body)(*args, live)


__all__ = ["POLL_S", "LIVE", "LEVELS", "Button", "act", "follow", "show_status", "controls", "polled"]
