"""Export for the Generate, Compare and Walkthrough pages (app.exporting.ELSEWHERE sends them here):
each page's numbers as labelled tables (app.exporting.Table, so the NPZ and CSV downloads work as on
the other pages), and its "Open as notebook" (app.notebooks.notebook with a template from
app.export_generation_cells), whose compute cell leaves the same arrays under the same names.

- generate: the sequence (ids, token strings), per generated token the id, its probability, whether
  it was forced, the top-k it was drawn from (-1 / "" where a token could not be drawn) and the last
  step's attention row; in Steer mode the same for both columns ("default_", "steered_") and the KL
  per step. The notebook replays the sequence by teacher forcing (one forward over it).
- compare: each side's loss per position, KL(A ‖ B), the open head's patterns and B − A, how
  differently every head attends, the lens's p(actual next token) per row and B − A, the next-token
  distribution at the chosen position, the head scores measured on each prompt.
- walkthrough: the prompt's ids, the selected stage's values at the chosen layer (and head), with
  their norms, and the prompt as a training example (loss, p and rank of each next token).
Pure: no Streamlit, no caches; called only when a download button is clicked.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from app import export_generation_cells as cells
from app.exporting import Table, table
from app.notebooks import _prompt_params, edit_spec, notebook
from app.views.tokens import token_strs, unique_labels

if TYPE_CHECKING:
    from app.generation import GenState, Settings
    from app.inspection import Inspection, Loaded

PAGES = ("generate", "compare", "walkthrough")
_NORMS = {"‖x‖": "norm", "before": "norm_before", "+ attn out": "norm_added", "+ MLP out": "norm_added",
          "after": "norm_after"}  # StageValues.norms keys -> table names


def _layers_heads(n_layer: int, n_head: int) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    return ("layer", [f"L{i}" for i in range(n_layer)]), ("head", [f"H{h}" for h in range(n_head)])


def _vocab(token_str: Callable[[int], str], n: int) -> list[str]:
    return [f"{i}:{token_str(i)}" for i in range(n)]


# -- Generate --------------------------------------------------------------------------------------------
def generation_tables(gs: "GenState", token_str: Callable[[int], str], prefix: str = "") -> list[Table]:
    """One generation's tables (names start with `prefix`): the whole sequence, and per generated
    token what the page showed for its step. Step axes are labelled by sequence position ("12:·e")."""
    strs = token_strs(token_str, gs.ids)
    labels = unique_labels(strs)  # (T,)
    out = [table(prefix + "sequence_id", np.array(gs.ids, dtype=np.int64), ("position", labels)),
           table(prefix + "sequence_token", np.array(strs, dtype=str), ("position", labels))]
    steps = gs.steps
    if not steps:
        return out
    at = ("position", [labels[s.pos] for s in steps])
    top_p = torch.stack([s.top_probs.float() for s in steps])  # (n, k)
    top_i = torch.stack([s.top_ids.long() for s in steps]).masked_fill(top_p <= 0, -1)  # (n, k); -1: not drawable
    ranks = ("rank", [str(r + 1) for r in range(top_p.size(1))])
    out += [table(prefix + "step_token_id", np.array([s.token for s in steps], dtype=np.int64), at),
            table(prefix + "step_prob", np.array([s.prob for s in steps], dtype=np.float32), at),
            table(prefix + "step_forced", np.array([int(s.forced) for s in steps], dtype=np.int64), at),
            table(prefix + "step_top_prob", top_p, at, ranks),
            table(prefix + "step_top_id", top_i, at, ranks),
            table(prefix + "step_top_token", np.vectorize(lambda i: token_str(int(i)) if i >= 0 else "",
                                                          otypes=[str])(top_i.numpy()), at, ranks)]
    last = steps[-1]
    if last.attention is not None:  # (L, H, pos - ctx_start): where the predicting query looked
        L, H, _ = last.attention.shape
        out.append(table(prefix + "last_step_attention", last.attention.float(), *_layers_heads(L, H),
                         ("key", labels[last.ctx_start:last.pos])))
    return out


def generate_tables(insp: "Inspection", s: Mapping[str, Any]) -> list[Table]:
    """settings: state (GenState); in Steer mode also steered (GenState) and kl (one float per step)."""
    token_str = insp.token_str
    if s.get("steered") is None:
        return generation_tables(s["state"], token_str)
    out = generation_tables(s["state"], token_str, "default_") + generation_tables(s["steered"], token_str, "steered_")
    kl = list(s.get("kl") or [])
    gs = s["state"]
    labels = [str(len(gs.prompt) + i) for i in range(len(kl))]
    return out + [table("kl", np.array(kl, dtype=np.float64), ("position", labels))]


# -- Compare ---------------------------------------------------------------------------------------------
def recorded(insp: "Inspection", names: Sequence[str]) -> "Inspection":
    """The Inspection with a recording that holds `names` (the page records only what its open tab
    reads; an export records the rest with one forward)."""
    from app.tracecache import record_forward
    from gpt.record import Recorder

    want = Recorder.resolve(insp.config, list(names)) if names else []
    if insp.rec is not None and all(n in insp.rec for n in want):
        return insp
    return replace(insp, rec=record_forward(insp.model, insp.ids, list(names), insp.edit), names=tuple(names))


def compare_tables(a: "Inspection", b: "Inspection", pos: int) -> list[Table]:
    """The Compare page's numbers for sides A and B (Inspections) and the chosen position."""
    from app.views import compare as vc
    from gpt import compare, heads
    from gpt.analysis import logit_lens
    from gpt.generate import sampling_distribution

    a, b = recorded(a, vc.NAMES), recorded(b, vc.NAMES)
    comp = vc.comparison(a, b)
    n = comp.n
    pair = vc.pair_labels(a, b, n)  # (n,)
    out = []
    for tag, s in (("a", a), ("b", b)):
        out.append(table(f"loss_{tag}", compare.loss_per_position(s.rec["logits"], s.ids), ("position", s.labels[:-1])))
    if comp.kl:
        out.append(table("kl", compare.kl_per_position(a.rec["logits"], b.rec["logits"], n), ("position", pair)))
    pa = a.rec[f"blocks.{a.layer}.attn.hook_pattern"][0, a.head].float()  # (Ta, Ta)
    pb = b.rec[f"blocks.{b.layer}.attn.hook_pattern"][0, b.head].float()  # (Tb, Tb)
    out += [table("pattern_a", pa, ("query", a.labels), ("key", a.labels)),
            table("pattern_b", pb, ("query", b.labels), ("key", b.labels))]
    if n:
        out.append(table("pattern_diff", compare.pattern_diff(pa, pb, n), ("query", pair), ("key", pair)))
    if n and comp.same_heads:
        dist = torch.stack([compare.pattern_distance(a.rec[f"blocks.{i}.attn.hook_pattern"][0],
                                                     b.rec[f"blocks.{i}.attn.hook_pattern"][0], n)
                            for i in range(a.config.n_layer)])  # (L, H)
        out.append(table("head_distance", dist, *_layers_heads(a.config.n_layer, a.config.n_head)))
    lenses = {}
    for tag, s in (("a", a), ("b", b)):
        lenses[tag] = ln = logit_lens(s.model, s.rec, k=5, ids=s.ids)  # target_probs (L+1, T)
        out.append(table(f"lens_target_{tag}", ln.target_probs, ("row", ln.layers), ("position", s.labels)))
    if comp.lens:
        d = lenses["b"].target_probs[:, :n] - lenses["a"].target_probs[:, :n]  # (L+1, n)
        out.append(table("lens_target_diff", d, ("row", lenses["a"].layers), ("position", pair)))
    for tag, s in (("a", a), ("b", b)):
        p = min(pos, s.T - 1)
        out.append(table(f"next_{tag}", sampling_distribution(s.rec["logits"][0, p].float(), 1.0),  # (V,)
                         ("token", _vocab(s.token_str, s.config.vocab_size))))
        patterns = [s.rec[f"blocks.{i}.attn.hook_pattern"][0] for i in range(s.config.n_layer)]  # L x (H, T, T)
        for key, v in heads.prompt_head_scores(patterns).items():  # (L, H) each
            out.append(table(f"scores_{tag}_{key}", v, *_layers_heads(s.config.n_layer, s.config.n_head)))
    return out


