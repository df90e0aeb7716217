"""Train page: configure and start a background run, see every run, follow one live. Runs are
detached processes (trainers.runs): leaving the page or reloading never stops one; the page only
reads run folders, and its live panel (app.live) polls them every second while a run goes."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import catalog, components, live, resources, state, uploads
from app.views import training as tv
from gpt.checkpoint import latest_dir
from trainers import runs
from trainers.config import TrainConfig, check_config, preset_values
from trainers.machine import cpu_cores, default_threads

K, MSG, POLL_S = "_tr_", "_tr_msg", 1.0  # MSG: (level, text) shown after an action
ss = st.session_state


def form_config() -> TrainConfig:
    """The form as a TrainConfig, not yet checked; ValueError while the chosen upload is missing."""
    preset = ss.get(K + "preset", "tiny")
    return TrainConfig.from_preset(preset, **tv.form_values(ss, K, preset, preset_values(preset, tv.FIELD_NAMES),
                                                          runs.PRESETS[preset].tokenizer))


def on_start() -> None:
    data_file = None
    try:
        cfg = form_config()
        if cfg.data == "upload":  # saved only now, so a form that never starts leaves no file
            f = ss[K + "upload"]
            cfg.data = data_file = str(uploads.save_text_upload(f.name, f.getvalue()))
        ss[K + "selected"] = runs.start(cfg)  # checks it, writes its config.json, launches the trainer
    except (ValueError, OSError) as e:  # DataError is a ValueError
        if data_file:
            Path(data_file).unlink(missing_ok=True)
        ss[MSG] = ("error", f"Nothing started: {e}")
        return
    ss[MSG] = tv.run_message("start", ss[K + "selected"])


def on_run(action: str, name: str) -> None:
    """Stop, resume, delete (the confirm button's) or inspect run `name`; say what happened."""
    label = None  # inspect: what every page inspects now (None: the run has no checkpoint yet)
    try:
        if action == "stop":
            runs.stop(name)
        elif action == "resume":
            runs.resume(name, max_iters=int(ss[f"{K}resume_to_{name}"]))
        elif action == "delete":
            ss.pop(K + "confirm", None)
            inspected = tv.is_within(ss.get(state.MODEL_REF), runs.status(name)["path"])
            runs.delete(name)
            if inspected:  # the model every page inspected is gone: they fall back to the default
                ss[state.MODEL_REF] = None
        elif catalog.has_checkpoint(path := runs.status(name)["path"]):  # inspect
            ss[state.MODEL_REF] = path
            label = catalog.describe(path)
        ss[MSG] = tv.run_message(action, name, label)
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        ss[MSG] = ("error", f"Could not {action} {name}: {e}")


def new_run_form() -> None:
    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Preset", list(runs.PRESETS), key=K + "preset", help=tv.PRESET_HELP)
    c2.selectbox("Data", list(tv.DATA_SOURCES), format_func=tv.DATA_SOURCES.get, key=K + "data",
                 index=list(tv.DATA_SOURCES).index(resources.train_data_default()))  # the bundled model's
    toks = ["char", "gpt2"]  # keyed by preset: gpt2 starts on GPT-2's BPE, the others on characters
    c3.selectbox("Tokenizer", toks, index=toks.index(runs.PRESETS[preset].tokenizer), key=f"{K}tokenizer_{preset}",
                 help=tv.TOKENIZER_HELP)
    if ss.get(K + "data") == "upload":
        st.file_uploader("Training text (.txt, UTF-8)", type=["txt"], key=K + "upload")
    cols, defaults = st.columns(3), preset_values(preset, tv.FIELD_NAMES)
    for i, (name, label, kind) in enumerate(tv.FIELDS):  # keyed by preset: a new preset starts from its values
        cols[i % 3].number_input(label, key=f"{K}{name}_{preset}", **tv.number_args(name, kind, defaults[name]))
    st.text_input("Run name (optional)", key=K + "name", placeholder="<preset>-<data>-<time>")
    try:
        check_config(cfg := form_config())
    except ValueError as e:
        st.error(str(e))
    else:
        est, cost, err = resources.train_estimate(cfg)  # a few real steps, timed once per model
        components.metric_row(tv.estimate_cells(est))
        st.caption(tv.estimate_caption(est, cost, err))
    st.button("Start training", key=K + "start", type="primary", on_click=on_start)


def run_actions(status: dict, live: bool) -> None:
    name, bar = status["name"], st.container(horizontal=True, vertical_alignment="bottom")
    if live:
        bar.button("Stop", key=K + "stop", on_click=on_run, args=("stop", name), icon=":material/stop:")
    elif status.get("readonly"):  # the bundled model: trainers.runs refuses to resume or delete it
        bar.caption("A shipped, read-only run: inspect it here, or start a new run to train further.")
    else:
        bar.number_input("Resume until iter", key=f"{K}resume_to_{name}", width=180, **tv.resume_args(status))
        bar.button("Resume", key=K + "resume", on_click=on_run, args=("resume", name), icon=":material/play_arrow:",
                   disabled=not latest_dir(status["path"]).is_dir())
        bar.button("Delete", key=K + "delete", on_click=ss.update, args=({K + "confirm": name},),
                   icon=":material/delete:")  # it only asks; "Yes, delete" deletes
    bar.button("Inspect", key=K + "inspect", on_click=on_run, args=("inspect", name),
               icon=":material/search:", help="Make this run the model every page inspects")
    if ss.get(K + "confirm") == name and not live:
        st.warning(f"Delete run **{name}** and all its checkpoints? This cannot be undone.")
        y, n = st.columns([1, 5])
        y.button("Yes, delete", key=K + "delete_yes", type="primary", on_click=on_run, args=("delete", name))
        n.button("Cancel", key=K + "delete_no", on_click=ss.pop, args=(K + "confirm", None))


st.title("Train")
st.caption(tv.threads_caption(default_threads(), cpu_cores()))
components.say(ss.pop(MSG, None))
with st.expander("New run", expanded=not runs.list_runs()):
    new_run_form()
st.subheader("Runs")
if not (all_runs := runs.list_runs()):
    st.caption("No runs yet. Start one above: the tiny preset trains in well under a minute.")
    st.stop()
name = components.kept_select("Run", [r["name"] for r in all_runs], K + "selected")
live_names = frozenset(r["name"] for r in all_runs if r["state"] in runs.LIVE_STATES)
run_actions(next(r for r in all_runs if r["name"] == name), live=name in live_names)
st.fragment(run_every=POLL_S if live_names else None)(live.panel)(name, live_names)
