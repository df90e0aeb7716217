"""Attribution page: which heads and MLPs wrote the prediction at one position.

Two views, both of the session's edited model when an edit is active: direct logit attribution
(the largest terms, a clickable layer x head grid, and the clicked head's attention pattern beside
its contribution map) and the information-flow graph of Ferrando & Voita 2024 (a threshold slider;
clicking a node shows its logit lens). Widgets and layout only: figures come from
app.views.attribution and app.views.flow_graph, the cached contributions from app.resources.
"""
from __future__ import annotations

import functools
import zlib

import streamlit as st

from app import components, resources, state
from app.inspection import Inspection
from app.views import attribution as va
from app.views import flow_graph as vg
from gpt import flow

POS, TYPED, GRID, GRAPH, NODE, THRESHOLD = "attr_pos", "attr_typed", "attr_heads", "attr_graph", "attr_node", "attr_threshold"
ss = st.session_state


def choose(insp: Inspection) -> tuple[int, int | None, int | None]:
    """Position, token and versus-token widgets: (pos, token or None when the typed one is bad, other)."""
    if ss.get("_attr_ids") != hash(insp.ids) or not 0 <= int(ss.get(POS, -1)) < insp.T:
        ss[POS], ss["_attr_ids"] = insp.T - 1, hash(insp.ids)  # a new prompt: its last position first
    c1, c2, c3, c4 = st.columns([3, 3, 3, 2])
    pos = c1.selectbox("Position (the prediction made there)", range(insp.T), format_func=lambda i: insp.labels[i], key=POS)
    ids, names = va.choices(insp, pos)
    tag = f"{pos}_{zlib.crc32(repr(ids).encode()):08x}"  # fresh pickers when the top tokens change
    tok = c2.selectbox("Token (the model's top guesses)", ids, format_func=names.get, key=f"attr_tok_{tag}")
    other = c3.selectbox("Versus (attribute the logit difference)", [None, *ids], key=f"attr_vs_{tag}",
                         format_func=lambda i: "nothing: the logit itself" if i is None else names[i])
    typed = c4.text_input("…or type a token", key=TYPED, help="Any one token of the vocabulary; replaces Token.")
    if typed:
        tok, why = va.typed_token(insp, typed)
        if why:
            st.error(why)
    return pos, tok, other


def pick_node(key: str, n_layer: int, T: int) -> None:
    """on_select of the graph: the clicked node becomes the one whose logit lens is shown."""
    node = vg.node_pick(ss.get(key), n_layer, T)
    if node is not None:
        ss[NODE] = node


def head_maps(insp: Inspection) -> None:
    st.subheader(f"Head L{insp.layer}H{insp.head}: where it looks, and what it wrote")
    why = va.flow_too_long(insp)
    if why:
        st.info(why)
        return
    pattern, cmap = va.build_head(insp, resources.attribution_flow(insp), insp.layer, insp.head)
    st.caption(va.MAPS_CAPTION)
    a, b = st.columns(2)
    a.plotly_chart(pattern, key="attr_pattern", width="stretch")
    b.plotly_chart(cmap, key="attr_cmap", width="stretch")
    components.token_legend()


def dla_tab(insp: Inspection, pos: int, tok: int, other: int | None) -> None:
    L, H = insp.config.n_layer, insp.config.n_head
    view = va.build_dla(insp, pos, tok, other, selected=(insp.layer, insp.head))
    if view.note:
        st.info(view.note)
    st.markdown(view.summary)
    left, right = st.columns([3, 2])
    left.plotly_chart(view.bars, key="attr_bars", width="stretch")
    key = f"{GRID}_{L}x{H}_{insp.layer}_{insp.head}"  # a fresh selection whenever the open head changes
    right.plotly_chart(view.heads, key=key, width="content", selection_mode="points", config=components.png_only("attribution-heads"),
                       on_select=functools.partial(components.open_head, va.grid_pick, key, L, H))
    right.caption(f"Top head: **L{view.top_head[0]}H{view.top_head[1]}** (the largest |term|; red raises the "
                  "logit, blue lowers it). Click a head, or choose it here:")
    c1, c2 = right.columns(2)
    c1.selectbox("Layer", range(L), key=state.LAYER)
    c2.selectbox("Head", range(H), key=state.HEAD)
    head_maps(insp)


def flow_tab(insp: Inspection, pos: int) -> None:
    why = va.flow_too_long(insp)
    if why:
        st.info(why)
        return
    contrib = resources.attribution_flow(insp)
    threshold = st.slider("Threshold: draw the edges whose share is above", 0.0, 0.1, flow.DEFAULT_THRESHOLD,
                          0.005, format="%.3f", key=THRESHOLD)
    g = contrib.graph(threshold, pos)
    if ss.get(NODE) not in g.nodes:
        ss[NODE] = g.nodes[-1]  # the output node
    if insp.edit:
        st.info(va.flow_note(insp, contrib))
    view = vg.graph_figure(g, insp.labels, insp.config.n_layer, f"Routes to the prediction at {insp.labels[g.pos]}",
                           selected=ss[NODE])
    st.caption(vg.caption(view, threshold))
    st.plotly_chart(view.figure, key=GRAPH, width="stretch", selection_mode="points",
                    on_select=functools.partial(pick_node, GRAPH, insp.config.n_layer, insp.T))
    node = st.selectbox("Node", g.nodes, format_func=lambda n: va.node_name(n, insp.labels), key=NODE)
    promoted, suppressed, what = va.build_node(insp, node)
    st.caption(what)
    a, b = st.columns(2)
    a.plotly_chart(promoted, key="attr_promoted", width="stretch")
    b.plotly_chart(suppressed, key="attr_suppressed", width="stretch")


st.title("Attribution")
insp = components.inspection(va.NAMES)
pos, tok, other = choose(insp)
if tok is None:
    st.stop()
dla, graph = st.tabs(["Direct logit attribution", "Information flow"], key="attr_tab", on_change="rerun")  # keyed: stays open
with dla:
    dla_tab(insp, pos, tok, other)
with graph:
    flow_tab(insp, pos)
components.export_bar("attribution", insp, pos=pos, token=tok, other=other)
