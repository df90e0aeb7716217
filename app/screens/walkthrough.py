"""Walkthrough page: the whole GPT as one picture, drawn from the current model's config and filled
with the real numbers of the prompt in hand; then the same model used for training (every position
predicts its next token) and for generation (one press = one turn of the sampling loop).

Widgets and layout only: figures and tables come from app.views.walkthrough(_stages); the trace
records only the names of the stage shown (resources.trace); generation goes through
gpt.generate's Generator and sampling_distribution, shared with the Generate page.
Tabs are lazy (on_change="rerun"): only the open tab's work runs.
"""
from __future__ import annotations

import time

import streamlit as st

from app import components, resources, state
from app.views import walkthrough as vw
from app.views import walkthrough_stages as vs
from app.views.generate import GenState, Settings, record_step, sync_generator, undo_step
from app.views.tokens import token_strs, unique_labels
from gpt.tokenizer import UnknownCharsError

STAGE_KEY, TAB_KEY, DIAGRAM_KEY = "wt_stage", "wt_tab", "wt_diagram"
GEN_KEY, GENERATOR_KEY = "_wt_gen", "_wt_generator"
STEP_KEY = "_wt_step"  # (ref, prompt, last Step with its logits, Settings it was drawn with): GenState keeps neither
TABS = ["Pipeline", "Training", "Generation"]
ss = st.session_state

st.title("Walkthrough")
st.caption("ids → token + position embedding → [LayerNorm → attention → + → LayerNorm → MLP → +] × n_layer "
           "→ LayerNorm → lm_head → logits, for the model and prompt in hand.")
loaded = resources.require_model()
cfg = loaded.config
L, H = cfg.n_layer, cfg.n_head
for key, n in ((state.LAYER, L), (state.HEAD, H)):  # another model may have fewer layers or heads
    if not 0 <= int(ss.get(key, 0)) < n:
        ss[key] = 0
if ss.get(STAGE_KEY) not in vs.STAGES:
    ss[STAGE_KEY] = "tok_emb"

p = components.prompt_box(loaded, vs.stage_names("attn", L - 1))
ids = list(p.ids)
T = len(ids)
strs = token_strs(loaded.tokenizer.token_str, ids)
labels = unique_labels(strs)
pipeline, training, generation = st.tabs(TABS, key=TAB_KEY, on_change="rerun")


def on_diagram_click(key: str) -> None:
    got = vw.pick(ss.get(key), ss[STAGE_KEY], L)
    if got is not None:
        ss[STAGE_KEY] = got[0]
        if got[1] is not None:
            ss[state.LAYER] = got[1]


if pipeline.open:
    with pipeline:
        stage, layer, head = ss[STAGE_KEY], int(ss[state.LAYER]), int(ss[state.HEAD])
        t0 = time.perf_counter()
        names = vs.stage_names(stage, layer)
        rec = resources.trace(loaded, tuple(ids), names) if names else None
        diagram = vw.diagram_figure(cfg, T, stage, layer)
        detail = vw.stage_detail(stage, layer, head, rec, loaded.model, labels, loaded.tokenizer.token_str)

        # the diagram gets a fresh key per selection, so a click on any box (even the last one) is new
        chart_key = f"{DIAGRAM_KEY}_{stage}_{layer}"
        st.plotly_chart(diagram, key=chart_key, on_select=lambda: on_diagram_click(chart_key),
                        selection_mode="points", config={"displayModeBar": False})
        c1, c2, c3 = st.columns([2, 1, 1])
        c1.selectbox("Stage", vs.STAGE_KEYS, format_func=lambda k: vs.STAGES[k].label, key=STAGE_KEY,
                     help="Or click a box in the diagram.")
        c2.selectbox("Layer", range(L), key=state.LAYER, disabled=not vs.STAGES[stage].in_block)
        c3.selectbox("Head", range(H), key=state.HEAD, disabled=stage != "attn")
        where = f" · block {layer}" if vs.STAGES[stage].in_block else ""
        st.subheader(f"{vs.STAGES[stage].label}{where}")
        st.markdown(vs.sentence(stage, cfg, T))
        if stage == "ids":
            st.caption(f"shape {vs.stage_shapes(cfg, T)['ids']} — each token with its id below it")
            st.markdown(vw.ids_html(strs, ids), unsafe_allow_html=True)
        else:
            st.caption(f"shape {vs.stage_shapes(cfg, T)[stage].replace('<br>', ' ')} — hover a cell for its value")
            for i, fig in enumerate(detail.figures):
                st.plotly_chart(fig, key=f"wt_values_{i}")
        if detail.panels:
            st.subheader(f"Inside attention: head {head} of block {layer}")
            for i, panel in enumerate(detail.panels):
                st.markdown(f"#### {panel.heading}")
                st.caption(panel.note)
                for j, f in enumerate(panel.figures):
                    st.plotly_chart(f, key=f"wt_panel_{i}_{j}")
        traced = f"a trace recording {len(names)} name(s)" if names else "no trace"
        st.caption(f"ready in {(time.perf_counter() - t0) * 1000:.0f} ms ({traced}, figures and sending them; "
                   "traces are cached per prompt and stage)")

