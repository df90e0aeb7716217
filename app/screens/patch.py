"""Patch page: which activations carry the difference between a clean and a corrupted prompt.

Widgets and layout only: the sweep is cached in app.resources.patch_sweep (gpt.patching), the
figures and captions come from app.views.patch. Clicking a cell shows the patched next-token
distribution; a head cell opens on the Attention page.
"""
from __future__ import annotations

import streamlit as st

from app import catalog, components, resources, state
from app.views import patch as vp
from app.views.tokens import token_strs, unique_labels
from gpt import patching
from gpt.checkpoint import run_of
from gpt.tokenizer import invisible

CLEAN, CORRUPT, SITE, SRC, RAN = "pt_clean", "pt_corrupt", "pt_site", "pt_source", "pt_ran"
METRIC, DIRECTION, TYPED = "pt_metric", "pt_direction", "_pt_typed"
ss = st.session_state


def swap(tok, pos_key: str, new_key: str) -> None:
    """Callback: the corrupted prompt = the clean one with one token replaced."""
    ids, new = tok.encode(ss.get(CLEAN, ""), errors="drop"), tok.encode(invisible(ss.get(new_key, "")), errors="drop")
    if ids and len(new) == 1 and 0 <= ss[pos_key] < len(ids):
        ids[ss[pos_key]] = new[0]
        ss[CORRUPT] = tok.decode(ids)


def ids_of(loaded, key: str, what: str) -> tuple[int, ...] | None:
    p = resources.prompt_ids(loaded, ss.get(key, ""))
    if p.message:
        st.error(f"The {what} prompt: {p.message}") if not p.ok else st.info(p.message)
    return p.ids if p.ok else None


def answer(loaded, ids: tuple[int, ...], label: str, where, used: bool) -> tuple[int | None, str]:
    """(token, text) of the answer box: the model's top next token on `ids`, following the prompt
    (a new prompt resets it) unless the user typed their own answer for this same prompt."""
    top = loaded.tokenizer.token_str(int(resources.trace(loaded, ids, ("logits",))["logits"][0, -1].argmax()))
    key, seen, now = f"pt_ans_{label}", f"_pt_seen_{label}", (loaded.ref, ids)
    typed = ss.setdefault(TYPED, {})  # label -> (the prompt it was typed for, the text)
    if ss.get(seen) != now or key not in ss:
        ss[key], ss[seen] = (m[1] if (m := typed.get(label)) and m[0] == now else top), now
    text = where.text_input(label, key=key, disabled=not used, help=vp.answer_help(top))
    vp.remember_typed(typed, label, now, text, top)
    got = loaded.tokenizer.encode(invisible(text), errors="drop")
    if len(got) != 1:
        if used:
            st.error(f"{label} must be exactly one token; {text!r} is {len(got)}. Type one token.")
        return None, text
    return got[0], text


def source_model(loaded, where):
    run = run_of(loaded.ref)
    refs = [None] + [str(p) for _, p in (catalog.snapshots(run) if run is not None else [])]
    ref = where.selectbox("Source of the patched-in activations", refs, key=SRC,
                          format_func=lambda r: "the same model" if r is None else catalog.describe(r),
                          help="Another snapshot of this run: when did this mechanism become causal?")
    return None if ref is None else components.load_or_stop(ref, "The source checkpoint")


def result(loaded, source, clean, corrupt, site: str, answers, texts, metric: str, direction: str) -> None:
    try:
        res = resources.patch_sweep(loaded, source, clean, corrupt, site, answers, direction, metric)
        norm = res.normalized()
    except ValueError as e:
        st.error(str(e))
        return
    labels = unique_labels(token_strs(loaded.tokenizer.token_str, clean))  # "3:·b"
    cols = labels if res.dims[-1] == "position" else [f"H{h}" for h in range(loaded.config.n_head)]
    st.caption(vp.caption(metric, direction, texts, res.clean, res.corrupt,
                          catalog.describe(source.ref) if source is not None else None))
    fig = vp.heatmap_figure(norm, res.values, res.dims, cols, vp.metric_label(metric, texts))
    ev = st.plotly_chart(fig, key="pt_map", width="stretch", on_select="rerun", selection_mode="points")
    components.export_bar("patch", loaded=loaded, result=res, clean=clean, corrupt=corrupt, site=site, metric=metric,
                          answers=answers, direction=direction, source=source)
    if (cell := vp.cell_pick(ev, tuple(res.values.shape))) is None:
        return
    patched = resources.patch_cell_logits(loaded, source, clean, corrupt, site, cell, direction)
    dec = loaded.tokenizer.token_str
    c1, c2, c3 = st.columns(3)
    c1.plotly_chart(vp.top_next(res.clean_logits, dec, title="clean"), key="pt_d_clean")
    c2.plotly_chart(vp.top_next(patched, dec, title=f"patched {cell}"), key="pt_d_patched")
    c3.plotly_chart(vp.top_next(res.corrupt_logits, dec, title="corrupted"), key="pt_d_corrupt")
    if "head" in res.dims and st.button(f"Open layer {cell[0]}, head {cell[1]} on the Attention page"):
        ss[state.LAYER], ss[state.HEAD] = cell[0], cell[1]
        st.switch_page("screens/attention.py")


st.title("Activation patching")
loaded = resources.require_model()
tok = loaded.tokenizer
ss.setdefault(CLEAN, ss.get(state.PROMPT) or "To be, or not to be")
ss.setdefault(CORRUPT, ss[CLEAN])
st.text_area("Clean prompt", key=CLEAN, height=68)
with st.expander("Swap one token of the clean prompt to make the corrupted one"):
    n = len(tok.encode(ss[CLEAN], errors="drop"))
    a, b = st.columns(2)
    a.number_input("Position", 0, max(n - 1, 0), max(n - 1, 0), key="pt_swap_pos")
    b.text_input("Replacement token", key="pt_swap_new", help="Type · for a space, ⏎ for a newline.")
    st.button("Swap", on_click=swap, args=(tok, "pt_swap_pos", "pt_swap_new"))
st.text_area("Corrupted prompt", key=CORRUPT, height=68)
clean, corrupt = ids_of(loaded, CLEAN, "clean"), ids_of(loaded, CORRUPT, "corrupted")
if clean is None or corrupt is None:
    st.stop()
if clean == corrupt:
    st.info(vp.SAME_PROMPTS)
a, b, c = st.columns(3)
metric = a.selectbox("Metric", list(patching.METRICS), key=METRIC, format_func=patching.METRICS.get)
direction = b.selectbox("Direction", list(vp.DIRECTIONS), key=DIRECTION, format_func=vp.DIRECTIONS.get)
site = c.selectbox("Site", list(patching.SITES), key=SITE, format_func=lambda s: f"{s}: {vp.SITE_LABELS[s]}")
a, b, c = st.columns(3)
used = vp.ANSWERS_READ[metric]  # a box the metric does not read is greyed out and never blocks the sweep
(ta, xa), (tb, xb) = answer(loaded, clean, "Clean answer", a, used[0]), answer(loaded, corrupt, "Corrupted answer",
                                                                               b, used[1])
source = source_model(loaded, c)
if st.button("Run the sweep", type="primary"):
    ss[RAN] = True
if ss.get(RAN) and all(t is not None for t, u in zip((ta, tb), used) if u):
    result(loaded, source, clean, corrupt, site, (ta or 0, tb or 0), (xa, xb), metric, direction)  # unread: 0
