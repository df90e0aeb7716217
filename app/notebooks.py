""""Open as notebook": an .ipynb (nbformat 4) that recomputes one inspector page's numbers with the
gpt/ API and plots them.

Each notebook holds the checkpoint path, the prompt (and its ids where re-encoding would not give the
same ones), the layer, head and active edit, and the page's own settings, as plain literals in one
parameters cell; then it loads the checkpoint (gpt.checkpoint.load), records one forward, computes
the arrays app.exporting.page_tables exports for that page under the same names, saves them to the
NPZ path in $NANOLENS_NOTEBOOK_NPZ when that is set (the tests compare them with the app's export),
and draws a plotly figure, shown only where a notebook display exists. Pure: no Streamlit.
"""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

if TYPE_CHECKING:
    from app.inspection import Inspection, Loaded

REPO = Path(__file__).resolve().parents[1]
NPZ_ENV = "NANOLENS_NOTEBOOK_NPZ"  # where the notebook saves its arrays, when set
PAGES = ("attention", "layers", "next_token", "attribution", "patch")

_SETUP = '''\
import os, sys
from pathlib import Path
REPO = Path({repo!r})  # the nanolens checkout the app ran from; gpt/ is imported from it
if REPO.is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import numpy as np
import torch
from gpt.checkpoint import load
from gpt.edit import Edits
from gpt.record import Recorder
from app.views.tokens import token_strs, unique_labels  # the app's axis labels ("3:·b")
torch.set_grad_enabled(False)'''

_LOAD = '''\
model, tok, meta = load(CHECKPOINT)
model.eval()
ids = list(IDS) if IDS is not None else tok.encode(PROMPT)
edit = Edits.from_spec(EDIT_SPEC) if EDIT_SPEC else None  # the sidebar's intervention, if any
labels = unique_labels(token_strs(tok.token_str, ids))
idx = torch.tensor([ids])  # (1, T)
print(f"{len(ids)} tokens; edit: {edit.description if edit else 'none'}")'''

_SAVE = '''\
# the arrays above, under the names the app's "Data (NPZ)" download uses
if os.environ.get("NANOLENS_NOTEBOOK_NPZ"):
    np.savez(os.environ["NANOLENS_NOTEBOOK_NPZ"], **{k: np.asarray(v) for k, v in arrays.items()})
{k: np.shape(v) for k, v in arrays.items()}'''

_SHOW = '''\
import plotly.graph_objects as go
fig = {figure}
try:  # a notebook shows it; a plain `python` run has no display, so say where it went instead
    get_ipython  # noqa: F821
    fig.show()
except NameError:
    fig.write_html("nanolens-figure.html")
    print("no notebook display: the figure is in nanolens-figure.html")'''