if training.open:
    with training:
        if T < 2:
            st.info("Training needs at least two tokens: an input and the next token it should predict.")
        else:
            t0 = time.perf_counter()
            tv = vw.training_view(loaded.model, ids)
            table = vw.training_table(tv, loaded.tokenizer.token_str)
            fig = vw.loss_figure(tv, unique_labels(token_strs(loaded.tokenizer.token_str, tv.y), start=1))
            st.markdown(f"In training, the prompt is one example: the input **x** = ids[0 : {T - 1}] and the "
                        f"targets **y** = ids[1 : {T}], the same text shifted by one. One forward pass predicts "
                        f"the next token at all {T - 1} positions at once; the causal mask keeps each position "
                        "from seeing its own target.")
            c1, c2, c3 = st.columns(3)
            c1.metric("mean of the per-position losses", f"{tv.mean:.4f}")
            c2.metric("loss returned by forward(x, y)", f"{tv.loss:.4f}")
            c3.metric("difference", f"{abs(tv.mean - tv.loss):.1e}")
            st.dataframe(table, hide_index=True, height=420, column_config={
                "p(y)": st.column_config.ProgressColumn("p(y)", min_value=0.0, max_value=1.0, format="%.3f"),
                "loss −ln p(y)": st.column_config.NumberColumn(format="%.3f")})
            st.plotly_chart(fig, key="wt_loss")
            st.caption(f"ready in {(time.perf_counter() - t0) * 1000:.0f} ms (one forward(x, y), the table and "
                       "the chart)")

if generation.open:
    with generation:
        try:  # the whole prompt: past block_size the loop's crop is what shortens it
            drop = ss.get(components.DROP_KEY, False)
            full = loaded.tokenizer.encode(ss.get(state.PROMPT) or "", errors="drop" if drop else "strict")
        except (UnknownCharsError, ValueError) as e:
            st.error(str(e))
            st.stop()
        c1, c2, c3 = st.columns(3)
        temp = c1.slider("temperature", 0.0, 2.0, 1.0, 0.05, key="wt_temp", help="0 = always the most likely token")
        top_k = c2.number_input("top-k (0 = off)", 0, cfg.vocab_size, 0, key="wt_topk")
        seed = c3.number_input("seed", 0, 2**31 - 1, 1337, key="wt_seed")
        settings = Settings(temperature=float(temp), top_k=int(top_k), top_p=1.0, seed=int(seed))
        gs = GenState.from_dict(ss.get(GEN_KEY))
        gen, gs = sync_generator(ss.get(GENERATOR_KEY), gs, loaded.model, loaded.ref + loaded.stamp, full, settings)
        b1, b2, b3, _ = st.columns([1, 1, 1, 4])
        if b1.button("Next token ▶", key="wt_next", type="primary"):
            t0 = time.perf_counter()
            step = gen.step()
            record_step(gs, step, (time.perf_counter() - t0) * 1000)
            ss[STEP_KEY] = (gs.ref, gs.prompt, step, settings)
        if b2.button("Back", key="wt_back", disabled=gs.n_new == 0):
            gen.back()
            undo_step(gs)
            ss.pop(STEP_KEY, None)
        if b3.button("Reset", key="wt_reset", disabled=gs.n_new == 0):
            gen.reset()
            gs = GenState(ref=gs.ref, prompt=gs.prompt, settings=gs.settings, ids=list(gs.prompt))
            ss.pop(STEP_KEY, None)
        ss[GEN_KEY], ss[GENERATOR_KEY] = gs.to_dict(), gen
        last = ss.get(STEP_KEY)
        if last is not None and (last[:2] != (gs.ref, gs.prompt) or last[2].pos != len(gs.ids) - 1):
            last = None  # another model or prompt, or the step was undone
        st.markdown("The loop, once per press: **1** crop to the last block_size tokens · **2** forward, keep the "
                    "last position's logits · **3** softmax(logits / temperature) · **4** sample one token · "
                    "**5** append it.")
        if last is None:
            longer = "" if len(gs.ids) > cfg.block_size else \
                f" (give a prompt longer than {cfg.block_size} tokens to see the crop at the first press)"
            st.info(vw.crop_note(len(gs.ids), cfg.block_size) + longer + " Press **Next token** to run the loop once.")
            st.markdown(vw.context_html(gs.ids, loaded.tokenizer.token_str, max(0, len(gs.ids) - cfg.block_size),
                                        None), unsafe_allow_html=True)
        else:
            _, _, step, used = last  # show the step with the settings it was drawn with
            n, V, Tc = step.pos, cfg.vocab_size, step.pos - step.ctx_start  # n: length before this step
            tok = loaded.tokenizer.token_str(step.token)
            kw = used.generator_kwargs()
            how = "the most likely token (temperature 0 = greedy)" if used.temperature == 0 else \
                "one token at random from these probabilities (torch.multinomial)"
            st.markdown(f"**1 · crop** — {vw.crop_note(n, cfg.block_size)}")
            st.markdown(f"**2 · forward** — idx (1, {Tc}) → logits (1, {Tc}, {V}); keep only the last position's "
                        f"row, logits[0, -1]: shape ({V},).")
            st.markdown(f"**3 · softmax** — softmax(logits / {used.temperature:g}) → probabilities ({V},)"
                        + (f", only the top {kw['top_k']} kept" if kw["top_k"] else "") + ".")
            table = vw.step_table(step, used.temperature, kw["top_k"], kw["top_p"], loaded.tokenizer.token_str)
            st.plotly_chart(vw.step_figure(table), key="wt_step")
            st.markdown(f"**4 · sample** — {how}: `{tok}` (id {step.token}), drawn with probability "
                        f"{step.prob:.3f}.")
            st.markdown(f"**5 · append** — the sequence grows to {len(gs.ids)} tokens (the new one outlined; "
                        "struck-through tokens were cropped away for this step):")
            st.markdown(vw.context_html(gs.ids, loaded.tokenizer.token_str, step.ctx_start, step.pos),
                        unsafe_allow_html=True)
            with st.expander("the numbers"):
                st.dataframe(table, hide_index=True)
            st.caption(f"this step took {gs.ms[-1]:.0f} ms · {gs.n_new} token(s) generated")
