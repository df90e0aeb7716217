"""Home page, the app's default: what nanolens is, the model being inspected in one line, and where
to start (the Walkthrough for learners, Train, Attention, Timeline, and Patch / Attribution where those pages
exist). The full model card lives on the Model page.

Widgets and layout only: the model comes from app.resources, its numbers from app.views.model_card.
A start path is listed only when its page file exists, as app/main.py registers pages (st.page_link
refuses a page that is not registered).
"""
from __future__ import annotations

import streamlit as st

from app import resources
from app.views.model_card import MISSING, model_card

# (page under app/, link label, icon, who it is for and what they get)
START = [
    ("screens/walkthrough.py", "Walkthrough", "school",
     "New to transformers? Follow your prompt through the whole model, stage by stage, with its "
     "real numbers; then see how training and generation use the same pipeline."),
    ("screens/train.py", "Train", "model_training",
     "Train a small GPT on Shakespeare, Python's docs or your own text, in the background, and watch "
     "its loss fall. nanoGPT's CPU recipe (cpu-small) takes a few minutes on a CPU."),
    ("screens/attention.py", "Attention", "grid_on",
     "Which tokens does each head read? Every head's pattern and Q·K scores, all heads at a glance, "
     "and scores for previous-token, first-token and induction heads."),
    ("screens/timeline.py", "Timeline", "timeline",
     "When did it learn that? Replay a run's snapshots and watch heads form: the bundled "
     "shakespeare-induction run grows an induction head between iter 1000 and 1500."),
    ("screens/patch.py", "Patch", "build",
     "Does a head matter? Patch a clean prompt's activations into a corrupted one, layer by layer "
     "or head by head, and see which ones carry the answer."),
    ("screens/attribution.py", "Attribution", "account_tree",
     "Which heads and layers push the predicted token up (direct logit attribution)."),
]


def summary(loaded: resources.Loaded) -> str:
    """The model being inspected in one line of markdown, leaving out what its checkpoint lacks."""
    c = model_card(loaded.config, loaded.tokenizer, loaded.meta,
                   loaded.model.get_num_params(non_embedding=False), label=loaded.label)
    tok = loaded.tokenizer
    parts = [f"{loaded.config.n_layer} layers × {loaded.config.n_head} heads",
             f"{c['Parameters'].split(' ')[0]} parameters",
             f"{tok.kind} tokenizer ({tok.vocab_size:,} tokens)"]
    if c["Iterations trained"] != MISSING:
        parts.append(f"{c['Iterations trained']} iterations trained")
    if c["Val loss"] != MISSING:
        parts.append(f"val loss {c['Val loss']}")
    return f"**{loaded.label}**: " + ", ".join(parts) + "."


def model_line() -> None:
    loaded = resources.current_model()
    if loaded is None:
        resources.show_no_model()
        return
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.markdown("Inspecting " + summary(loaded))
    right.page_link("screens/model.py", label="Choose another model", icon=":material/swap_horiz:")


def start_here() -> None:
    st.subheader("Start here")
    paths = [p for p in START if (resources.APP_DIR / p[0]).is_file()]
    n = 3 if len(paths) > 4 else len(paths)  # rows of three: six in a row cut their labels
    cols = [c for _ in range(0, len(paths), n) for c in st.columns(n)]
    for col, (page, label, icon, what) in zip(cols, paths):
        with col.container(border=True, height="stretch"):
            st.page_link(page, label=label, icon=f":material/{icon}:")
            st.caption(what)


# -- the page ----------------------------------------------------------------------------------------
st.title("nanolens")
st.markdown(
    "nanolens is a small GPT, built like nanoGPT, that you can see inside. Type a prompt and look at "
    "every layer: what each attention head reads, how the next-token guess forms layer by layer, "
    "and how text is generated one token at a time. Train your own model here and watch it learn, or "
    "load a nanoGPT `ckpt.pt` or a Hugging Face GPT-2 and inspect that.")
model_line()
start_here()
st.caption("Every page works offline and runs on a CPU. The sidebar's Model box switches the model "
           "on every page; the Model page also loads snapshots, paths and uploads.")
