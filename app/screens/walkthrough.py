"""Walkthrough page: the whole GPT as one picture, drawn from the current model's config and filled
with the real numbers of the prompt in hand; then the same model used for training (every position
predicts its next token) and for generation (one press = one turn of the sampling loop).

Widgets and layout only: figures and tables come from app.views.walkthrough(_stages); the
Inspection records only the names of the stage shown; the Generation tab is app.walkthrough_loop.
Tabs are lazy (on_change="rerun"): only the open tab's work runs. The export bar (app.export_generation)
holds the selected stage's values and the training view's numbers.
"""
from __future__ import annotations

import time

import streamlit as st

from app import components, resources, state, walkthrough_loop
from app.inspection import Inspection, clamp
from app.views import walkthrough as vw
from app.views import walkthrough_stages as vs

STAGE_KEY, TAB_KEY, DIAGRAM_KEY = "wt_stage", "wt_tab", "wt_diagram"
ss = st.session_state


def on_diagram_click(key: str, n_layer: int) -> None:
    if (got := vw.pick(ss.get(key), ss[STAGE_KEY], n_layer)) is not None:
        ss[STAGE_KEY] = got[0]
        if got[1] is not None:
            ss[state.LAYER] = got[1]


def pipeline(insp: Inspection, stage: str) -> None:
    t0, cfg, T = time.perf_counter(), insp.config, insp.T
    key = f"{DIAGRAM_KEY}_{stage}_{insp.layer}"  # a fresh key per selection: a click on any box is new
    st.plotly_chart(vw.diagram_figure(cfg, T, stage, insp.layer), key=key, selection_mode="points",
                    on_select=lambda: on_diagram_click(key, cfg.n_layer), config=components.png_only("pipeline"))
    c1, c2, c3 = st.columns([2, 1, 1])
    c1.selectbox("Stage", vs.STAGE_KEYS, format_func=lambda k: vs.STAGES[k].label, key=STAGE_KEY,
                 help="Or click a box in the diagram.")
    c2.selectbox("Layer", range(cfg.n_layer), key=state.LAYER, disabled=not vs.STAGES[stage].in_block)
    c3.selectbox("Head", range(cfg.n_head), key=state.HEAD, disabled=stage != "attn")
    st.subheader(vw.stage_heading(stage, insp.layer))
    st.markdown(vs.sentence(stage, cfg, T))
    detail = vw.stage_detail(insp, stage)
    st.caption(vw.shape_caption(cfg, T, stage))
    if stage == "ids":
        st.markdown(vw.ids_html(insp.strs, insp.ids), unsafe_allow_html=True)
    for i, fig in enumerate(detail.figures):  # none for the ids
        st.plotly_chart(fig, key=f"wt_values_{i}")
    components.token_legend()
    if detail.panels:
        st.subheader(f"Inside attention: head {insp.head} of block {insp.layer}")
        for i, panel in enumerate(detail.panels):
            st.markdown(f"#### {panel.heading}")
            st.caption(panel.note)
            for j, f in enumerate(panel.figures):
                st.plotly_chart(f, key=f"wt_panel_{i}_{j}")
    st.caption(vw.ready_note((time.perf_counter() - t0) * 1000, len(insp.names) if insp.rec is not None else None))


def training(insp: Inspection) -> None:
    if insp.T < 2:
        st.info("Training needs at least two tokens: an input and the next token it should predict.")
        return
    t0 = time.perf_counter()
    tv = resources.training_example(insp.loaded, insp.ids, insp.edit)
    st.markdown(vw.training_intro(insp.T))
    components.metric_row(vw.training_metrics(tv))
    st.dataframe(vw.training_table(tv, insp.token_str), hide_index=True, height=420, column_config={
        "p(y)": st.column_config.ProgressColumn("p(y)", min_value=0.0, max_value=1.0, format="%.3f"),
        "loss −ln p(y)": st.column_config.NumberColumn(format="%.3f")})
    st.plotly_chart(vw.loss_figure(tv, vw.target_labels(tv, insp.token_str)), key="wt_loss")
    st.caption(f"ready in {(time.perf_counter() - t0) * 1000:.0f} ms (one forward(x, y), the table and the chart)")


st.title("Walkthrough")
st.caption(vw.PIPELINE)
if (stage := ss.get(STAGE_KEY)) not in vs.STAGES:
    stage = ss[STAGE_KEY] = "tok_emb"
n_layer = resources.require_model().config.n_layer
names, check, record = vw.recording(stage, clamp(ss.get(state.LAYER), n_layer), n_layer, ss.get(TAB_KEY, "Pipeline"))
insp = components.inspection(names, check=check, record=record)  # only the open tab's work runs
tabs = st.tabs(["Pipeline", "Training", "Generation"], key=TAB_KEY, on_change="rerun")
for tab, section in zip(tabs, (lambda: pipeline(insp, stage), lambda: training(insp), lambda: walkthrough_loop.show(insp))):
    if tab.open:
        with tab:
            section()
components.export_bar("walkthrough", insp, loaded=insp.loaded, stage=stage)