# page -> (what it shows, compute cell, figure expression)
_PAGES: dict[str, tuple[str, str, str]] = {
    "attention": ("one head's attention pattern and pre-softmax scores, its layer's patterns, and where the "
                  "query token attends", '''\
rec = Recorder([f"blocks.{LAYER}.attn.hook_attn_scores", f"blocks.{LAYER}.attn.hook_pattern"])  # this layer only
model(idx, rec=rec, edit=edit)
pat = rec[f"blocks.{LAYER}.attn.hook_pattern"][0].float()  # (H, T, T)
arrays = {"pattern": pat[HEAD].numpy(),  # (T, T) query x key
          "scores": rec[f"blocks.{LAYER}.attn.hook_attn_scores"][0, HEAD].float().numpy(),
          "query_row": pat[HEAD, QUERY].numpy(),  # (T,)
          "layer_patterns": pat.numpy()}''',
                  'go.Figure(go.Heatmap(z=arrays["pattern"], x=labels, y=labels, colorscale="Blues"), '
                  'layout=dict(title=f"L{LAYER}H{HEAD} pattern", yaxis=dict(autorange="reversed")))'),
    "layers": ("the residual stream's norms through the layers and the logit lens", '''\
from gpt import analysis
rec = Recorder(list(analysis.NEEDS["residual_norms"]))
model(idx, rec=rec, edit=edit)
arrays = {f"norm_{k}": v.numpy() for k, v in analysis.residual_norms(rec, model.config.n_layer).items()}  # (L, T)
lens = analysis.logit_lens(model, rec, k=5, ids=ids)  # top-k per (row, position)
arrays["lens_top_prob"] = lens.top_probs.numpy()  # (L+1, T, k)
arrays["lens_top_token"] = np.vectorize(tok.token_str, otypes=[str])(lens.top_ids.numpy())
arrays["lens_target_prob"] = lens.target_probs.numpy()  # (L+1, T)''',
               'go.Figure(go.Heatmap(z=arrays["norm_resid_post"], x=labels, colorscale="Viridis"), '
               'layout=dict(title="|resid_post| per layer", yaxis=dict(title="layer")))'),
    "next_token": ("the next-token distribution at one position, and how surprising each actual token was", '''\
from gpt import analysis
from gpt.generate import sampling_distribution
rec = Recorder(["logits"])
model(idx, rec=rec, edit=edit)
logits = rec["logits"][0].float()  # (T, V)
arrays = {"distribution": sampling_distribution(logits[POS:POS + 1], TEMPERATURE)[0].numpy(),  # (V,)
          "surprise_bits": analysis.next_token(logits, ids, 1.0, k=1).surprise_bits.numpy()}  # (T-1,)''',
                   'go.Figure(go.Bar(y=np.sort(arrays["distribution"])[::-1][:20]), '
                   'layout=dict(title=f"top 20 next-token probabilities after position {POS}"))'),
    "attribution": ("direct logit attribution: every component's share of one logit", '''\
from gpt import attribution
d = attribution.dla(model, ids, POS, TOKEN, OTHER, edit=edit)
arrays = {"dla": d.values.numpy(),  # (components,)
          "dla_heads": d.heads(model.config.n_layer, model.config.n_head).numpy()}  # (L, H)
print(f"logit {d.logit:.4f} = sum of the terms {d.total:.4f}")''',
                    'go.Figure(go.Heatmap(z=arrays["dla_heads"], colorscale="RdBu", zmid=0), '
                    'layout=dict(title="DLA per head", xaxis=dict(title="head"), yaxis=dict(title="layer")))'),
    "patch": ("an activation-patching sweep", '''\
from gpt import patching
source = load(SOURCE)[0].eval() if SOURCE else None
res = patching.sweep(model, CLEAN_IDS, CORRUPT_IDS, SITE, patching.metric_named(METRIC, *ANSWERS),
                     source_model=source, direction=DIRECTION)
arrays = {"patch": res.values.numpy()}  # dims: res.dims
if abs(res.clean - res.corrupt) > 1e-9 * max(1.0, abs(res.clean)):
    arrays["patch_normalized"] = res.normalized().numpy()
print(res.dims, "clean", res.clean, "corrupted", res.corrupt)''',
              'go.Figure(go.Heatmap(z=arrays["patch"], colorscale="RdBu"), layout=dict(title=f"{SITE} sweep"))'),
}


def _literal(v: Any) -> str:
    """`v` as Python source that ast.literal_eval reads back equal (plain data only)."""
    text = repr(v)
    if ast.literal_eval(text) != v:
        raise ValueError(f"{v!r} is not plain data")
    return text