# -- Walkthrough -----------------------------------------------------------------------------------------
def walkthrough_tables(insp: "Inspection", stage: str) -> list[Table]:
    """The Walkthrough's numbers: the ids, `stage`'s values at the Inspection's layer (and head,
    for attention) as the Pipeline tab draws them, and the Training tab's per-position numbers."""
    from app.views import walkthrough_stages as vs
    from gpt import analysis
    from gpt.heads import attention_steps

    lab = ("position", insp.labels)
    out = [table("ids", np.array(insp.ids, dtype=np.int64), lab)]
    if stage != "ids":
        insp = recorded(insp, vs.stage_names(stage, insp.layer))
        sv = vs.stage_values(stage, insp.layer, insp.rec, insp.model)
        X = sv.values.size(-1)
        cols = ("token", _vocab(insp.token_str, X)) if stage == "logits" else ("channel", [f"c{j}" for j in range(X)])
        out.append(table("values", sv.values, lab, cols))  # (T, X)
        out += [table(_NORMS[k], v, lab) for k, v in sv.norms.items()]  # (T,) each
        if sv.hidden is not None:
            out.append(table("mlp_hidden", sv.hidden, lab, ("unit", [f"u{j}" for j in range(sv.hidden.size(-1))])))
        if sv.head_norms is not None:
            out.append(table("head_norms", sv.head_norms, lab, ("head", [f"H{h}" for h in range(sv.head_norms.size(-1))])))
        if stage == "attn":
            st = attention_steps(insp.rec, insp.layer, insp.head)
            dims = ("dim", [f"d{j}" for j in range(st.q.size(-1))])
            out += [table(f"attn_{k}", getattr(st, k), lab, dims) for k in ("q", "k", "v", "z")]  # (T, hs)
            out += [table(f"attn_{k}", getattr(st, k), ("query", insp.labels), ("key", insp.labels))
                    for k in ("raw", "scores", "pattern")]  # (T, T)
    if insp.T >= 2:
        tv = analysis.training_example(insp.model, insp.ids, edit=insp.edit)
        at = ("position", insp.labels[:-1])  # position t predicts token t + 1
        out += [table("train_loss", tv.per_position, at), table("train_target_prob", tv.target_prob, at),
                table("train_target_rank", tv.target_rank, at)]
    return out


