"""Features page: a sparse autoencoder's features on the current model. Train one in the background,
pick one, browse its features (sortable list, top held-out examples shaded over their tokens,
histogram, the tokens its decoder direction promotes and suppresses, its activation on the prompt),
see the features on this prompt, and ablate or steer with one through the sidebar Interventions.
At the bottom, the export bar (app.export_history): the page's numbers as NPZ / CSV, and a notebook.

Widgets and layout only: figures come from app.views.features, caches from app.resources.
"""
from __future__ import annotations

import streamlit as st

from app import components, interventions, resources
from app.sae_panel import sae_panel
from app.views import features as vf

SAE_KEY, SORT_KEY, FEAT_KEY, LIVE_KEY = "ft_sae", "ft_sort", "ft_feature", "ft_alive"
ss = st.session_state

st.title("Features")
loaded = resources.require_model()
interventions.banner()
run = resources.run_dir_of(loaded)
if run is None:
    st.info("SAEs live in a run folder (<run>/sae/), and this model is a lone checkpoint: choose a run "
            "or the bundled model in the sidebar to train or browse an SAE.")
    st.stop()
with st.container(border=True):
    st.markdown("**Train an SAE** on a hook of this run (TopK, Gao et al. 2024)")
    sae_panel(run, loaded.config.n_layer)

choices = resources.sae_choices(loaded)
if not choices:
    st.info("No SAE for this model yet: train one above (the bundled model ships with one).")
    st.stop()
label = components.kept_select("SAE", list(choices), key=SAE_KEY)
folder = choices[label]
try:
    sae = resources.sae(folder, loaded)
    idx = resources.feature_index(folder)
except ValueError as e:  # SAEError, a damaged index
    st.error(str(e))
    st.stop()
ev = sae.meta.get("eval") or {}
if ev:
    components.metric_row([("held-out FVE", f"{ev['fve']:.3f}"), ("L0", f"{ev['l0']:.1f}"),
                           ("dead", f"{ev['dead']:.1%}"), ("CE loss recovered", f"{ev['ce_recovered']:.3f}")])
if idx is None:
    st.info("This SAE has no feature index yet: it is written when its training finishes.")
    st.stop()

p = components.prompt_box(loaded, [sae.hook])
lat = resources.prompt_latents(loaded, folder, p.ids, ss.get("edit"))  # (T, n)
tok_str = loaded.tokenizer.token_str
strs = [tok_str(i) for i in p.ids]

st.subheader("Features on this prompt")
st.caption(f"The three most active features at each position of the prompt, at {sae.hook} (activation in brackets).")
st.dataframe(vf.strip_table(lat, strs), hide_index=True, width="stretch", height=220)

st.subheader("Feature list")
c1, c2 = st.columns([2, 1])
sort = c1.radio("Sort by", list(vf.SORTS), key=SORT_KEY, horizontal=True)
alive = c2.toggle("Hide dead features", value=True, key=LIVE_KEY)
table = vf.feature_table(idx, sort, min_freq=1e-9 if alive else 0.0)
picked = st.dataframe(table, hide_index=True, width="stretch", height=260, on_select="rerun",
                      selection_mode="single-row", key="ft_table")
rows = picked.selection.rows if picked is not None else []
if rows:
    ss[FEAT_KEY] = int(table.iloc[rows[0]]["feature"])
if not 0 <= int(ss.get(FEAT_KEY, -1)) < idx.n_latents:  # first visit, or a smaller SAE
    ss[FEAT_KEY] = int(table.iloc[0]["feature"])
f = int(st.number_input("Feature", 0, idx.n_latents - 1, key=FEAT_KEY,
                        help="Type a feature number, or click a row of the list."))

st.subheader(f"Feature {f}")
components.metric_row([("frequency", f"{float(idx.freq[f]) * 100:.2f}%"), ("max activation", f"{float(idx.max_act[f]):.2f}"),
                       ("on this prompt (max)", f"{float(lat[:, f].max()):.2f}")])
left, right = st.columns([3, 2])
with left:
    st.markdown("**Top held-out examples** (shaded by the activation; the peak outlined)")
    ex = vf.examples_html(idx, f, lambda ids: [tok_str(i) for i in ids])
    for html in ex or ["<i>never fires on the held-out windows (a dead feature)</i>"]:
        st.markdown(html, unsafe_allow_html=True)
    st.markdown("**On this prompt**")
    st.markdown(vf.shaded_html(strs, lat[:, f].tolist(), float(idx.max_act[f])), unsafe_allow_html=True)
with right:
    st.plotly_chart(vf.histogram_figure(idx, f), width="stretch", key="ft_hist")
    st.markdown("**Logits its decoder direction moves** (through W_U)")
    logits = resources.feature_logits(loaded, folder, f)  # (vocab,)
    st.dataframe(vf.logit_table(logits, tok_str), hide_index=True, width="stretch")
bar = st.container(horizontal=True)
bar.button("Ablate it (sidebar)", key="ft_ablate", on_click=interventions.use_feature,
           args=(folder, f, "ablate"), help="Subtract its decoder contribution wherever it fires, on every page")
bar.button("Steer with it (sidebar)", key="ft_steer", on_click=interventions.use_feature,
           args=(folder, f, "steer"), help="Add alpha × its decoder direction at every position, on every page")
# everything above as NPZ / CSV, and a notebook that recomputes it (app.export_history); computed on click
insp = resources.inspect(loaded, tuple(p.ids), None, edit=ss.get("edit"))
components.export_bar("features", insp, loaded=loaded, folder=folder, feature=f, sae=sae, index=idx,
                      latents=lat, logits=logits)