def _params(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{k} = {_literal(v)}" for k, v in values.items())


def notebook(page: str, params: Mapping[str, Any], title: str,
             body: tuple[str, str, str] | None = None) -> str:
    """The .ipynb text for `page` (one of PAGES) with these parameter literals (CHECKPOINT, PROMPT,
    IDS, LAYER, HEAD, EDIT_SPEC and the page's own, upper-case). `body` = (what it shows, compute
    cell, figure expression) for a page whose template lives elsewhere (app.exporting.ELSEWHERE);
    the compute cell must leave the exported arrays in `arrays`."""
    if body is None and page not in _PAGES:
        raise ValueError(f"no notebook for page {page!r}; pages with notebooks: {', '.join(PAGES)}")
    what, compute, figure = body or _PAGES[page]
    nb = new_notebook(cells=[
        new_markdown_cell(f"# nanolens: {title}\n\nRecomputes {what} with the `gpt/` API, from the same "
                          "checkpoint, prompt and settings as the app's view. Run the cells in order."),
        new_code_cell(_SETUP.format(repo=str(REPO))),
        new_markdown_cell("## What the app showed"),
        new_code_cell(_params(params)),
        new_code_cell(_LOAD),
        new_markdown_cell("## The numbers"),
        new_code_cell(compute),
        new_code_cell(_SAVE),
        new_markdown_cell("## The figure"),
        new_code_cell(_SHOW.format(figure=figure)),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.writes(nb)


def _prompt_params(loaded: "Loaded", ids: Sequence[int]) -> dict[str, Any]:
    """PROMPT as text, and IDS only where encoding that text would not give exactly these ids (dropped
    characters, a BPE split the decoder does not round-trip)."""
    text = loaded.tokenizer.decode(list(ids))
    try:
        same = loaded.tokenizer.encode(text) == list(ids)
    except Exception:  # noqa: BLE001 (an unknown character: keep the ids themselves)
        same = False
    return {"PROMPT": text, "IDS": None if same else [int(i) for i in ids]}


def edit_spec(edit: Any) -> Any:
    """The active edit as plain data for Edits.from_spec (None for no edit); ValueError saying what
    to do when it holds a tensor."""
    if edit is None or not edit:
        return None
    from gpt.edit import Edits

    try:  # only what Edits.from_spec rebuilds (ablations) can be spelled as text
        spec = ast.literal_eval(_literal(edit.key))
        Edits.from_spec(spec)
        return spec
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"the active edit ({edit.description}) holds a vector (a steering direction or an "
                         "SAE feature's decoder row), which a notebook cannot spell as text: turn it off in the "
                         "sidebar to get a notebook; the NPZ and CSV downloads hold these numbers") from None


def page_notebook(page: str, insp: "Inspection | None", settings: Mapping[str, Any],
                  loaded: "Loaded | None" = None) -> bytes:
    """The notebook of an inspector page, from its Inspection and the settings app.exporting's
    page_tables takes (patch: {clean, corrupt, site, metric, answers, direction, source (a Loaded, a
    ref or None)}, no Inspection)."""
    s = dict(settings)
    from app.exporting import ELSEWHERE

    if page in ELSEWHERE:
        return importlib.import_module(ELSEWHERE[page]).page_notebook(page, insp, settings, loaded)
    if page == "patch":
        assert loaded is not None, "the patch notebook needs the loaded model"
        s["source"] = getattr(s.get("source"), "ref", s.get("source"))  # the source model's Loaded, or its ref, or None
        params = {"CHECKPOINT": str(Path(loaded.ref).resolve()), "PROMPT": loaded.tokenizer.decode(list(s["clean"])),
                  "IDS": [int(i) for i in s["clean"]], "LAYER": 0, "HEAD": 0, "EDIT_SPEC": None,
                  "CLEAN_IDS": [int(i) for i in s["clean"]], "CORRUPT_IDS": [int(i) for i in s["corrupt"]],
                  "SITE": s["site"], "METRIC": s["metric"], "ANSWERS": [int(a) for a in s["answers"]],
                  "DIRECTION": s["direction"],
                  "SOURCE": None if s.get("source") is None else str(Path(s["source"]).resolve())}
        return notebook(page, params, f"patching sweep ({s['site']}, {s['metric']}, {s['direction']})").encode()
    assert insp is not None, f"the {page} notebook needs the page's Inspection"
    params = {"CHECKPOINT": str(Path(insp.loaded.ref).resolve()), **_prompt_params(insp.loaded, insp.ids),
              "LAYER": insp.layer, "HEAD": insp.head, "EDIT_SPEC": edit_spec(insp.edit)}
    if page == "attention":
        params["QUERY"] = int(s["query"])
    elif page == "next_token":
        params.update(POS=int(s["pos"]), TEMPERATURE=float(s.get("temperature", 1.0)))
    elif page == "attribution":
        params.update(POS=int(s["pos"]), TOKEN=int(s["token"]),
                      OTHER=None if s.get("other") is None else int(s["other"]))
    title = {"attention": f"attention of L{insp.layer}H{insp.head}", "layers": "layers",
             "next_token": "next token", "attribution": "attribution"}.get(page, page)
    return notebook(page, params, title).encode()


def code_of(nb_text: str | bytes) -> str:
    """A notebook's code cells joined into one script (the tests run it with plain python)."""
    nb = nbformat.reads(nb_text.decode() if isinstance(nb_text, bytes) else nb_text, as_version=4)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")


def is_valid(nb_text: str | bytes) -> bool:
    """Whether the text is a valid nbformat-4 notebook."""
    try:
        nbformat.validate(nbformat.reads(nb_text.decode() if isinstance(nb_text, bytes) else nb_text,
                                         as_version=4))
    except (nbformat.ValidationError, json.JSONDecodeError):
        return False
    return True