# -- the two entry points --------------------------------------------------------------------------------
def page_tables(page: str, insp: "Inspection | None", settings: Mapping[str, Any]) -> list[Table]:
    """The tables of `page` (one of PAGES): generate {state, steered?, kl?}, compare {b, pos},
    walkthrough {stage}; `insp` is the page's Inspection (compare: side A)."""
    if insp is None:
        raise ValueError(f"the {page} export needs the page's Inspection")
    if page == "generate":
        return generate_tables(insp, settings)
    if page == "compare":
        return compare_tables(insp, settings["b"], int(settings["pos"]))
    if page == "walkthrough":
        return walkthrough_tables(insp, str(settings["stage"]))
    raise ValueError(f"no tables here for page {page!r}; pages: {', '.join(PAGES)}")


def _ref(loaded: "Loaded") -> str:
    return str(Path(loaded.ref).resolve())


def _generate_params(insp: "Inspection", s: Mapping[str, Any]) -> dict[str, Any]:
    gs, sampling = s["state"], s["sampling"]
    kw = sampling.generator_kwargs()
    params = {"SEQUENCE": [int(i) for i in gs.ids], "TEMPERATURE": kw["temperature"], "TOP_K": kw["top_k"],
              "TOP_P": kw["top_p"], "SEED": kw["seed"], "K": int(s.get("k", 10)),
              "FORCED": [int(x.forced) for x in gs.steps], "STEERED_SEQUENCE": None, "STEERED_FORCED": None,
              "STEER": None}
    if s.get("steered") is not None:
        steer = s["steer"]
        params.update(STEERED_SEQUENCE=[int(i) for i in s["steered"].ids],
                      STEERED_FORCED=[int(x.forced) for x in s["steered"].steps],
                      STEER={"vector": torch.as_tensor(steer["vector"]).float().tolist(), "alpha": float(steer["alpha"]),
                             "layer": int(steer["layer"]), "site": str(steer["site"])})
    return params


def page_notebook(page: str, insp: "Inspection | None", settings: Mapping[str, Any],
                  loaded: "Loaded | None" = None) -> bytes:
    """The notebook of `page` (settings as page_tables takes them; generate also sampling (Settings)
    and k, and in Steer mode steer {vector, alpha, layer, site})."""
    if insp is None:
        raise ValueError(f"the {page} notebook needs the page's Inspection")
    s = settings
    prompt = s["state"].prompt if page == "generate" else insp.ids
    params = {"CHECKPOINT": _ref(insp.loaded), **_prompt_params(insp.loaded, prompt),
              "LAYER": insp.layer, "HEAD": insp.head, "EDIT_SPEC": edit_spec(insp.edit)}
    if page == "generate":
        params.update(_generate_params(insp, s))
        title = "generation, replayed" + (" (steered beside default)" if s.get("steered") is not None else "")
    elif page == "compare":
        b = s["b"]
        params.update(CHECKPOINT_B=_ref(b.loaded), **{k + "_B": v for k, v in _prompt_params(b.loaded, b.ids).items()},
                      EDIT_SPEC_B=edit_spec(b.edit), POS=int(s["pos"]))
        title = "two checkpoints compared"
    elif page == "walkthrough":
        params["STAGE"] = str(s["stage"])
        title = f"walkthrough, stage {s['stage']}"
    else:
        raise ValueError(f"no notebook here for page {page!r}; pages: {', '.join(PAGES)}")
    return notebook(page, params, title, body=cells.BODIES[page]).encode()
