"""The Attention page's sections that hold widgets: the zoom window's controls, the clickable token
strip, heads compared (overlaid rows and columns, the head view), the all-heads grid and the head
summary. Widgets and layout only: figures come from app.views.attention*, data from app.resources.

Every chart that selects something does it in an on_select callback (before the page reruns), so
the page's own selectboxes (layer, head, query) already show the choice: one state, many controls.
"""
from __future__ import annotations

import functools
from typing import Any

import streamlit as st
import torch

from app import components, resources, state
from app.inspection import Inspection
from app.views import attention as va
from app.views import attention_heads as vah
from app.views import attention_long as val
from app.views import heads as vh
from gpt.attention_trace import THUMB_SIDE

QUERY_KEY, ZQ_KEY, ZK_KEY, HEADS_KEY = "attn_query", "attn_zoom_q", "attn_zoom_k", "attn_heads"
GRID_KEY, INDUCTION_KEY = "attn_grid", "_attn_induction"
ss = st.session_state


def chart(fig: Any, key: str, where: Any = st, pick_query: int | None = None) -> None:
    """st.plotly_chart with the modebar on hover (its PNG download kept); with pick_query=T, a click on
    a token (customdata = position) makes it the query."""
    if pick_query is None:
        where.plotly_chart(fig, width="stretch", key=key, config=vah.CONFIG)
        return

    def picked() -> None:
        p = vah.token_pick(ss.get(key), pick_query)
        if p is not None:
            ss[QUERY_KEY] = p
    where.plotly_chart(fig, width="stretch", key=key, config=vah.CONFIG, on_select=picked,
                       selection_mode="points")


def zoom(T: int, query: int) -> tuple[int, int, int, int]:
    """The zoom window (q0, q1, k0, k1): the whole prompt up to val.ZOOM tokens; past that, two number
    boxes (keyboard: arrows step 16) that recentre on the query whenever the query changes."""
    if T <= val.ZOOM:
        return val.zoom_window(T, query)
    if ss.get("_attn_zoom_for") != (T, query):  # a new query: show the keys it can see
        q0, _, k0, _ = val.zoom_window(T, query)
        ss[ZQ_KEY], ss[ZK_KEY], ss["_attn_zoom_for"] = q0, k0, (T, query)
    a, b = st.columns(2)
    q0 = a.number_input("Zoom: first query", 0, T - val.ZOOM, step=16, key=ZQ_KEY)
    k0 = b.number_input("Zoom: first key", 0, T - val.ZOOM, step=16, key=ZK_KEY)
    return val.zoom_window(T, query, q0, k0)


def strip(insp: Inspection, row: torch.Tensor, query: int, window: tuple[int, int, int, int]) -> None:
    """The window's key tokens shaded by the query's attention; a click makes a token the query."""
    q0, q1, k0, k1 = window
    w = torch.where(torch.arange(k0, k1) <= query, row[k0:k1], torch.zeros(k1 - k0))  # (k1-k0,)
    st.caption(f"Tokens {k0}…{k1 - 1}, shaded by how much {insp.labels[query]} attends to each (outlined: the "
               "query). Click a token to make it the query; hover for its weight.")
    chart(vah.token_strip(insp.strs[k0:k1], w, query, start=k0), "attn_strip", pick_query=insp.T)


def compare_heads(insp: Inspection, pattern: torch.Tensor, query: int) -> None:
    """Several heads of the open layer overlaid, each in its colour: where the query attends, what
    attends to it, and (short prompts) BertViz's head view."""
    H = insp.config.n_head
    st.subheader("Heads compared")
    if not ss.get(HEADS_KEY) or any(h >= H for h in ss[HEADS_KEY]):
        ss[HEADS_KEY] = sorted({insp.head, (insp.head + 1) % H})
    heads = st.multiselect(f"Heads of layer {insp.layer} (each in its own colour)", range(H), key=HEADS_KEY,
                           format_func=lambda h: f"H{h}")
    if not heads:
        st.info("Choose one or more heads to compare.")
        return
    q = insp.labels[query]
    left, right = st.columns(2)
    chart(vah.overlay_figure(vah.head_rows(pattern, heads, query), insp.labels, f"where {q} attends", "key",
                             mark=query), "attn_rows", left)
    chart(vah.overlay_figure(vah.head_columns(pattern, heads, query), insp.labels, f"what attends to {q}",
                          "query", mark=query), "attn_cols", right)
    if insp.T <= vah.HEAD_VIEW_MAX_T:
        st.caption("Head view (as BertViz): queries on the left, keys on the right, line opacity = weight, "
                   "one colour per head. Click a token to make it the query; only its lines are drawn.")
        chart(vah.head_view(pattern, heads, insp.strs, query), "attn_head_view", pick_query=insp.T)
    else:
        st.caption(f"The head view draws lines for prompts of up to {vah.HEAD_VIEW_MAX_T} tokens.")


