"""Timeline page: replay one prompt through the snapshots a run kept while it trained, and watch
every head's scores change across training (one line per head: when does each head form?).

Widgets and layout only; figures and numbers come from app.views.timeline. The snapshot slider and
what it shows live in a fragment, so moving it reruns only that part (the history chart stays);
Play gives the fragment a run_every timer that advances the slider, and the last step reruns the
app to stop the timer (run_every is fixed until a full rerun). Snapshot models come from
resources.load_model (cached by ref); head scores, prompt losses and greedy samples are memoised
per snapshot in this session (MEMO_KEY, keyed by the checkpoint's stamp), since each costs a
forward pass or forty.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from app import components, resources, state
from app.views import heads as vh
from app.views import timeline as vt
from gpt.analysis import head_scores
from gpt.checkpoint import CheckpointError, list_snapshots, load
from trainers.runs import list_runs

RUN_KEY, ITER_KEY, PLAY_KEY, HOLD_KEY, SLIDER_GEN = "_tl_run", "_tl_iter", "_tl_playing", "_tl_hold", "_tl_gen"
SCORE_KEY, HEAD_KEY, CHART_KEY, MEMO_KEY = "_tl_score", "_tl_head", "_tl_chart", "_tl_memo"
PLAY_EVERY_S = 0.6
MEMO_ENTRIES = 512  # head scores and samples are small: (L, H) tensors and 40 token ids
ss = st.session_state


def memo(key: tuple, make: Callable[[], Any]) -> Any:
    """A per-session LRU of computed values (keys include the checkpoint stamp, so a rewritten
    snapshot is recomputed)."""
    cache: OrderedDict = ss.setdefault(MEMO_KEY, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > MEMO_ENTRIES:
        cache.popitem(last=False)
    return value


def snapshot_scores(ref: str) -> Any:
    """gpt.analysis.head_scores of one snapshot (one recording pass over a repeated random
    sequence: prompt-independent, so it is computed once per snapshot). The model is loaded outside
    the model cache: scoring a run's many snapshots once must not evict the models being viewed."""
    return memo(("scores", ref, resources.checkpoint_stamp(ref)), lambda: head_scores(load(ref)[0]))


st.title("Timeline")
st.caption("Replay a prompt through the snapshots a run kept while it trained, and see when each "
           "attention head forms.")

runs = dict(vt.timeline_runs(state.bundled_path(), ss.get(state.MODEL_REF),
                             [Path(r["path"]) for r in list_runs()]))
if not runs:
    st.info("No run with snapshots yet. Training keeps snapshots at iterations 0, 10, 25, 50, 100, "
            "250, … (snapshots are on by default): start a run on the Train page, or get the bundled "
            f"model into `checkpoints/{state.BUNDLED_NAME}`.")
    if (resources.APP_DIR / "screens/train.py").is_file():
        st.page_link("screens/train.py", label="Train a model", icon=":material/model_training:")
    st.stop()
if ss.get(RUN_KEY) not in runs:
    ss[RUN_KEY] = next(iter(runs))  # bundled, else the current model's run, else the newest

top = st.columns([1, 2])
run = top[0].selectbox("Run", list(runs), format_func=runs.get, key=RUN_KEY,
                       help="Runs that kept snapshots while training.")
snaps = list_snapshots(run)
if not snaps:
    st.warning(f"{runs[run]} has no snapshots any more; pick another run.")
    st.stop()
iters = [it for it, _ in snaps]
paths = {it: str(p) for it, p in snaps}
try:
    final = resources.load_model(paths[iters[-1]])  # tokenizer and shape (shared by the snapshots)
except CheckpointError as e:
    st.error(f"The run's last snapshot cannot be loaded: {e}")
    st.stop()
top[1].caption(f"{len(iters)} snapshots, iter {iters[0]} … {iters[-1]} · {final.config.n_layer} layers × "
               f"{final.config.n_head} heads")

p = components.prompt_box(final, vt.NAMES, where=top[1])
ids = tuple(p.ids)

L, H = final.config.n_layer, final.config.n_head
for key, n in ((state.LAYER, L), (state.HEAD, H)):  # another model may have fewer layers or heads
    if not 0 <= int(ss.get(key, 0)) < n:
        ss[key] = 0
layer, head = int(ss[state.LAYER]), int(ss[state.HEAD])
hid = vh.head_id(layer, head)


def on_head_select() -> None:
    pick = vh.parse_head_id(ss.get(HEAD_KEY))
    if pick is not None:
        ss[state.LAYER], ss[state.HEAD] = pick


def on_chart_click(key: str) -> None:
    pick = vt.chart_pick(ss.get(key), L, H)
    if pick is not None:
        ss[state.LAYER], ss[state.HEAD] = pick


# -- every head across training -------------------------------------------------------------------
st.subheader("Heads across training")
c1, c2 = st.columns([3, 1])
score = c1.radio("Score", list(vh.SCORES), format_func=vh.SCORES.get, key=SCORE_KEY, horizontal=True)
ss[HEAD_KEY] = hid  # follows the shared state (a chart click or another page may have changed it)
c2.selectbox("Head", [vh.head_id(l, h) for l in range(L) for h in range(H)], key=HEAD_KEY,
             on_change=on_head_select, help="Also: click a line in the chart.")
with st.spinner(f"Scoring every head at {len(iters)} snapshots…"):
    try:
        history = [(it, snapshot_scores(paths[it])) for it in iters]
    except CheckpointError as e:
        st.error(f"A snapshot cannot be loaded: {e}")
        st.stop()
