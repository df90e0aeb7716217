"""The Generate page's steering panel (widgets and layout only): choose a steering vector (contrast of
two prompt sets, a token's direction, a head's output, or a saved one), where to add it and how
strongly (alpha), then step the "default" and "steered" columns together; the KL per step, the
alpha sweep, and saving the vector.

The columns are an app.steering_pair.SteeringPair (session state "steer_*"); its buttons call it in
callbacks, which never touch st.session_state. Vectors, sweeps and where vectors are saved come from
app.resources.steering; figures from app.views.steering; the maths from gpt.steering.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import streamlit as st

from app import components
from app.generation import GenState, Settings
from app.inspection import Inspection
from app.resources import steering as rs
from app.resources.features import sae_choices
from app.steering_pair import SteeringPair
from app.views import generate as vg
from app.views import steering as vsteer
from app.views.tokens import md_label
from gpt.steering import POLICIES, SITES, SteeringVector, steering_edit

if TYPE_CHECKING:
    from app.inspection import Loaded
    from gpt.edit import Edits

TOP_K = 8
SOURCES = {"contrast": "Contrast of two prompt sets", "token": "A token's direction",
           "head": "A head's output", "sae": "An SAE feature", "saved": "A saved vector"}


def vector_box(loaded: "Loaded", ids: Sequence[int]) -> SteeringVector | None:
    """The source widgets and the vector they make (None, with the message, when they cannot)."""
    cfg, tok = loaded.config, loaded.tokenizer
    source = st.radio("Steering vector", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="steer_source")
    layers = list(range(cfg.n_layer))
    if source == "contrast":
        a, b = st.columns(2)
        pos = a.text_area("First prompt set (one per line)", "I love you\nYou are kind", key="steer_pos")
        neg = b.text_area("Second prompt set (one per line)", "I hate you\nYou are cruel", key="steer_neg")
        c = st.columns([1, 3])
        layer = c[0].selectbox("Layer (resid_pre)", layers, index=len(layers) // 2, key="steer_src_layer")
        policy = c[1].radio("Positions", POLICIES, format_func=vsteer.POLICY_LABELS.get, horizontal=True,
                            key="steer_policy")
        spec: tuple = ("contrast", pos, neg, layer, policy)
    elif source == "token":
        spec = ("token", st.text_input("Token", "!", key="steer_token", help="One token of this model."))
    elif source == "head":
        c = st.columns(3)
        layer = c[0].selectbox("Layer", layers, key="steer_head_layer")
        head = c[1].selectbox("Head", list(range(cfg.n_head)), key="steer_head_head")
        labels = [f"{i}: {tok.token_str(t)}" for i, t in enumerate(ids)]
        pos = c[2].selectbox("Position", list(range(len(ids))), index=len(ids) - 1, format_func=labels.__getitem__,
                             key=f"steer_head_pos_{len(ids)}")
        spec = ("head", tuple(ids), layer, head, pos)
    elif source == "sae":
        choices = sae_choices(loaded)
        if not choices:
            st.info("No SAE for this model yet: train one on the Features page.")
            return None
        c = st.columns([3, 1])
        folder = choices[c[0].selectbox("SAE", list(choices), key="steer_sae")]
        spec = ("sae", folder, int(c[1].number_input("Feature", 0, None, 0, key="steer_sae_feature")))
    else:
        names = rs.saved_vectors(loaded)
        if not names:
            st.info(f"No vectors saved for this model yet. Saved vectors go to {rs.vector_home(loaded)[1]}.")
            return None
        spec = ("saved", components.kept_select("Saved vector", names, "steer_saved"))
    try:
        sv = rs.make_vector(loaded, spec)
    except ValueError as e:
        st.error(str(e))
        return None
    st.markdown(vsteer.vector_words(sv, rs.fingerprint(loaded)))
    return sv


def column(where: Any, name: str, which: str, g: GenState, pair: SteeringPair,
           token_str: Callable[[int], str]) -> None:
    """One column: its text so far, the last token's distribution, and buttons to force another."""
    view = vg.build(g, token_str)
    where.markdown(f"**{name}**")
    where.markdown(view.text, unsafe_allow_html=True)
    if not g.steps:
        return
    last = g.steps[-1]
    where.caption(f"token {last.pos}: {token_str(last.token)!r} ({'forced' if last.forced else 'drawn'}, "
                  f"p={last.prob:.3f})")
    where.plotly_chart(view.distribution, width="stretch", key=f"steer_dist_{which}")
    cols = where.columns(3)
    for j, (tok_id, s, prob, _) in enumerate(a for a in view.alternatives if not a[3]):
        cols[j % 3].button(f"{md_label(s)} · {prob:.1%}", key=f"steer_force_{which}_{tok_id}", on_click=pair.force,
                           args=(which, tok_id), width="stretch")


