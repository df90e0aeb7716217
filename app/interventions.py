"""The sidebar "Interventions" panel (on every page, under the model picker) and the banner every
inspector page shows while an edit is active.

The panel's widgets are the edit's plain data: each run reads them into a spec
(app.views.interventions), keeps it in session_state[SPEC], and rebuilds the Edits the pages use in
session_state["edit"]. A mean ablation uses the current prompt's own ids as its reference batch, so
the same fixed mean also works when Generate steps with a KV cache.
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from app import resources, state
from app.views import interventions as vi

SPEC, SHAPE = "iv_spec", "_iv_shape"
HOW, N_LAYER, N_TEXT = "iv_how", "iv_neuron_layer", "iv_neurons"
SAE_PICK, SAE_FEAT, SAE_MODE, SAE_ALPHA = "iv_sae", "iv_sae_feature", "iv_sae_mode", "iv_sae_alpha"
NO_SAE, ALPHA = "none", 8.0


def head_key(layer: int, head: int) -> str:
    return f"iv_h_{layer}_{head}"


def mlp_key(layer: int) -> str:
    return f"iv_mlp_{layer}"


def turn_off() -> None:
    """Clear every part of the edit (a callback: runs before the page reruns)."""
    ss = st.session_state
    for k in list(ss.keys()):
        if isinstance(k, str) and (k.startswith("iv_h_") or k.startswith("iv_mlp_")):
            ss[k] = False
    ss[N_TEXT] = ""
    ss[SAE_PICK] = NO_SAE
    ss[SPEC] = dict(vi.EMPTY)
    ss[state.EDIT] = None


def _reshape(n_layer: int, n_head: int, d_mlp: int) -> None:
    """Another model: drop the ticks and neurons it does not have, and say so."""
    ss = st.session_state
    old = ss.get(SPEC) or dict(vi.EMPTY)
    new = vi.clamp(old, n_layer, n_head, d_mlp)
    for k in list(ss.keys()):
        if isinstance(k, str) and k.startswith(("iv_h_", "iv_mlp_")):
            parts = [int(x) for x in k.split("_")[2:]]
            if parts[0] >= n_layer or (len(parts) == 2 and parts[1] >= n_head):
                del ss[k]
    if int(ss.get(N_LAYER, 0)) >= n_layer:
        ss[N_LAYER] = 0
    if old.get("neurons") != new["neurons"] and old.get("neurons", (0, ()))[1]:
        ss[N_TEXT] = ", ".join(str(i) for i in new["neurons"][1])
    if new != old:
        ss["_iv_note"] = "This model is smaller: the edit parts it does not have were cleared."
    ss[SPEC] = new


def use_feature(folder: str, feature: int, mode: str) -> None:
    """Put an SAE feature in the panel, to ablate or steer with (the Features page's buttons)."""
    ss = st.session_state
    ss[SAE_PICK], ss[SAE_FEAT], ss[SAE_MODE] = folder, int(feature), mode


def _feature_part(loaded: Any) -> tuple[tuple | None, Any]:
    """The panel's SAE-feature row, shown when the model's run has SAEs (or one is picked):
    (spec["sae"] or None, the loaded SAE or None)."""
    ss = st.session_state
    choices = {folder: label.split(" · ")[0] for label, folder in resources.sae_choices(loaded).items()}
    if ss.get(SAE_PICK) not in choices:
        ss[SAE_PICK] = NO_SAE
    if not choices:
        return None, None
    folder = st.selectbox("SAE feature", [NO_SAE, *choices], key=SAE_PICK,
                          format_func=lambda f: "none" if f == NO_SAE else choices[f],
                          help="Ablate one SAE feature (subtract its decoder contribution where it fires) "
                               "or steer with it (add alpha × its decoder direction); see the Features page.")
    if folder == NO_SAE:
        return None, None
    try:
        sae = resources.sae(folder, loaded)
    except ValueError as e:  # another width or a damaged file: say so and leave it out
        st.error(str(e))
        return None, None
    if not 0 <= int(ss.get(SAE_FEAT, 0)) < sae.cfg.n_latents:
        ss[SAE_FEAT] = 0
    ss.setdefault(SAE_ALPHA, ALPHA)
    c1, c2 = st.columns([1, 1])
    f = c1.number_input("Feature", 0, sae.cfg.n_latents - 1, key=SAE_FEAT)
    mode = c2.radio("Use it to", vi.FEATURE_MODES, key=SAE_MODE)
    alpha = st.slider("alpha (steer)", -30.0, 30.0, step=0.5, key=SAE_ALPHA,
                      help="The added vector's norm in residual units (the direction has norm 1).") \
        if mode == "steer" else 0.0
    return (folder, int(f), mode, float(alpha)), sae


def panel() -> None:
    """The sidebar panel. Sets session_state[SPEC] (plain data) and ["edit"] (the Edits or None)."""
    ss = st.session_state
    loaded = resources.current_model()
    if loaded is None:
        ss[state.EDIT] = None
        return
    cfg = loaded.config
    L, H, d_mlp = cfg.n_layer, cfg.n_head, 4 * cfg.n_embd
    if ss.get(SHAPE) != (L, H, d_mlp):
        if ss.get(SHAPE) is not None:
            _reshape(L, H, d_mlp)
        ss[SHAPE] = (L, H, d_mlp)
    active = bool(ss.get(state.EDIT))
    # a bordered box, not an expander: the Home page promises no expanders (tests/test_app_model.py)
    with st.sidebar.container(border=True):
        st.markdown("**Interventions**" + (" · on" if active else ""))
        if ss.get("_iv_note"):
            st.caption(ss.pop("_iv_note"))
        how = st.radio("Ablate by", ["zero", "mean"], key=HOW, horizontal=True,
                       help="zero: set to 0. mean: set to its mean over this prompt's positions.")
        st.caption("Heads to ablate")
        heads = []
        # a header row of head numbers and a layer label before each row: the boxes themselves
        # carry no visible label (a sidebar column is too narrow for one beside a box)
        for l in range(-1, L):
            cols = st.columns([1.2] + [1] * H, gap="small", vertical_alignment="center")
            cols[0].caption("" if l < 0 else f"L{l}")
            for h in range(H):
                if l < 0:
                    cols[h + 1].caption(f"H{h}")
                elif cols[h + 1].checkbox(f"layer {l} head {h}", key=head_key(l, h),
                                          label_visibility="collapsed"):
                    heads.append((l, h))
        st.caption("MLP layers to ablate")
        cols = st.columns(min(L, 6))
        mlp = tuple(l for l in range(L) if cols[l % len(cols)].checkbox(f"L{l}", key=mlp_key(l)))  # fits a column
        c1, c2 = st.columns([1, 2])
        n_layer = c1.selectbox("Neuron layer", range(L), key=N_LAYER)
        text = c2.text_input("Neurons", key=N_TEXT, placeholder="e.g. 3, 17",
                             help=f"Comma-separated MLP neuron indices, 0..{d_mlp - 1}.")
        idx, msg = vi.parse_neurons(text or "", d_mlp)
        if msg:
            st.error(msg)
        spec = {"how": how, "heads": tuple(heads), "mlp": mlp, "neurons": (int(n_layer), idx)}
        part, sae = _feature_part(loaded)
        if part is not None:
            spec["sae"] = part
        ss[SPEC] = spec
        ref = None
        if how == "mean":
            p = resources.prompt_ids(loaded, ss.get(state.PROMPT) or "")
            ref = p.ids if p.ok else None
        ss[state.EDIT] = vi.build(spec, ref, sae)
        if ss[state.EDIT]:
            st.button("Turn off", key="iv_off_sidebar", on_click=turn_off)


def banner(where: Any = st) -> None:
    """While an edit is active: "<what is ablated> · turn off", with the button that turns it off."""
    text = vi.banner_text(st.session_state.get(state.EDIT))
    if text is None:
        return
    c1, c2 = where.columns([6, 1], vertical_alignment="center")
    c1.warning(f"Edited model: {text} · turn off →", icon=":material/content_cut:")
    c2.button("Turn off", key="iv_off_banner", on_click=turn_off,
              help="Run the original model again (clears the Interventions panel).")