frame = vt.history_frame(history, score)
chart_key = f"{CHART_KEY}_{score}_{hid}"  # a new chart when the head changes: no stale selection
st.altair_chart(vt.history_chart(frame, score, selected=hid), key=chart_key, width="stretch",
                on_select=lambda: on_chart_click(chart_key), selection_mode=vt.PICK_PARAM)
last = history[-1][1]
st.caption(f"{vh.SCORE_HELP[score][0].upper() + vh.SCORE_HELP[score][1:]}; measured on a random sequence "
           f"of {last.induction_len} tokens repeated twice, the same at every snapshot. One line per head, "
           "colored by layer; click a line to open that head.")
with st.expander("All heads at the last snapshot (click a row to open it)"):
    components.head_table(last, key="_tl_head_table", selected=(layer, head), sort_by=score)


# -- replay ------------------------------------------------------------------------------------------
# The snapshot shown is ss[ITER_KEY], a plain session value. The slider only displays and edits it:
# whenever the server moves it (a Play tick, Play from the end) the slider gets a new key
# (SLIDER_GEN), because a request already in flight from the browser carries the old slider value,
# and for a widget whose key is unchanged that stale value would win over the server's.
def set_iter(it: int) -> None:
    ss[ITER_KEY] = it
    ss[SLIDER_GEN] = ss.get(SLIDER_GEN, 0) + 1


def on_play() -> None:
    playing = not ss.get(PLAY_KEY, False)
    ss[PLAY_KEY] = playing
    if playing and ss.get(ITER_KEY) == iters[-1]:
        set_iter(iters[0])  # at the end: play from the start
    ss[HOLD_KEY] = True  # show the current snapshot first; the timer advances from there


def on_slide(key: str) -> None:
    ss[ITER_KEY] = ss[key]
    ss[HOLD_KEY] = True  # while playing, show the snapshot the user picked before advancing


PLAYING = bool(ss.get(PLAY_KEY, False))


@st.fragment(run_every=PLAY_EVERY_S if PLAYING else None)
def replay() -> None:
    if bool(ss.get(PLAY_KEY, False)) != PLAYING:
        st.rerun()  # Play / Pause: a full rerun re-arms (or clears) the fragment's timer
    if ss.get(ITER_KEY) not in iters:
        set_iter(iters[-1])
    if PLAYING and not ss.pop(HOLD_KEY, False):
        nxt, done = vt.next_iter(iters, ss[ITER_KEY])
        set_iter(nxt)
        if done:
            ss[PLAY_KEY] = False
            st.rerun()  # stop the timer; the full rerun shows the last snapshot
    a, b = st.columns([6, 1], vertical_alignment="bottom")
    key = f"_tl_slider_{ss.get(SLIDER_GEN, 0)}"
    it = a.select_slider("Snapshot", options=iters, value=ss[ITER_KEY], key=key, on_change=on_slide,
                         args=(key,), format_func=lambda i: f"iter {i}",
                         help="Each stop is a snapshot the run saved while training.")
    b.button("Pause" if PLAYING else "Play", key="_tl_play", on_click=on_play, width="stretch",
             icon=":material/pause:" if PLAYING else ":material/play_arrow:")
    t0 = time.perf_counter()
    try:
        loaded = resources.load_model(paths[it])
    except CheckpointError as e:
        st.error(f"iter {it} cannot be loaded: {e}")
        return
    rec = resources.trace(loaded, ids, vt.NAMES)
    view = vt.snapshot_view(loaded.model, rec, ids, layer, head, loaded.tokenizer.token_str)
    memo(("loss", loaded.ref, loaded.stamp, ids), lambda: view.loss)
    i = iters.index(it)
    prev_loss = prompt_loss_at(iters[i - 1]) if i else None
    ms = (time.perf_counter() - t0) * 1000

    st.markdown(f"#### iter {it}")
    m = st.columns(3)
    delta = None if view.loss is None or prev_loss is None else \
        f"{view.loss - prev_loss:+.3f} since iter {iters[i - 1]}"
    m[0].metric("Loss on the prompt", "–" if view.loss is None else f"{view.loss:.3f}", delta=delta,
                delta_color="inverse", help="Mean next-token cross-entropy (nats) over the prompt.")
    val = loaded.meta.get("val_loss")
    m[1].metric("Val loss when saved", "–" if not isinstance(val, (int, float)) else f"{val:.3f}")
    m[2].metric("Head", hid)
    left, right = st.columns(2)
    left.plotly_chart(view.pattern, width="stretch", key="_tl_pattern")
    right.plotly_chart(view.lens, width="stretch", key="_tl_lens")
    # the sample last: the figures above are already on their way to the browser meanwhile
    t1 = time.perf_counter()
    sample = memo(("sample", loaded.ref, loaded.stamp, ids, vt.SAMPLE_TOKENS),
                  lambda: vt.greedy_continuation(loaded.model, ids, vt.SAMPLE_TOKENS))
    st.markdown(f"**Greedy continuation** ({vt.SAMPLE_TOKENS} tokens)")
    st.code(loaded.tokenizer.decode(list(sample)), language=None, wrap_lines=True)
    st.caption(f"iter {it}: figures in {ms:.0f} ms, sample in {(time.perf_counter() - t1) * 1000:.0f} ms "
               "(cached once seen)")


def prompt_loss_at(it: int) -> float | None:
    """The prompt's loss at snapshot `it` (memoised; one forward with targets when not seen yet)."""
    ref = paths[it]
    try:
        return memo(("loss", ref, resources.checkpoint_stamp(ref), ids),
                    lambda: vt.forward_loss(resources.load_model(ref).model, ids))
    except CheckpointError:
        return None


st.subheader("Replay")
replay()
