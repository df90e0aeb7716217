"""The head table: one row per attention head, its scores as columns, and the mapping from a row
the user clicked back to (layer, head).

Pure (no Streamlit): app.components.head_table renders `head_frame` with st.dataframe and calls
`pick_row` on the selection event. Head ids are "L{layer}H{head}" everywhere in the app (table,
timeline chart, selectors), so one head reads the same on every page.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from app.views.events import last_selected

# score key -> column label, in display order (keys of gpt.heads.HeadScores / head_table rows)
SCORES: dict[str, str] = {
    "prev_token": "previous-token",
    "induction": "induction",
    "entropy": "entropy (bits)",
    "first_token": "first-token",
}
# what each score means, for column help and captions
SCORE_HELP: dict[str, str] = {
    "prev_token": "mean attention weight on the previous token",
    "induction": "on a random sequence repeated twice: mean weight on the token after the previous "
                 "occurrence of the current token",
    "entropy": "mean entropy of the head's attention (bits): low = focused, high = spread out",
    "first_token": "mean weight on the first token (an attention sink)",
}
# The attention-mass scores (mean weights, 0..1: drawn on a fixed 0..1 scale) and the score from
# which a head counts as that kind of head. Induction heads of small trained models score about
# 0.3-0.9 on TransformerLens's definition; a previous-token or sink head puts most of its weight there.
THRESHOLDS: dict[str, float] = {"induction": 0.2, "prev_token": 0.5, "first_token": 0.5}
KINDS: dict[str, str] = {"induction": "induction head", "prev_token": "previous-token head",
                         "first_token": "attention-sink head"}
_HEAD_ID = re.compile(r"L(\d+)H(\d+)")


def head_id(layer: int, head: int) -> str:
    """"L0H1": the label of layer 0, head 1."""
    return f"L{int(layer)}H{int(head)}"


def parse_head_id(text: Any) -> tuple[int, int] | None:
    """(layer, head) of a head id like "L0H1"; None for anything else."""
    m = _HEAD_ID.fullmatch(str(text).strip()) if text is not None else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def score_tensors(scores: Any) -> dict[str, torch.Tensor]:
    """{score key: (L, H) float tensor} from a gpt.heads.HeadScores, or a mapping of some of
    SCORES' keys to (L, H) tensors (e.g. gpt.heads.prompt_head_scores' dict). Keys
    outside SCORES are ignored; every tensor must have the same (L, H) shape."""
    items = scores.items() if isinstance(scores, Mapping) else \
        ((k, getattr(scores, k, None)) for k in SCORES)
    out = {k: torch.as_tensor(v).detach().float().cpu() for k, v in items if k in SCORES and v is not None}
    if not out:
        raise ValueError(f"no head scores given: expected some of {list(SCORES)}")
    shapes = {tuple(v.shape) for v in out.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"head scores must all be (layers, heads) matrices; got shapes {sorted(shapes)}")
    return {k: out[k] for k in SCORES if k in out}  # display order


def verdict(scores: Any, key: str, threshold: float | None = None, most: int = 4) -> str:
    """In words, which heads score at least `threshold` (default THRESHOLDS[key]) on the
    attention-mass score `key`: "No induction head (max 0.007, L2H1; a head counts from 0.2)." or
    "2 previous-token heads: L2H3 (0.72), L2H0 (0.51) (score ≥ 0.5).", the `most` best named.
    `scores` as for score_tensors. "" for a score without a threshold (entropy) or not in `scores`."""
    mats = score_tensors(scores)
    if key not in mats or (threshold is None and key not in THRESHOLDS):
        return ""
    thr = THRESHOLDS[key] if threshold is None else threshold
    m = mats[key]  # (L, H)
    flat = m.reshape(-1)  # (L*H,), layer-major
    H = m.size(1)
    order = sorted(range(flat.numel()), key=lambda i: -float(flat[i]))
    best = order[0]
    if float(flat[best]) < thr:
        return (f"No {KINDS[key]} (max {float(flat[best]):.3f}, {head_id(best // H, best % H)}; "
                f"a head counts from {thr:g}).")
    strong = [i for i in order if float(flat[i]) >= thr]
    named = ", ".join(f"{head_id(i // H, i % H)} ({float(flat[i]):.2f})" for i in strong[:most])
    more = f" and {len(strong) - most} more" if len(strong) > most else ""
    plural = "s" if len(strong) > 1 else ""
    return f"{len(strong)} {KINDS[key]}{plural}: {named}{more} (score ≥ {thr:g})."


def head_frame(scores: Any, sort_by: str | None = None, descending: bool | None = None) -> pd.DataFrame:
    """One row per head: columns "head" ("L0H1"), "layer", "head_index", then each available score
    under its SCORES key. Rows in (layer, head) order, or sorted by `sort_by` (a score key;
    descending by default except entropy, where low = focused is the interesting end). The index is
    0..n-1 in display order, which is what st.dataframe's row selection reports (pick_row)."""
    mats = score_tensors(scores)
    L, H = next(iter(mats.values())).shape
    layer = torch.arange(L).repeat_interleave(H)  # (L*H,) row order: layer-major
    head = torch.arange(H).repeat(L)  # (L*H,)
    frame = pd.DataFrame({"head": [head_id(l, h) for l, h in zip(layer.tolist(), head.tolist())],
                          "layer": layer.numpy(), "head_index": head.numpy(),
                          **{k: v.reshape(L * H).numpy() for k, v in mats.items()}})  # (L, H) -> (L*H,)
    if sort_by is not None:
        frame = sort_rows(frame, sort_by, descending)
    return frame


def sort_rows(frame: pd.DataFrame, by: str, descending: bool | None = None) -> pd.DataFrame:
    """`frame` sorted by score column `by` (stable; ties keep (layer, head) order), reindexed 0..n-1.
    descending defaults to True, except for entropy (the most focused heads first)."""
    if by not in frame.columns or by not in SCORES:
        raise ValueError(f"cannot sort the head table by {by!r}; choose one of "
                         f"{[k for k in SCORES if k in frame.columns]}")
    if descending is None:
        descending = by != "entropy"
    return frame.sort_values(by, ascending=not descending, kind="stable").reset_index(drop=True)


def top_heads(frame: pd.DataFrame, by: str, n: int = 3) -> list[str]:
    """Ids of the n heads with the highest `by` score (lowest, for entropy)."""
    return list(sort_rows(frame, by)["head"].head(n))


def pick_row(event: Any, frame: pd.DataFrame) -> tuple[int, int] | None:
    """(layer, head) of the row selected in st.dataframe(frame, on_select=..., selection_mode=
    "single-row"). `event` is what st.dataframe returns or st.session_state[key] holds:
    {"selection": {"rows": [i], ...}}, its .selection, or the row list. Streamlit reports rows by
    their position in `frame` as passed, even after the user re-sorts the table by a header click.
    None when no row (or an out-of-range row, e.g. a stale event from a smaller model) is selected."""
    try:
        i = int(last_selected(event, "rows"))
    except (TypeError, ValueError):
        return None
    if not 0 <= i < len(frame):
        return None
    row = frame.iloc[i]
    return int(row["layer"]), int(row["head_index"])
