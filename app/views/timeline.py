"""Training-timeline figures: playing through the snapshots, one snapshot's view of a prompt (the
selected head's pattern, the logit lens, the loss) and every head's scores across the snapshots
as one line per head. The losses come from gpt.analysis, the greedy sample from gpt.generate.

Pure functions (no Streamlit): recordings, models and scores in; plotly / Altair figures, frames
and numbers out. The page (app/screens/timeline.py) lays them out; which runs have snapshots is app.catalog's business. The per-head
pattern heatmap and the logit-lens table are the Attention and Layers pages' own figures
(app.views.attention.pattern_figure, app.views.layers.logit_lens_figure), so a head looks the
same on every page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import altair as alt
import pandas as pd
import plotly.graph_objects as go

from app.views.attention import pattern_figure
from app.views.events import last_selected
from app.views.heads import SCORE_HELP, SCORES, THRESHOLDS, head_id, parse_head_id, score_tensors, verdict
from app.views.layers import lens_note, lens_targets, lens_width, logit_lens_figure
from gpt.analysis import logit_lens, prompt_loss
from gpt.config import GPTConfig

if TYPE_CHECKING:
    from app.inspection import Inspection

# What one snapshot's view reads from a recording: the patterns (compact: stored as scores),
# the residual stream for the logit lens, and the logits for the loss.
NAMES = ("blocks.*.attn.hook_pattern", "blocks.*.hook_resid_pre", "blocks.*.hook_resid_post", "logits")
PICK_PARAM = "head_pick"  # the history chart's point selection (Streamlit reports it under this name)
SAMPLE_TOKENS = 40  # the page's greedy sample: gpt.generate.greedy_continuation(model, ids, SAMPLE_TOKENS)


def no_runs_note(bundled_name: str) -> str:
    """What the Timeline says when no run kept snapshots."""
    return ("No run with snapshots yet. Training keeps snapshots at iterations 0, 10, 25, 50, 100, "
            "250, … (snapshots are on by default): start a run on the Train page, or get the bundled "
            f"model into `checkpoints/{bundled_name}`.")


def run_caption(iters: Sequence[int], config: GPTConfig) -> str:
    """The line beside the run picker: how many snapshots, from which iteration to which, and the shape."""
    return (f"{len(iters)} snapshots, iter {iters[0]} … {iters[-1]} · {config.n_layer} layers × "
            f"{config.n_head} heads")


# -- playing ---------------------------------------------------------------------------------------
def next_iter(iters: Sequence[int], current: int | None) -> tuple[int, bool]:
    """The snapshot after `current` for the play button, and whether it is the last one.
    An unknown or missing `current` starts at the first snapshot."""
    if not iters:
        raise ValueError("no snapshots to play")
    if current not in iters:
        return iters[0], len(iters) == 1
    i = min(list(iters).index(current) + 1, len(iters) - 1)
    return iters[i], i == len(iters) - 1


# -- one snapshot -----------------------------------------------------------------------------------
@dataclass
class SnapshotView:
    """What the timeline shows for one snapshot: pattern (plotly heatmap of the selected head),
    lens (plotly logit-lens table of the last positions, full width, with its text), lens_note (its
    caption: which positions, the embed row), loss (mean next-token cross-entropy on the prompt,
    nats; None for a one-token prompt), and labels (the position labels of the pattern)."""
    pattern: go.Figure
    lens: go.Figure
    lens_note: str
    loss: float | None
    labels: list[str]


def snapshot_view(insp: "Inspection", k: int = 5, width: int | None = None) -> SnapshotView:
    """Figures of one snapshot (the Inspection's model) on its prompt, layer and head, from a
    recording of NAMES. The pattern's color range is fixed to 0..1 so that moving between
    snapshots compares like with like. The lens shows the last `width` positions (default: as many
    as the Layers page shows for this tokenizer), so each cell can carry its token's text."""
    model, rec, ids, labels, token_str = insp.model, insp.rec, insp.ids, insp.labels, insp.token_str
    layer, head, T = insp.layer, insp.head, insp.T
    pattern = rec[f"blocks.{layer}.attn.hook_pattern"][0, head]  # (T, T)
    fig_p = pattern_figure(pattern, labels, title=f"{head_id(layer, head)} attention pattern")
    fig_p.update_traces(zmin=0.0, zmax=1.0, zauto=False)
    W = min(width or lens_width(insp.loaded.tokenizer.kind), T)
    lens = logit_lens(model, rec, k=k, positions=range(T - W, T), ids=ids)
    fig_l = logit_lens_figure(lens.top_ids, lens.top_probs, lens.layers, [labels[p] for p in lens.positions],
                              token_str, lens.target_probs, lens_targets(ids, lens.positions))
    shown = f"Positions {T - W}…{T - 1} of {T}" if W < T else f"All {T} positions"
    note = f"{shown}; an outline marks a guess that is the actual next token. {lens_note(model)}"
    return SnapshotView(fig_p, fig_l, note, prompt_loss(rec["logits"], ids), labels)


def snapshot_metrics(loss: float | None, prev: tuple[int, float | None] | None, val_loss: Any, layer: int,
                     head: int) -> list[tuple[str, str] | tuple[str, str, dict[str, Any]]]:
    """The metrics above one snapshot, as (label, value[, st.metric's other arguments]): the prompt's
    loss (its change since `prev` as the delta, a drop shown as good), the val loss the checkpoint
    was saved with (`val_loss` from its meta: "–" when it is not a number), and the head shown."""
    return [("Loss on the prompt", "–" if loss is None else f"{loss:.3f}",
             dict(delta=loss_delta(loss, prev), delta_color="inverse",
                  help="Mean next-token cross-entropy (nats) over the prompt.")),
            ("Val loss when saved", "–" if not isinstance(val_loss, (int, float)) else f"{val_loss:.3f}"),
            ("Head", head_id(layer, head))]


def timing_note(it: int, figures_ms: float, sample_ms: float) -> str:
    """The caption under one snapshot: how long its figures and its greedy sample took."""
    return f"iter {it}: figures in {figures_ms:.0f} ms, sample in {sample_ms:.0f} ms (cached once seen)"


def loss_delta(loss: float | None, prev: tuple[int, float | None] | None) -> str | None:
    """The change of the prompt's loss since the previous snapshot `prev` = (iter, loss), as the
    loss metric's delta ("-0.065 since iter 5000"); None when either loss is unknown."""
    if loss is None or prev is None or prev[1] is None:
        return None
    return f"{loss - prev[1]:+.3f} since iter {prev[0]}"


# -- every head across training ---------------------------------------------------------------------
def history_frame(history: Sequence[tuple[int, Any]], score: str) -> pd.DataFrame:
    """Long table for the history chart: one row per (snapshot, head) with columns iter, head
    ("L0H1"), layer ("L0"), value (the head's `score` at that snapshot). `history` is
    [(iter, scores)] with scores a gpt.heads.HeadScores or a {score: (L, H)} mapping."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {list(SCORES)}")
    rows: dict[str, list[Any]] = {"iter": [], "head": [], "layer": [], "value": []}
    for it, scores in history:
        mats = score_tensors(scores)
        if score not in mats:
            raise ValueError(f"the scores of iter {it} have no {score!r}")
        m = mats[score]  # (L, H)
        L, H = m.shape
        rows["iter"] += [int(it)] * (L * H)
        rows["head"] += [head_id(l, h) for l in range(L) for h in range(H)]
        rows["layer"] += [f"L{l}" for l in range(L) for _ in range(H)]
        rows["value"] += m.reshape(L * H).tolist()  # (L, H) -> (L*H,), layer-major like the ids
    return pd.DataFrame(rows)


def history_chart(frame: pd.DataFrame, score: str, selected: str | None = None,
                  height: int = 320) -> alt.LayerChart:
    """One line per head (colored by layer) of `score` against the snapshot iteration (evenly
    spaced, like the slider). Clicking near a point selects that head: the point selection
    PICK_PARAM on field "head" (nearest=True, so the user need not hit the thin line); read it with
    `chart_pick`. `selected` (a head id) is drawn thick and labelled, the others thin and faded."""
    x = alt.X("iter:O", title="iteration (snapshot)", axis=alt.Axis(labelAngle=0))
    # attention-mass scores on their whole 0..1 range, so noise (a few thousandths) stays a flat line
    y = alt.Y("value:Q", title=SCORES[score],
              scale=alt.Scale(domain=[0, 1]) if score in THRESHOLDS else alt.Scale(zero=True))
    color = alt.Color("layer:N", title="layer", scale=alt.Scale(scheme="category10"))
    base = alt.Chart(frame).encode(x=x, y=y, color=color, detail="head:N")
    hot = alt.datum.head == (selected or "")
    lines = base.mark_line(interpolate="monotone").encode(
        opacity=alt.condition(hot, alt.value(1.0), alt.value(0.35 if selected else 0.8)),
        strokeWidth=alt.condition(hot, alt.value(4.0), alt.value(1.5)))
    pick = alt.selection_point(name=PICK_PARAM, fields=["head"], on="click", nearest=True)
    points = base.mark_point(filled=True, size=40, cursor="pointer").encode(
        opacity=alt.condition(hot, alt.value(1.0), alt.value(0.3)),
        tooltip=[alt.Tooltip("head:N", title="head"), alt.Tooltip("iter:O", title="iter"),
                 alt.Tooltip("value:Q", title=SCORES[score], format=".3f")]).add_params(pick)
    layers: list[Any] = [lines, points]
    if selected is not None and (frame["head"] == selected).any():
        last = frame[frame["head"] == selected].tail(1)
        layers.append(alt.Chart(last).mark_text(align="left", dx=8, fontWeight="bold", fontSize=13)
                      .encode(x=x, y=y, text="head:N", color=color))
    return alt.layer(*layers).properties(height=height)


def history_caption(score: str, last: Any, n_repeated: int) -> str:
    """The caption under history_chart: what `score` means, what it was measured on, and in words
    which heads count as that kind at the last snapshot (`last`: its scores, see verdict)."""
    return (f"{SCORE_HELP[score][0].upper() + SCORE_HELP[score][1:]}; measured on a random sequence of "
            f"{n_repeated} tokens repeated twice, the same at every snapshot. One line per head, colored "
            "by layer; click a line to open that head." + (f" At the last snapshot: {v[0].lower()}{v[1:]}"
                                                           if (v := verdict(last, score)) else ""))


def chart_pick(event: Any, n_layer: int, n_head: int) -> tuple[int, int] | None:
    """(layer, head) the user clicked in history_chart, from what st.altair_chart(on_select=...)
    returns or st.session_state[key] holds: {"selection": {PICK_PARAM: [{"head": "L0H1", ...}]}}
    (also accepted: its .selection, or the point list). None when nothing valid is selected: no
    click yet, a cleared selection, or a head outside this model (a stale click)."""
    point = last_selected(event, PICK_PARAM)
    pick = parse_head_id(point.get("head")) if isinstance(point, Mapping) else None
    if pick is None or not (0 <= pick[0] < n_layer and 0 <= pick[1] < n_head):
        return None
    return pick
