"""The Features page's training panel: train an SAE on a hook of the current run in the background,
watch its live chart, stop it, resume it.

The job (trainers/train_sae.py) runs detached on one thread (trainers.sae_runs); the panel only
reads its status.json and metrics.jsonl through app.resources and polls every second while it
runs (a fragment). When the job starts or ends it asks for one full rerun, so the SAE list picks
up the new SAE.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import resources
from app.job_panel import LIVE, POLL_S, Button, controls, follow, polled, show_status
from app.views import features as vf
from gpt.sae_index import sae_path

SITES = ("hook_resid_post", "hook_resid_mid", "hook_resid_pre", "hook_mlp_out", "hook_attn_out")


def _body(run_dir: str, hook: str, key: str, steps: int, k: int, was_live: bool) -> None:
    status = resources.sae_status(run_dir, hook)
    live = follow(status, was_live)  # started: poll; ended: the SAE list picks up the new SAE
    level, text = vf.status_text(status)
    show_status(level, f"SAE on {hook} · {text}", status.get("step"), status.get("total"))
    controls(key, "the SAE job", live, status["state"] == "stopping",
             stop=Button("Stop SAE training", lambda: resources.stop_sae(run_dir, hook)),
             start=Button("Resume SAE training" if status["state"] in ("stopped", "interrupted") else "Train SAE",
                          lambda: resources.start_sae(run_dir, hook, steps=steps, k=k),
                          help="Train a TopK SAE on this hook in the background (python -m trainers.train_sae, "
                               "1 thread); it resumes where it stopped"))
    fig, points = vf.metrics_figure(resources.sae_metrics(str(sae_path(run_dir, hook))))
    if points:
        st.plotly_chart(fig, key=key + "_chart", width="stretch", config={"displaylogo": False})


def sae_panel(run_dir: str | Path, n_layer: int, key: str = "_sae") -> None:
    """Pick a hook (layer and site) and the job's length, Start / Stop, state and live chart of the
    SAE job for that hook; polls every second while it runs."""
    run_dir = str(run_dir)
    c1, c2, c3, c4 = st.columns([1, 2, 1, 1])
    layer = c1.selectbox("Layer", range(n_layer), index=n_layer // 2, key=key + "_layer")
    site = c2.selectbox("Site", SITES, key=key + "_site")
    steps = int(c3.number_input("Steps", 10, 100_000, 600, step=100, key=key + "_steps",
                                help="SAE steps of 2048 tokens (600: the bundled model's SAE, a few minutes)"))
    k = int(c4.number_input("k", 1, 256, 32, key=key + "_k", help="latents kept per token (TopK)"))
    hook = f"blocks.{layer}.{site}"
    try:
        live = resources.sae_status(run_dir, hook)["state"] in LIVE
    except (ValueError, OSError) as e:
        st.caption(f"No SAE jobs for this folder: {e}")
        return
    polled(_body, live, run_dir, hook, key, steps, k)


__all__ = ["sae_panel", "SITES", "POLL_S", "LIVE"]
