"""Train page: configure and start a background run, see every run, follow one live.

Runs are detached `python -m trainers.train` processes (trainers.runs), so leaving the page, a
reload or a new browser tab never stops one: this page only reads the run folder. The live panel
is a fragment that reruns itself every second while the run is going and triggers one full rerun
when it ends, which turns its timer off (run_every is fixed until the next full run).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import streamlit as st

from app import resources, state
from app.views import training as tv
from trainers import runs
from trainers.config import TrainConfig, check_config, default_threads

K = "_tr_"  # widget key prefix
MSG = K + "msg"  # (level, text) shown at the top after an action
POLL_S = 1.0
# a new sample costs a checkpoint load and 100 tokens on the server; a run that evaluates every
# second would otherwise pay that on every tick
SAMPLE_EVERY_S = 10.0
DATA_SOURCES = {"shakespeare": "Tiny Shakespeare", "python-docs": "Python docs (offline, always there)",
                "upload": "Upload a .txt"}


def flash(level: str, text: str) -> None:
    st.session_state[MSG] = (level, text)


def form_config() -> tuple[dict | None, str | None]:
    """(TrainConfig fields, None) from the form's widgets, or (None, what is wrong). The data file
    of an upload is saved only when the run starts."""
    ss = st.session_state
    preset = ss.get(K + "preset", "tiny")
    values = {name: ss.get(f"{K}{name}_{preset}", v) for name, v in tv.preset_values(preset).items()}
    cfg = dict(preset=preset, tokenizer=ss.get(K + "tokenizer", "char"),
               name=(ss.get(K + "name") or "").strip() or None, **values)
    source = ss.get(K + "data", "python-docs")
    if source == "upload":
        if ss.get(K + "upload") is None:
            return None, "Upload a .txt file to train on (or pick a built-in corpus)."
        cfg["data"] = "upload"
    else:
        cfg["data"] = source
    try:
        check_config(to_train_config(cfg))
    except ValueError as e:
        return None, str(e)
    return cfg, None


def to_train_config(cfg: dict) -> TrainConfig:
    return TrainConfig.from_preset(cfg["preset"], **{k: v for k, v in cfg.items() if k != "preset"})


def save_data_upload() -> str:
    f = st.session_state[K + "upload"]
    folder = resources.uploads_dir() / "data"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(f.name).stem)[:40] or "data"
    path = folder / f"{stem}-{uuid.uuid4().hex[:6]}.txt"
    path.write_bytes(f.getvalue())
    return str(path)


def on_start() -> None:
    cfg, err = form_config()
    if err:
        flash("error", f"Nothing started: {err}")
        return
    data_file = None
    try:
        if cfg["data"] == "upload":
            cfg["data"] = data_file = save_data_upload()
        name = runs.start(cfg)
    except (ValueError, OSError) as e:  # DataError is a ValueError
        if data_file:
            Path(data_file).unlink(missing_ok=True)
        flash("error", f"Nothing started: {e}")
        return
    st.session_state[K + "selected"] = name
    flash("success", f"Started run {name}. It trains in the background: leaving this page does not stop it.")


def on_stop(name: str) -> None:
    runs.stop(name)
    flash("info", f"Asked {name} to stop: it finishes its step and saves latest/ first.")


def on_resume(name: str) -> None:
    try:
        runs.resume(name, max_iters=int(st.session_state[f"{K}resume_to_{name}"]))
    except (ValueError, FileNotFoundError) as e:
        flash("error", f"Could not resume {name}: {e}")
        return
    flash("success", f"Resumed {name}.")


def on_delete(name: str, confirmed: bool) -> None:
    if not confirmed:
        st.session_state[K + "confirm"] = name
        return
    st.session_state.pop(K + "confirm", None)
    try:
        path = Path(runs.status(name)["path"]).resolve()
        runs.delete(name)
    except (ValueError, FileNotFoundError) as e:
        flash("error", f"Could not delete {name}: {e}")
        return
    ref = st.session_state.get(state.MODEL_REF)
    if ref and (Path(ref).resolve() == path or path in Path(ref).resolve().parents):
        st.session_state[state.MODEL_REF] = None  # it was being inspected; fall back to the default
    flash("success", f"Deleted {name}.")


def on_inspect(path: str) -> None:
    if not state.has_checkpoint(Path(path)):
        flash("warning", "This run has no checkpoint yet: it writes one at its first evaluation.")
        return
    st.session_state[state.MODEL_REF] = path
    flash("success", f"Every page now inspects {state.describe_ref(path)}.")


def live_panel(name: str, live_names: frozenset[str]) -> None:
    """The runs table, then progress, loss chart and sample of the selected run. Run as a fragment
    that polls while any run is going; when the set of going runs changes (one ended, one started
    elsewhere, one was deleted) it asks for a full rerun, which resets the buttons and the timer."""
    all_runs = runs.list_runs()
    now_live = frozenset(r["name"] for r in all_runs if r["state"] in runs.LIVE_STATES)
    status = next((r for r in all_runs if r["name"] == name), None)
    if now_live != live_names or status is None:
        st.rerun()
    live = name in now_live
    st.dataframe(tv.run_rows(all_runs), hide_index=True, width="stretch")
    logged = resources.metrics_tail(str(status["path"])).update()  # only the new rows are parsed
    log_y = st.toggle("Log scale", key=K + "logy")
    fig, points = tv.loss_figure(logged.series, log_y=log_y)
    prog = tv.progress(status, logged.last_tokens_per_s)
    tps = f"{prog.tokens_per_s:,.0f} tok/s" if prog.tokens_per_s else "— tok/s"
    st.caption(f"**{status['state']}** · iter {prog.iter} / {prog.max_iters} · {points} points · "
               f"{tps} · ETA {tv.human_duration(prog.eta_s) if live else '—'}")
    st.progress(prog.fraction)
    if status.get("message") and status["state"] in ("failed", "interrupted", "stopped"):
        (st.error if status["state"] == "failed" else st.info)(status["message"])
    if points:
        st.plotly_chart(fig, key=K + "chart", width="stretch", config={"displaylogo": False})
    else:
        st.caption("No losses yet: the first ones appear after the first logged step.")
    latest = Path(status["path"]) / "latest"
    meta = runs.read_json(latest / "config.json") or {}
    it = (meta.get("meta") or {}).get("iter")
    if it is not None:
        prev = st.session_state.get(K + "sample")  # (checkpoint, iter, when, text)
        if prev and prev[0] == str(latest) and (prev[1] == it or time.time() - prev[2] < SAMPLE_EVERY_S):
            it, text = prev[1], prev[3]
        else:
            try:
                text = resources.run_sample(str(latest), int(it))
                st.session_state[K + "sample"] = (str(latest), it, time.time(), text)
            except Exception as e:  # a checkpoint replaced mid-read; the next tick retries
                text = f"(no sample yet: {type(e).__name__})"
        st.caption(f"Sample from the latest checkpoint (iter {it}, temperature 0.8; "
                   f"refreshed at most every {SAMPLE_EVERY_S:.0f} s):")
        st.code(text or " ", language=None)


# -- page ------------------------------------------------------------------------------------------
st.title("Train")
threads = default_threads()
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
st.caption(f"Training uses {threads} thread{'s' if threads != 1 else ''}, leaving "
           f"{max(cores - threads, 0)} core{'s' if cores - threads != 1 else ''} for the UI.")
if msg := st.session_state.pop(MSG, None):
    getattr(st, msg[0])(msg[1])

with st.expander("New run", expanded=not runs.list_runs()):
    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Preset", list(runs.PRESETS), key=K + "preset",
                          help="tiny: seconds; cpu-small: nanoGPT's laptop settings; baby: nanoGPT's shakespeare_char")
    c2.selectbox("Data", list(DATA_SOURCES), format_func=DATA_SOURCES.get, key=K + "data", index=1)
    c3.selectbox("Tokenizer", ["char", "gpt2"], key=K + "tokenizer",
                 help="char: one token per character (small vocabulary); gpt2: GPT-2's BPE (50257 tokens)")
    if st.session_state.get(K + "data") == "upload":
        st.file_uploader("Training text (.txt, UTF-8)", type=["txt"], key=K + "upload")
    cols = st.columns(len(tv.FIELDS) // 3 + (len(tv.FIELDS) % 3 > 0))
    for i, ((name, label, kind), default) in enumerate(zip(tv.FIELDS, tv.preset_values(preset).values())):
        col = cols[i % len(cols)]
        if kind is int:  # keyed by preset: picking another preset starts from its values
            col.number_input(label, min_value=0, value=int(default), step=1, key=f"{K}{name}_{preset}")
        else:
            col.number_input(label, min_value=0.0, value=float(default), key=f"{K}{name}_{preset}",
                             format="%.5f" if name == "learning_rate" else "%.2f",
                             step=1e-4 if name == "learning_rate" else 0.05)
    st.text_input("Run name (optional)", key=K + "name", placeholder="<preset>-<data>-<time>")
    cfg, err = form_config()
    if err:
        st.error(err)
    else:
        tc = to_train_config(cfg)
        vocab = tv.GPT2_VOCAB if cfg["tokenizer"] == "gpt2" else tv.VOCAB_GUESS.get(cfg["data"], 100)
        est = tv.estimate(tc.model_config(vocab), tc, resources.cpu_tokens_per_s())
        m = st.columns(4)
        m[0].metric("Parameters", f"{est.params / 1e6:.2f}M")
        m[1].metric("Memory (training)", tv.human_bytes(est.memory_bytes))
        m[2].metric("Rough time", tv.human_duration(est.seconds))
        m[3].metric("Tokens", f"{est.tokens / 1e6:.2f}M")
        st.caption(f"Time is scaled from this machine's measured speed on the tiny model "
                   f"({resources.cpu_tokens_per_s():,.0f} tok/s) by FLOPs per token; about "
                   f"{est.tokens_per_s:,.0f} tok/s expected here. A rough guide.")
    st.button("Start training", key=K + "start", type="primary", on_click=on_start)

st.subheader("Runs")
all_runs = runs.list_runs()
if not all_runs:
    st.caption("No runs yet. Start one above: the tiny preset on Python docs trains in well under a minute.")
    st.stop()
names = [r["name"] for r in all_runs]
if st.session_state.get(K + "selected") not in names:
    st.session_state[K + "selected"] = names[0]
name = st.selectbox("Run", names, key=K + "selected")
status = next(r for r in all_runs if r["name"] == name)
live = status["state"] in runs.LIVE_STATES

bar = st.container(horizontal=True, vertical_alignment="bottom")
if live:
    bar.button("Stop", key=K + "stop", on_click=on_stop, args=(name,), icon=":material/stop:")
elif status.get("readonly"):  # the bundled model: trainers.runs refuses to resume or delete it
    bar.caption("A shipped, read-only run: inspect it here, or start a new run to train further.")
else:
    it, mx = int(status.get("iter") or 0), int(status.get("max_iters") or 0)
    bar.number_input("Resume until iter", min_value=it + 1, key=f"{K}resume_to_{name}",
                     value=mx if mx > it else 2 * max(it, 1), width=180)
    bar.button("Resume", key=K + "resume", on_click=on_resume, args=(name,), icon=":material/play_arrow:",
               disabled=not (Path(status["path"]) / "latest").is_dir())
    bar.button("Delete", key=K + "delete", on_click=on_delete, args=(name, False), icon=":material/delete:")
bar.button("Inspect", key=K + "inspect", on_click=on_inspect, args=(status["path"],),
           icon=":material/search:", help="Make this run the model every page inspects")
if st.session_state.get(K + "confirm") == name and not live:
    st.warning(f"Delete run **{name}** and all its checkpoints? This cannot be undone.")
    y, n = st.columns([1, 5])
    y.button("Yes, delete", key=K + "delete_yes", type="primary", on_click=on_delete, args=(name, True))
    n.button("Cancel", key=K + "delete_no", on_click=lambda: st.session_state.pop(K + "confirm", None))

live_names = frozenset(r["name"] for r in all_runs if r["state"] in runs.LIVE_STATES)
st.fragment(run_every=POLL_S if live_names else None)(live_panel)(name, live_names)