def grid(insp: Inspection, summary: dict[str, torch.Tensor]) -> None:
    """Every head's pattern as a thumbnail (block-max pooled, each scaled to its own top), one PNG
    under a clickable overlay: a click opens that head."""
    L, H = insp.config.n_layer, insp.config.n_head
    st.subheader("All heads")
    png, px = resources.attention_grid(insp)
    side = min(insp.T, THUMB_SIDE)
    st.caption(f"Each block is one head's whole pattern, block-max pooled to {side}×{side} cells (each the "
               "largest weight in its block, so sharp stripes survive), on a log colour scale up to its own largest "
               "weight outside row 0. Click a block to open that head; hover for its scores.")
    key = f"{GRID_KEY}_{L}x{H}_{insp.layer}_{insp.head}"  # a fresh selection whenever the open head changes
    spec = val.grid_image_spec(png, L, H, px, selected=(insp.layer, insp.head), summary=summary)
    st.vega_lite_chart(spec, on_select=functools.partial(components.open_head, va.grid_pick, key, L, H),
                       selection_mode=val.GRID_PARAM, key=key, theme=None, width="content")
    components.png_button(spec, f"attention-grid-{L}x{H}", key="_at_grid_png")


def summary(insp: Inspection, scores: dict[str, torch.Tensor]) -> None:
    """Three (L, H) maps of this prompt's head scores, induction on request, the sortable head table."""
    st.subheader("Head summary")
    if not scores:
        st.info(va.NEEDS_TWO)
    else:
        st.caption("Over query positions 1…T-1 of this prompt: entropy of each head's attention (bits), mean "
                   "weight on the previous token, and on the first token (an attention sink).")
        fig = va.head_summary_figure(scores["entropy"], scores["prev_token"], scores["first_token"],
                                     selected=(insp.layer, insp.head), max_entropy=va.uniform_entropy(insp.T))
        chart(fig, "attn_summary")
        sel = {k: float(v[insp.layer, insp.head]) for k, v in scores.items()}
        st.caption(f"layer {insp.layer}, head {insp.head}: entropy {sel['entropy']:.2f} bits · previous-token "
                   f"{sel['prev_token']:.2f} · first-token {sel['first_token']:.2f} · "
                   + vh.verdict(scores, "prev_token"))
    stamp = (insp.loaded.ref, insp.loaded.stamp)
    with st.expander("Induction scores (runs the model on a repeated random sequence)"):
        if st.button("Measure induction", key="attn_induction_go"):
            ss[INDUCTION_KEY] = stamp
        induction = resources.model_scores(insp.loaded).induction if ss.get(INDUCTION_KEY) == stamp else None
        if induction is not None:
            st.markdown(vh.verdict({"induction": induction}, "induction"))
            chart(va.induction_figure(induction, (insp.layer, insp.head)), "attn_induction")
    table = {**scores, **({"induction": induction} if induction is not None else {})}
    if table:
        st.subheader("Head table")
        st.caption("Every head of this prompt in one table: click a column header to sort, a row to open that head.")
        components.head_table(table, key="attn_head_table", selected=(insp.layer, insp.head))


def layer_head_query(insp: Inspection) -> int:
    """The layer, head and query selectboxes (keyboard: focus, arrows, Enter); returns the query."""
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.selectbox("Layer", range(insp.config.n_layer), key=state.LAYER)
    c2.selectbox("Head", range(insp.config.n_head), key=state.HEAD)
    return c3.selectbox("Query token", range(insp.T), format_func=lambda i: insp.labels[i], key=QUERY_KEY)