def sweep_box(loaded: "Loaded", ids: Sequence[int], sv: SteeringVector, layer: int, site: str,
              base: "Edits | None") -> None:
    """The watched token, p(token) against alpha and the greedy continuations (cached sweep)."""
    tok = loaded.tokenizer
    default = st.session_state.get("steer_token", "!") if sv.kind == "token" else "!"
    watch = st.text_input("Token to watch", default, key=f"steer_watch_{sv.kind}")
    try:
        t = vsteer.token_id(tok, watch)
    except ValueError as e:
        st.error(str(e))
        return
    rows = rs.sweep(loaded, ids, sv, layer, site, vsteer.SWEEP_ALPHAS, t, base)
    st.plotly_chart(vsteer.sweep_figure(rows, repr(tok.token_str(t))), width="stretch", key="steer_sweep_fig")
    st.dataframe(vsteer.sweep_frame(rows, tok.decode), hide_index=True, key="steer_sweep_table",
                 column_config={"p(token)": st.column_config.NumberColumn(format="%.4g")})
    st.caption(f"Greedy decoding (temperature 0) from the prompt, the vector added at blocks.{layer} {site}.")


def save_box(loaded: "Loaded", sv: SteeringVector) -> None:
    """A name and a Save button; says where the vector went (app.resources.steering.vector_home)."""
    c = st.columns([3, 1], vertical_alignment="bottom")
    name = c[0].text_input("Save this vector as", f"{sv.kind}-vector", key="steer_name")
    if c[1].button("Save vector", key="steer_save"):
        try:
            path = rs.save_vector(loaded, sv, name)
        except (ValueError, OSError) as e:
            st.error(f"Not saved: {e}")
        else:
            st.success(f"Saved {path.name} in {rs.vector_home(loaded)[1]}; choose \"A saved vector\" to reuse it.")


def show(loaded: "Loaded", ids: Sequence[int], settings: Settings, base: "Edits | None") -> None:
    """The whole panel for the prompt `ids`, the page's sampling settings and the active intervention."""
    pair = SteeringPair(st.session_state, "steer", top_k_shown=TOP_K)
    sv = vector_box(loaded, ids)
    if sv is None:
        return
    c = st.columns(3)
    layers = list(range(loaded.config.n_layer))
    layer = c[0].selectbox("Add at layer", layers, index=min(sv.layer, len(layers) - 1), key=f"steer_layer_{sv.kind}")
    site = c[1].selectbox("Site", list(SITES), index=list(SITES).index(sv.site), format_func=vsteer.SITE_LABELS.get,
                          key=f"steer_site_{sv.kind}")
    alpha = c[2].number_input("Strength α", -64.0, 64.0, 4.0, 0.5, key="steer_alpha",
                              help="The vector times α is added at every position; α = 0 is no steering.")
    steer = steering_edit(loaded.model, sv, alpha, layer, site)
    gd, gs, kl = pair.sync(loaded, ids, settings, base, steer)
    with st.container(horizontal=True):
        st.button("Step both", key="steer_step", on_click=pair.step, args=(1,), type="primary")
        st.button("Step both ×10", key="steer_step10", on_click=pair.step, args=(10,))
        st.button("Back", key="steer_back", on_click=pair.back, disabled=gd.n_new == 0)
        st.button("Reset", key="steer_reset", on_click=pair.reset, disabled=gd.n_new == 0)
    token_str = loaded.tokenizer.token_str
    left, right = st.columns(2)
    column(left, "default", "default", gd, pair, token_str)
    column(right, f"steered (α = {alpha:g})", "steered", gs, pair, token_str)
    split = vsteer.diverged_at(gd, gs)
    where = "the texts agree so far" if split is None else f"the texts differ from token {split} on"
    st.caption(f"{gd.n_new} new tokens in each column, same seed ({settings.seed}); {where}.")
    if kl:
        st.plotly_chart(vsteer.kl_figure(kl, len(gd.prompt)), width="stretch", key="steer_kl_fig")
        st.caption(f"KL at the last token: {kl[-1]:.4f} nats (each column's distribution on its own text, "
                   "before temperature, top-k and top-p).")
    with st.expander("α sweep", expanded=True):
        sweep_box(loaded, ids, sv, layer, site, base)
    with st.expander("Save this vector"):
        save_box(loaded, sv)
    insp = Inspection.of(loaded, tuple(gd.ids), None, (), edit=base)  # both columns' tables: app.export_generation
    components.export_bar("generate", insp, loaded=loaded, state=gd, steered=gs, kl=kl, sampling=settings, k=TOP_K,
                          steer={"vector": sv.vector, "alpha": alpha, "layer": layer, "site": site})
