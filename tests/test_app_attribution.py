"""The Attribution page under AppTest with the tiny trained run (2 layers, 2 heads): it renders both
views with token strings on their axes, its widgets (position, token, versus token, head, threshold,
node) change what is drawn, an active edit is used and said, bad input gets a message; and the
pure view functions (click decoding, figure validity) without Streamlit."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.views import attribution as va
from app.views import flow_graph as vg
from gpt import flow

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PROMPT = "To be, or not to be"


def open_page(prompt: str = PROMPT, **state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    at.switch_page("screens/attribution.py")
    at.session_state["prompt"] = prompt
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """The plotly figures on the page by title (the JSON Streamlit sends)."""
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {f["layout"].get("title", {}).get("text", ""): f for f in figs}


def chart(at: AppTest, start: str) -> dict:
    hits = [f for t, f in charts(at).items() if t.startswith(start)]
    assert len(hits) == 1, (start, list(charts(at)))
    return hits[0]


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "info", "warning", "error", "caption", "subheader")
                     for e in getattr(at, kind))


def test_page_draws_dla_head_maps_and_graph_with_token_labels(app_root: Path) -> None:
    at = open_page()
    last = f"{len(PROMPT) - 1}:e"
    bars = chart(at, "Largest terms of logit")
    assert last in bars["layout"]["title"]["text"]
    assert bars["data"][0]["y"][-1] == "sum of all 11 terms"  # 2 + 2 * (2 heads + MLP): the tiny preset has no biases
    summary = next(m.value for m in at.markdown if "the sum of the" in m.value)
    logit, total = re.search(r"= \*\*(-?[\d.]+)\*\* = the sum of the 11 terms \((-?[\d.]+)\)", summary).groups()
    assert logit == total and abs(bars["data"][0]["x"][-1] - float(logit)) < 1e-3
    heads = chart(at, "Head terms")
    assert set(heads["data"][0]["x"]) == {"H0", "H1"} and set(heads["data"][0]["y"]) == {"L0", "L1"}
    pattern, cmap = chart(at, "L0H0 attention pattern"), chart(at, "L0H0 contribution map")
    assert pattern["data"][0]["x"][2] == "2:·" and cmap["data"][0]["y"] == pattern["data"][0]["y"]
    graph = chart(at, "Routes to the prediction at")
    assert last in graph["layout"]["xaxis"]["ticktext"] and "L1 out" in graph["layout"]["yaxis"]["ticktext"]
    assert chart(at, "L1 output at 18:e: promotes")  # the output node's lens, shown by default


def test_choosing_a_head_opens_its_two_maps(app_root: Path) -> None:
    at = open_page()
    at.selectbox(key="layer").set_value(1)
    at.selectbox(key="head").set_value(1).run()
    assert not at.exception
    assert chart(at, "L1H1 attention pattern") and chart(at, "L1H1 contribution map")
    outline = chart(at, "Head terms")["data"][0]["marker"]["line"]["width"]
    assert outline == [0, 0, 0, 3]  # the open head is outlined in the grid


def test_threshold_changes_the_graph(app_root: Path) -> None:
    at = open_page()
    counts = {}
    for t in (0.0, 0.1):
        at.slider(key="attr_threshold").set_value(t).run()
        assert not at.exception
        counts[t] = len(chart(at, "Routes to")["data"][-1]["x"])  # the node markers
        assert f"above {t:.3f}" in texts(at)
    assert counts[0.0] > counts[0.1] >= 1


def picker(at: AppTest, prefix: str):
    hits = [b for b in at.selectbox if b.key and b.key.startswith(prefix)]
    assert len(hits) == 1, [b.key for b in at.selectbox]
    return hits[0]


def test_position_token_and_versus_token_change_the_attribution(app_root: Path) -> None:
    at = open_page()
    at.selectbox(key="attr_pos").set_value(4).run()
    assert "at 4:e" in chart(at, "Largest terms")["layout"]["title"]["text"]
    token = picker(at, "attr_tok_4_")
    first, second = token.options[0], token.options[1]  # labels: "'x'  41.0%", most likely first
    assert first.endswith("%") and float(first.split()[-1][:-1]) >= float(second.split()[-1][:-1])
    a, b = (o.split()[0] for o in (first, second))  # the default token is the top guess
    assert f"logit {a} at 4:e" in chart(at, "Largest terms")["layout"]["title"]["text"]
    vs = picker(at, "attr_vs_4_")
    assert vs.value is None and vs.options[0] == "nothing: the logit itself"
    vs.select_index(2).run()  # versus the second guess
    assert f"logit {a} − logit {b} at 4:e" in chart(at, "Largest terms")["layout"]["title"]["text"]
    at.text_input(key="attr_typed").set_value("q").run()
    assert f"logit 'q' − logit {b} at 4:e" in chart(at, "Largest terms")["layout"]["title"]["text"]
    at.text_input(key="attr_typed").set_value("qq").run()
    assert "must be exactly one token" in texts(at) and not at.get("plotly_chart")


def test_choosing_a_node_shows_its_logit_lens(app_root: Path) -> None:
    at = open_page()
    node = flow.Node("embed", -1, len(PROMPT) - 1)
    at.slider(key="attr_threshold").set_value(0.0).run()
    assert f"embedding at {len(PROMPT) - 1}:e" in at.selectbox(key="attr_node").options  # display strings
    at.selectbox(key="attr_node").set_value(node).run()
    assert not at.exception
    assert chart(at, f"embedding at {len(PROMPT) - 1}:e: promotes")
    assert chart(at, f"embedding at {len(PROMPT) - 1}:e: suppresses")["data"][0]["y"][0].startswith("1. '")


def test_an_active_edit_is_used_and_said(app_root: Path) -> None:
    at = open_page()
    at.checkbox(key="iv_h_0_1").check().run()  # the sidebar's Interventions panel: ablate L0H1
    assert not at.exception, [e.value for e in at.exception]
    assert any("Edited model" in w.value for w in at.warning)  # the banner
    assert "Computed on the edited model: 1 head ablated (zero)" in texts(at)
    cells = {tuple(c[:2]): c[2] for c in chart(at, "Head terms")["data"][0]["customdata"]}
    assert cells[(0, 1)] == 0.0 and cells[(0, 0)] != 0.0
    at.selectbox(key="head").set_value(1).run()
    z = chart(at, "L0H1 contribution map")["data"][0]["z"]  # plotly sends numpy arrays as base64
    shares = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
    assert shares.size == len(PROMPT) ** 2 and not shares.any()  # it wrote nothing


def test_a_prompt_too_long_for_the_graph_gets_a_message(app_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(va, "FLOW_MAX_FLOATS", 1000)
    at = open_page()
    assert "shorten the prompt to at most" in texts(at)
    assert chart(at, "Largest terms") and not [t for t in charts(at) if t.startswith("Routes")]


# -- the views without Streamlit ------------------------------------------------------------------------
def test_head_click_decodes_to_its_cell() -> None:
    fig = va.squares_figure(torch.tensor([[0.1, -0.2], [0.3, 0.0]]), ["L0", "L1"], ["H0", "H1"], "t", "term",
                            "head", "layer")
    go.Figure(fig.to_dict())  # valid plotly
    point = {"customdata": fig.data[0].customdata[2]}
    assert va.grid_pick({"selection": {"points": [point]}}, 2, 2) == (1, 0)
    assert va.grid_pick({"selection": {"points": []}}, 2, 2) is None
    assert va.grid_pick({"selection": {"points": [{"customdata": [5, 0, 1.0]}]}}, 2, 2) is None


def test_graph_figure_draws_every_node_and_decodes_node_clicks() -> None:
    a, b = flow.Node("embed", -1, 0), flow.Node("mid", 0, 1)
    c, d = flow.Node("mlp", 0, 1), flow.Node("out", 0, 1)
    g = flow.Graph([a, b, c, d], [flow.Edge(a, b, 0.3, "attn", (0.1, 0.2)), flow.Edge(b, d, 0.6, "resid"),
                                  flow.Edge(b, c, 0.4, "mlp"), flow.Edge(c, d, 0.4, "mlp")], 1, 0.04)
    view = vg.graph_figure(g, ["0:a", "1:b"], 1, "routes")
    go.Figure(view.figure.to_dict())
    nodes = view.figure.data[-1]
    assert view.n_nodes == 4 and len(nodes.x) == 4 and nodes.y[3] == 3.0 and nodes.x[2] == 1 + vg.MLP_DX
    assert list(view.figure.layout.xaxis.ticktext) == ["0:a", "1:b"]
    assert vg.node_pick({"selection": {"points": [{"customdata": list(nodes.customdata[2])}]}}, 1, 2) == c
    assert vg.node_pick({"selection": {"points": [{"customdata": ["mid", 4, 0]}]}}, 1, 2) is None
    assert vg.node_pick({"selection": {"points": [{"x": 1.0}]}}, 1, 2) is None  # an edge's hover marker
    assert vg.width(0.0) == 1.0 and vg.width(1.0) == vg.MAX_WIDTH
