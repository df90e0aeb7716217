"""Patch page: which activations carry the difference between a clean and a corrupted prompt.

Widgets and layout only: the sweep is cached in app.resources.patch_sweep (gpt.patching), the
figures come from app.views.patch. Clicking a cell shows the patched next-token distribution.
"""
from __future__ import annotations

import streamlit as st

from app import catalog, components, resources, state
from app.views import patch as vp
from gpt import patching
from gpt.checkpoint import run_of

CLEAN, CORRUPT, SITE, SRC, RAN, PICK = "pt_clean", "pt_corrupt", "pt_site", "pt_source", "pt_ran", "pt_pick"
ss = st.session_state


def swap(tok, pos_key: str, new_key: str) -> None:
    """Callback: the corrupted prompt = the clean one with one token replaced."""
    ids, new = tok.encode(ss.get(CLEAN, ""), errors="drop"), tok.encode(ss.get(new_key, ""), errors="drop")
    if ids and len(new) == 1 and 0 <= ss[pos_key] < len(ids):
        ids[ss[pos_key]] = new[0]
        ss[CORRUPT] = tok.decode(ids)


def ids_of(loaded, key: str, what: str) -> tuple[int, ...] | None:
    p = resources.prompt_ids(loaded, ss.get(key, ""))
    if p.message:
        st.error(f"The {what} prompt: {p.message}") if not p.ok else st.info(p.message)
    return p.ids if p.ok else None


def answer(loaded, ids: tuple[int, ...], label: str, where) -> int | None:
    """The answer token typed in (one token), else the model's top next token on `ids`."""
    top = int(resources.trace(loaded, ids, ("logits",))["logits"][0, -1].argmax())
    text = where.text_input(label, value=loaded.tokenizer.decode([top]), key=f"pt_ans_{label}")
    got = loaded.tokenizer.encode(text, errors="drop")
    if len(got) != 1:
        st.error(f"{label} must be exactly one token; {text!r} is {len(got)}. Type one token.")
        return None
    return got[0]


def source_model(loaded):
    run = run_of(loaded.ref)
    refs = [None] + [str(p) for _, p in (catalog.snapshots(run) if run is not None else [])]
    ref = st.selectbox("Source of clean activations", refs, key=SRC,
                       format_func=lambda r: "the same model" if r is None else catalog.describe(r))
    return None if ref is None else components.load_or_stop(ref, "The source checkpoint")


def result(loaded, source, clean, corrupt, site: str, answers: tuple[int, int]) -> None:
    try:
        res = resources.patch_sweep(loaded, source, clean, corrupt, site, answers)
        norm = res.normalized()
    except ValueError as e:
        st.error(str(e))
        return
    labels = [f"{i}:{loaded.tokenizer.decode([t])!r}" for i, t in enumerate(clean)]
    cols = labels if res.dims[-1] == "position" else [f"H{h}" for h in range(loaded.config.n_head)]
    st.caption(f"{res.metric}: clean {res.clean:.3f}, corrupted {res.corrupt:.3f}. Colour 1 = patching this "
               "activation restores the clean answer; hover for the raw metric; click a cell.")
    ev = st.plotly_chart(vp.heatmap_figure(norm, res.values, res.dims, cols, res.metric), key="pt_map", width="stretch",
                         on_select="rerun", selection_mode="points")
    cell = vp.cell_pick(ev, tuple(res.values.shape))
    if cell is None:
        return
    patched = resources.patch_cell_logits(loaded, source, clean, corrupt, site, cell)
    dec = loaded.tokenizer.decode
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
st.text_input("Clean prompt", key=CLEAN)
with st.expander("Swap one token of the clean prompt to make the corrupted one"):
    n = len(tok.encode(ss[CLEAN], errors="drop"))
    a, b = st.columns(2)
    a.number_input("Position", 0, max(n - 1, 0), max(n - 1, 0), key="pt_swap_pos")
    b.text_input("Replacement token", key="pt_swap_new")
    st.button("Swap", on_click=swap, args=(tok, "pt_swap_pos", "pt_swap_new"))
st.text_input("Corrupted prompt", key=CORRUPT)
clean, corrupt = ids_of(loaded, CLEAN, "clean"), ids_of(loaded, CORRUPT, "corrupted")
if clean is None or corrupt is None:
    st.stop()
a, b, c = st.columns(3)
ta, tb = answer(loaded, clean, "Clean answer", a), answer(loaded, corrupt, "Corrupted answer", b)
site = c.selectbox("Site", list(patching.SITES), key=SITE, format_func=lambda s: f"{s}: {vp.SITE_LABELS[s]}")
source = source_model(loaded)
if st.button("Run the sweep", type="primary"):
    ss[RAN] = True
if ss.get(RAN) and ta is not None and tb is not None:
    result(loaded, source, clean, corrupt, site, (ta, tb))
