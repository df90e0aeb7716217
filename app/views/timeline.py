"""Training-timeline figures: which runs have snapshots, one snapshot's view of a prompt (the
selected head's pattern, the logit lens, the loss, a greedy sample) and every head's scores
across the snapshots as one line per head.

Pure functions (no Streamlit): recordings, models and scores in; plotly / Altair figures, frames
and numbers out. The page (app/screens/timeline.py) caches and lays them out. The per-head
pattern heatmap and the logit-lens table are the Attention and Layers pages' own figures
(app.views.attention.pattern_figure, app.views.layers.logit_lens_figure), so a head looks the
same on every page.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import altair as alt
import pandas as pd
import plotly.graph_objects as go
import torch

from app.views.attention import pattern_figure
from app.views.heads import SCORES, head_id, parse_head_id, score_tensors
from app.views.layers import logit_lens_figure
from app.views.tokens import token_strs, unique_labels
from gpt.analysis import logit_lens, per_position_loss
from gpt.checkpoint import list_snapshots
from gpt.generate import generate
from gpt.record import Recorder

# What one snapshot's view reads from a recording: the patterns (compact: stored as scores),
# the residual stream for the logit lens, and the logits for the loss.
NAMES = ("blocks.*.attn.hook_pattern", "blocks.*.hook_resid_pre", "blocks.*.hook_resid_post", "logits")
PICK_PARAM = "head_pick"  # the history chart's point selection (Streamlit reports it under this name)
SAMPLE_TOKENS = 40


# -- which runs -------------------------------------------------------------------------------------
def run_of(ref: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint ref belongs to, if that run has snapshots: the ref itself (a run),
    its parent (<run>/latest, <run>/best) or grandparent (<run>/snapshots/iter_N). None otherwise."""
    if not ref:
        return None
    p = Path(ref).expanduser()
    for cand in (p, p.parent, p.parent.parent):
        if cand.is_dir() and list_snapshots(cand):
            return cand
    return None


def timeline_runs(bundled: Path | None, current_ref: str | None, runs: Iterable[Path]
                  ) -> list[tuple[str, str]]:
    """[(run folder, label)] of every run with at least one snapshot: the bundled model's run first,
    then the current model's run, then `runs` (e.g. trainers.runs.list_runs' paths, newest first).
    Each folder appears once; runs without snapshots are left out."""
    out: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(run: Path | None, label: Callable[[Path], str]) -> None:
        if run is None:
            return
        key = run.resolve()
        if key not in seen:
            seen.add(key)
            out.append((str(run), label(run)))

    add(run_of(bundled), lambda r: f"bundled · {r.name}")
    add(run_of(current_ref), lambda r: f"{r.name} (current model)")
    for r in runs:
        add(r if list_snapshots(r) else None, lambda r: r.name)
    return out


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
    lens (plotly logit-lens table), loss (mean next-token cross-entropy on the prompt, nats; None for
    a one-token prompt), and labels (the position labels both figures use)."""
    pattern: go.Figure
    lens: go.Figure
    loss: float | None
    labels: list[str]


def prompt_loss(logits: torch.Tensor, ids: Sequence[int]) -> float | None:
    """Mean cross-entropy of predicting ids[t+1] from position t: GPT.forward(ids[:-1], ids[1:])'s
    loss, read off the recorded logits (1, T, V) or (T, V) of one forward over all of `ids`."""
    if logits.dim() == 3:
        logits = logits[0]  # (T, V)
    if len(ids) < 2:
        return None
    targets = torch.as_tensor(list(ids)[1:], dtype=torch.long)  # (T-1,)
    return float(per_position_loss(logits[:-1], targets).mean())


@torch.no_grad()
def forward_loss(model: torch.nn.Module, ids: Sequence[int]) -> float | None:
    """The model's loss on the prompt: GPT.forward(ids[:-1], targets=ids[1:]); None for one token."""
    if len(ids) < 2:
        return None
    idx = torch.tensor([list(ids)], dtype=torch.long)  # (1, T)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    return float(loss)


def snapshot_view(model: torch.nn.Module, rec: Recorder, ids: Sequence[int], layer: int, head: int,
                  token_str: Callable[[int], str], k: int = 5) -> SnapshotView:
    """Figures of one snapshot on the prompt `ids`, from a recording of NAMES. The pattern's color
    range is fixed to 0..1 so that moving between snapshots compares like with like."""
    labels = unique_labels(token_strs(token_str, ids))
    pattern = rec[f"blocks.{layer}.attn.hook_pattern"][0, head]  # (T, T)
    fig_p = pattern_figure(pattern, labels, title=f"{head_id(layer, head)} attention pattern")
    fig_p.update_traces(zmin=0.0, zmax=1.0, zauto=False)
    lens = logit_lens(model, rec, k=k, ids=ids)
    fig_l = logit_lens_figure(lens.top_ids, lens.top_probs, lens.layers, labels, token_str, lens.target_probs)
    return SnapshotView(fig_p, fig_l, prompt_loss(rec["logits"], ids), labels)


def greedy_continuation(model: torch.nn.Module, ids: Sequence[int], n: int = SAMPLE_TOKENS) -> list[int]:
    """The `n` tokens greedy decoding (temperature 0) appends to `ids`, conditioned on the last
    block_size - n of them: then prompt and sample fit one context window and every step is one
    KV-cached position (past block_size each step would re-encode the whole window, ~10x slower)."""
    keep = max(1, model.config.block_size - n)
    ctx = list(ids)[-keep:]
    return generate(model, ctx, n, temperature=0.0)[len(ctx):]


# -- every head across training ---------------------------------------------------------------------
def history_frame(history: Sequence[tuple[int, Any]], score: str) -> pd.DataFrame:
    """Long table for the history chart: one row per (snapshot, head) with columns iter, head
    ("L0H1"), layer ("L0"), value (the head's `score` at that snapshot). `history` is
    [(iter, scores)] with scores a gpt.analysis.HeadScores or a {score: (L, H)} mapping."""
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
    y = alt.Y("value:Q", title=SCORES[score])
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


def chart_pick(event: Any, n_layer: int, n_head: int) -> tuple[int, int] | None:
    """(layer, head) the user clicked in history_chart, from what st.altair_chart(on_select=...)
    returns or st.session_state[key] holds: {"selection": {PICK_PARAM: [{"head": "L0H1", ...}]}}
    (also accepted: its .selection, or the point list). None when nothing valid is selected: no
    click yet, a cleared selection, or a head outside this model (a stale click)."""
    points: Any = event
    for key in ("selection", PICK_PARAM):
        inner = points.get(key) if isinstance(points, Mapping) else getattr(points, key, None)
        if inner is not None:
            points = inner
    if isinstance(points, Mapping):
        points = [points]
    if not isinstance(points, (list, tuple)) or not points or not isinstance(points[-1], Mapping):
        return None
    pick = parse_head_id(points[-1].get("head"))
    if pick is None or not (0 <= pick[0] < n_layer and 0 <= pick[1] < n_head):
        return None
    return pick
