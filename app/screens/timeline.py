"""Timeline page: replay one prompt through the snapshots a run kept while it trained, and watch
every head's scores change across training (one line per head: when does each head form?).

Widgets and layout only. Runs come from the one picker (app.catalog), models, traces, head scores,
losses and samples from app.resources (cached per checkpoint), figures from app.views.timeline.
The heads-across-training section is app.head_history's: the analysis job's curves, phase-change
markers and top examples where the run has them (Timeline 2.0), else scores per snapshot.
Under it, the export bar: that section's numbers as NPZ / CSV and a notebook that recomputes them
(app.export_history). The snapshot slider and what it shows live in a fragment, so moving it
reruns only that part; Play gives the fragment a run_every timer (app.playback), and the last step
reruns the app to stop it (run_every is fixed until a full rerun).
"""
from __future__ import annotations

import time

import streamlit as st

from app import catalog, components, head_history, resources, state
from app.inspection import Inspection, clamp
from app.playback import Playback
from app.views import timeline as vt

RUN_KEY = "_tl_run"
PLAY_EVERY_S = 0.6
ss = st.session_state


def snapshot(it: int, insp: Inspection, prev: tuple[int, float | None] | None, ms: float) -> None:
    """One snapshot: the prompt's loss (and its change since the previous snapshot), the logit lens,
    the head's pattern, and a greedy continuation (last: the figures are sent meanwhile)."""
    view = vt.snapshot_view(insp)
    st.markdown(f"#### iter {it}")
    components.metric_row(vt.snapshot_metrics(view.loss, prev, insp.loaded.meta.get("val_loss"), insp.layer, insp.head))
    st.plotly_chart(view.lens, width="stretch", key="_tl_lens")
    st.caption(view.lens_note)
    left, right = st.columns(2)
    left.plotly_chart(view.pattern, width="stretch", key="_tl_pattern")
    t1 = time.perf_counter()
    sample = resources.greedy_sample(insp.loaded, insp.ids, vt.SAMPLE_TOKENS)
    right.markdown(f"**Greedy continuation** ({vt.SAMPLE_TOKENS} tokens)")
    right.code(insp.loaded.tokenizer.decode(list(sample)), language=None, wrap_lines=True)
    components.token_legend(right)
    st.caption(vt.timing_note(it, ms, (time.perf_counter() - t1) * 1000))


st.title("Timeline")
st.caption("Replay a prompt through the snapshots a run kept while it trained, and see when each "
           "attention head forms.")
top = st.columns([1, 2])
run = components.picker(RUN_KEY, "run", where=top[0], current=ss.get(state.MODEL_REF),
                        help="Runs that kept snapshots while training.")
if run is None:
    st.info(vt.no_runs_note(catalog.BUNDLED_NAME))
    st.page_link("screens/train.py", label="Train a model", icon=":material/model_training:")
    st.stop()
paths = {it: str(p) for it, p in catalog.snapshots(run)}
if not paths:
    st.warning(f"{catalog.describe(run)} has no snapshots any more; pick another run.")
    st.stop()
iters = list(paths)
final = components.load_or_stop(paths[iters[-1]], "The run's last snapshot")  # tokenizer and shape
top[1].caption(vt.run_caption(iters, final.config))
ids = tuple(components.prompt_box(final, vt.NAMES, where=top[1]).ids)
layer, head = clamp(ss.get(state.LAYER), final.config.n_layer), clamp(ss.get(state.HEAD), final.config.n_head)
ss[state.LAYER], ss[state.HEAD] = layer, head
last = resources.inspect(final, ids, None, layer, head)
shown = head_history.section(last, paths, run)
# the section's numbers (scores, losses, markers) and the prompt's loss at every snapshot; computed on click
components.export_bar("timeline", last, loaded=final, run=run, paths=paths, **shown)

player = Playback(ss, iters)
PLAYING = player.playing


@st.fragment(run_every=PLAY_EVERY_S if PLAYING else None)
def replay() -> None:
    if player.playing != PLAYING:
        st.rerun()  # Play / Pause: a full rerun re-arms (or clears) the fragment's timer
    if player.tick():
        st.rerun()  # played to the end: stop the timer; the full rerun shows the last snapshot
    a, b = st.columns([6, 1], vertical_alignment="bottom")
    key = player.slider_key
    it = a.select_slider("Snapshot", options=iters, value=player.current, key=key, on_change=player.slid,
                         args=(key,), format_func=lambda i: f"iter {i}",
                         help="Each stop is a snapshot the run saved while training.")
    b.button("Pause" if PLAYING else "Play", key="_tl_play", on_click=player.toggle, width="stretch",
             icon=":material/pause:" if PLAYING else ":material/play_arrow:")
    t0 = time.perf_counter()
    insp = resources.inspect(components.load_or_stop(paths[it], f"iter {it}"), ids, vt.NAMES, layer, head)
    i = iters.index(it)
    prev = (iters[i - 1], resources.prompt_loss_at(paths[iters[i - 1]], ids)) if i else None
    snapshot(it, insp, prev, (time.perf_counter() - t0) * 1000)


st.subheader("Replay")
replay()
