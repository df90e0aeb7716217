"""The Timeline's and the Features page's exports: their numbers as labelled tables (app.exporting.Table,
for the NPZ and CSV downloads) and their "Open as notebook" .ipynb, which recomputes the same arrays
with the gpt/ and trainers/ read APIs and plots them (app.notebooks.notebook builds it).

Timeline: every head's scores at every snapshot (the analysis job's, or, without one, scored per
snapshot), the run's logged losses, the phase-change markers of the score shown, and the prompt's
loss at each snapshot. Features: the feature list, the open feature's top held-out examples,
histogram, the tokens its decoder direction promotes and suppresses through W_U, its activation
on the prompt, and the top features at each position of the prompt.

Pure: no Streamlit, no caches. app.exporting.ELSEWHERE sends both pages here; the contracts are
app.exporting.page_tables' and app.notebooks.page_notebook's.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from app.exporting import Table, table
from app.notebooks import _prompt_params, edit_spec, notebook

if TYPE_CHECKING:
    from app.inspection import Inspection, Loaded

PAGES = ("timeline", "features")
STRIP_TOP = 3  # features per position in "Features on this prompt" (app.views.features.strip_table)
LOGIT_K = 10  # tokens promoted and suppressed (app.views.features.logit_table)
FIELDS = ("start", "end", "before", "after")  # a marker's numbers (gpt.phase.Marker)


def loss_name(series: str) -> str:
    """The table name of a logged loss series: "train (eval)" -> "loss_train_eval"."""
    return "loss_" + "_".join(series.replace("(", " ").replace(")", " ").split())


def _heads_axes(L: int, H: int) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    return ("layer", [f"L{l}" for l in range(L)]), ("head", [f"H{h}" for h in range(H)])


# -- Timeline ------------------------------------------------------------------------------------------
def timeline_tables(insp: "Inspection", s: Mapping[str, Any]) -> list[Table]:
    """settings: run (folder), paths ({iter: snapshot folder}), score (the one shown), and what the
    page read: history (a gpt.score_history.ScoreHistory) or snapshot_scores ([(iter,
    gpt.heads.HeadScores)]); with neither, the analysis is read (or every snapshot scored) here."""
    from gpt import analysis
    from gpt.checkpoint import load
    from trainers.metrics import MetricsTail

    run, paths = str(s["run"]), {int(k): str(v) for k, v in s["paths"].items()}
    history, per = s.get("history"), s.get("snapshot_scores")
    if history is None and per is None:
        from gpt.score_history import read_history

        history = read_history(run)
    if history is None and per is None:  # no analysis: what the page scores per snapshot
        from gpt.heads import head_scores

        per = [(it, head_scores(load(p)[0])) for it, p in sorted(paths.items())]
    out: list[Table] = []
    if history is not None:
        iters = ("iter", [str(i) for i in history.iters])
        for name, v in history.scores.items():  # (S, L, H)
            out.append(table(f"scores_{name}", v, iters, *_heads_axes(v.size(1), v.size(2))))
    else:
        from app.views.heads import score_tensors

        iters = ("iter", [str(it) for it, _ in per])
        mats = [score_tensors(sc) for _, sc in per]
        for name in mats[0]:
            v = torch.stack([m[name] for m in mats])  # S x (L, H) -> (S, L, H)
            out.append(table(f"scores_{name}", v, iters, *_heads_axes(v.size(1), v.size(2))))
    series = MetricsTail(run).update().series
    for name, (its, xs) in series.items():
        out.append(table(loss_name(name), np.array(xs, dtype=np.float64), ("iter", [str(int(i)) for i in its])))
    if history is not None and s.get("score") in history.scores:
        from app.views.score_history import markers_for

        marks = markers_for(history.iters, history.scores[s["score"]], s["score"], series).shown
        vals = np.array([[m.start, m.end, m.before, m.after] for m in marks], dtype=np.float64).reshape(-1, 4)
        out.append(table("events", vals, ("event", [m.text for m in marks]), ("field", FIELDS)))
    losses = []
    for it, p in sorted(paths.items()):  # the replay's "Loss on the prompt" at every snapshot
        loss = analysis.forward_loss(load(p)[0].eval(), insp.ids)
        losses.append(np.nan if loss is None else loss)
    out.append(table("prompt_loss", np.array(losses, dtype=np.float64), ("iter", [str(i) for i in sorted(paths)])))
    return out


_TIMELINE = ('''\
from gpt import analysis, phase
from trainers.metrics import MetricsTail
arrays = {}
if SOURCE == "analysis":  # the analysis job's results in RUN/analysis/ (python -m trainers.analyze)
    from gpt.score_history import read_history
    history = read_history(RUN)
    iters = history.iters
    for name, v in history.scores.items():
        arrays[f"scores_{name}"] = v.numpy()  # (S, L, H): snapshot x layer x head
else:  # no analysis: every head scored on a repeated random sequence at each snapshot
    from gpt.heads import head_scores
    iters = sorted(SNAPSHOTS)
    per = [head_scores(load(SNAPSHOTS[it])[0]) for it in iters]
    for name in ("prev_token", "induction", "entropy", "first_token"):
        arrays[f"scores_{name}"] = np.stack([getattr(sc, name).float().numpy() for sc in per])  # (S, L, H)
series = MetricsTail(RUN).update().series  # {"train" | "val" | "train (eval)": (iters, losses)}
for name, (its, xs) in series.items():
    arrays["loss_" + "_".join(name.replace("(", " ").replace(")", " ").split())] = np.array(xs, dtype=np.float64)
if SOURCE == "analysis" and SCORE in history.scores:
    # the chart's markers: the score's largest jump (when it reaches its threshold), then the 3
    # largest loss bumps in iteration order
    jump = phase.score_marker(history.iters, history.scores[SCORE], SCORE)
    bumps = sorted(sorted(phase.metric_bumps(series), key=lambda m: -abs(m.change))[:3], key=lambda m: m.start)
    markers = ([jump] if jump else []) + bumps
    for m in markers:
        print(m.kind, "|", m.text)
    arrays["events"] = np.array([[m.start, m.end, m.before, m.after] for m in markers], dtype=np.float64).reshape(-1, 4)
losses = [analysis.forward_loss(load(SNAPSHOTS[it])[0].eval(), ids) for it in sorted(SNAPSHOTS)]
arrays["prompt_loss"] = np.array([np.nan if x is None else x for x in losses], dtype=np.float64)  # (snapshots,)''',
             '''go.Figure([go.Scatter(x=[str(i) for i in iters], y=arrays[f"scores_{SCORE}"][:, l, h], name=f"L{l}H{h}", mode="lines+markers")
           for l in range(arrays[f"scores_{SCORE}"].shape[1]) for h in range(arrays[f"scores_{SCORE}"].shape[2])],
          layout=dict(title=f"{SCORE} of every head across training", xaxis_title="iteration (snapshot)"))''')


def timeline_notebook(insp: "Inspection", s: Mapping[str, Any]) -> bytes:
    """The Timeline's .ipynb: RUN, SNAPSHOTS, SCORE and SOURCE (the analysis, or scores per snapshot,
    as the page showed) besides the prompt; it saves timeline_tables' arrays under their names."""
    paths = {int(k): str(Path(v).resolve()) for k, v in s["paths"].items()}
    source = "snapshots" if s.get("history") is None and s.get("snapshot_scores") is not None else "analysis"
    if source == "analysis" and s.get("history") is None:
        from gpt.score_history import read_history

        source = "analysis" if read_history(s["run"]) is not None else "snapshots"
    params = {"CHECKPOINT": paths[max(paths)], **_prompt_params(insp.loaded, insp.ids), "LAYER": insp.layer,
              "HEAD": insp.head, "EDIT_SPEC": None, "RUN": str(Path(s["run"]).resolve()), "SNAPSHOTS": paths,
              "SCORE": str(s.get("score") or "prev_token"), "SOURCE": source}
    what = ("every head's scores across the run's snapshots, its logged losses, the phase-change markers "
            "and the prompt's loss at each snapshot")
    return notebook("timeline", params, f"timeline of {Path(s['run']).name}", body=(what, *_TIMELINE)).encode()


# -- Features ------------------------------------------------------------------------------------------
def feature_logits(model: Any, sae: Any, f: int) -> torch.Tensor:
    """W_U · (ln_f.weight ⊙ W_dec[f]) (vocab,), as app.resources.feature_logits computes it."""
    with torch.no_grad():
        v = sae.W_dec[int(f)].float() * model.transformer.ln_f.weight.detach().float().cpu()  # (C,)
        return model.lm_head.weight.detach().float().cpu() @ v  # (V, C) @ (C,) -> (V,)


def _sae_and_index(s: Mapping[str, Any], model: Any) -> tuple[Any, Any]:
    from gpt.sae import load_sae
    from gpt.sae_index import load_index

    sae = s["sae"] if s.get("sae") is not None else load_sae(s["folder"], model)
    idx = s["index"] if s.get("index") is not None else load_index(s["folder"])
    if idx is None:
        raise ValueError(f"the SAE in {s['folder']} has no feature index yet; export once its training finished")
    return sae, idx


def features_tables(insp: "Inspection", s: Mapping[str, Any]) -> list[Table]:
    """settings: folder (the SAE's), feature (the open one), and optionally what the page already
    has: sae, index (gpt.sae_index.FeatureIndex), latents ((T, n) on the prompt), logits ((V,))."""
    from gpt.sae_index import CTX_AFTER, CTX_BEFORE

    f = int(s["feature"])
    sae, idx = _sae_and_index(s, insp.model)
    lat = s.get("latents")
    if lat is None:
        from app.tracecache import record_forward

        rec = record_forward(insp.model, insp.ids, [sae.hook], insp.edit)
        with torch.no_grad():
            lat = sae.encode(rec[sae.hook][0].float())  # (T, n)
    lat = torch.as_tensor(lat).float().cpu()
    feats = ("feature", [str(i) for i in range(idx.n_latents)])
    out = [table("feature_list", torch.stack([idx.freq.float(), idx.max_act.float(), idx.mean_act.float()], 1),
                 feats, ("stat", ["frequency", "max_act", "mean_act"]))]  # (n, 3); frequency: fraction of tokens
    k = int((idx.top_win[f] >= 0).sum())  # examples it has (none for a dead feature)
    win, pos = idx.top_win[f, :k], idx.top_pos[f, :k]  # (k,) each
    W, T = CTX_BEFORE + 1 + CTX_AFTER, idx.windows.size(1)
    at = pos[:, None] - CTX_BEFORE + torch.arange(W)  # (k, W) positions in the window
    inside = (at >= 0) & (at < T)
    tok = insp.loaded.tokenizer.token_str
    strs = [[tok(int(idx.windows[int(w), int(p)])) if ok else "" for p, ok in zip(row, oks)]
            for w, row, oks in zip(win, at, inside)]
    ex = ("example", [f"#{r + 1} window {int(w)} pos {int(p)}" for r, (w, p) in enumerate(zip(win, pos))])
    offs = ("offset", [str(o - CTX_BEFORE) for o in range(W)])
    out += [table("example_windows", torch.stack([win, pos], 1).long(), ex, ("field", ["window", "position"])),
            table("example_acts", idx.top_acts[f, :k].float(), ex, offs),  # (k, W), 0 outside the window
            table("example_tokens", np.array(strs, dtype=str).reshape(k, W), ex, offs)]
    top, bins = float(idx.max_act[f]), idx.hist.size(1)
    edges = [f"[{b * top / bins:.4g}, {(b + 1) * top / bins:.4g})" for b in range(bins)]
    out.append(table("histogram", idx.hist[f].long(), ("activation", edges)))
    logits = s.get("logits")
    logits = feature_logits(insp.model, sae, f) if logits is None else torch.as_tensor(logits).float()
    V = logits.numel()
    up, down = logits.topk(min(LOGIT_K, V)), (-logits).topk(min(LOGIT_K, V))
    name = lambda i: f"{int(i)}:{tok(int(i))}"  # noqa: E731
    out += [table("logit_weights", logits, ("token", [name(i) for i in range(V)])),
            table("promoted", up.values, ("token", [name(i) for i in up.indices])),
            table("suppressed", -down.values, ("token", [name(i) for i in down.indices]))]
    out.append(table("prompt_activation", lat[:, f], ("position", insp.labels)))  # (T,)
    vals, ids = lat.topk(min(STRIP_TOP, lat.size(1)), dim=1)  # (T, top)
    rank = ("rank", [str(r + 1) for r in range(vals.size(1))])
    out += [table("prompt_top_features", ids.masked_fill(vals <= 0, -1), ("position", insp.labels), rank),  # -1: none
            table("prompt_top_acts", vals, ("position", insp.labels), rank)]
    return out


_FEATURES = ('''\
from gpt.sae import load_sae
from gpt.sae_index import CTX_AFTER, CTX_BEFORE, load_index
sae = load_sae(SAE, model)  # checked against the model's width and layers
index = load_index(SAE)  # the held-out statistics the training job wrote
f = FEATURE
rec = Recorder([sae.hook])
model(idx, rec=rec, edit=edit)
lat = sae.encode(rec[sae.hook][0].float())  # (T, n): every feature at every prompt position
arrays = {"feature_list": torch.stack([index.freq.float(), index.max_act.float(), index.mean_act.float()], 1).numpy()}
k = int((index.top_win[f] >= 0).sum())
win, pos = index.top_win[f, :k], index.top_pos[f, :k]  # (k,) window and position of each top example
W, Tw = CTX_BEFORE + 1 + CTX_AFTER, index.windows.size(1)
at = pos[:, None] - CTX_BEFORE + torch.arange(W)  # (k, W)
arrays["example_windows"] = torch.stack([win, pos], 1).long().numpy()
arrays["example_acts"] = index.top_acts[f, :k].float().numpy()  # (k, W)
arrays["example_tokens"] = np.array([[tok.token_str(int(index.windows[int(w), int(p)])) if 0 <= p < Tw else ""
                                      for p in row] for w, row in zip(win, at)], dtype=str).reshape(k, W)
arrays["histogram"] = index.hist[f].long().numpy()
# the logits the decoder direction moves, through the final LayerNorm's scale and W_U
logits = model.lm_head.weight.float() @ (sae.W_dec[f].float() * model.transformer.ln_f.weight.float())  # (V,)
arrays["logit_weights"] = logits.numpy()
arrays["promoted"] = logits.topk(min(TOP_TOKENS, logits.numel())).values.numpy()
arrays["suppressed"] = -(-logits).topk(min(TOP_TOKENS, logits.numel())).values.numpy()
arrays["prompt_activation"] = lat[:, f].numpy()  # (T,)
vals, feats = lat.topk(min(STRIP_TOP, lat.size(1)), dim=1)  # (T, top)
arrays["prompt_top_features"] = feats.masked_fill(vals <= 0, -1).numpy()  # -1: fewer fire there
arrays["prompt_top_acts"] = vals.numpy()''',
             '''go.Figure(go.Bar(x=labels, y=arrays["prompt_activation"], marker_color="#e6550d"),
          layout=dict(title=f"feature {FEATURE} on the prompt ({sae.hook})", yaxis_title="activation"))''')


def features_notebook(insp: "Inspection", s: Mapping[str, Any]) -> bytes:
    """The Features page's .ipynb: SAE (its folder) and FEATURE besides the prompt and the sidebar's
    edit; it saves features_tables' arrays under their names."""
    params = {"CHECKPOINT": str(Path(insp.loaded.ref).resolve()), **_prompt_params(insp.loaded, insp.ids),
              "LAYER": insp.layer, "HEAD": insp.head, "EDIT_SPEC": edit_spec(insp.edit),
              "SAE": str(Path(s["folder"]).resolve()), "FEATURE": int(s["feature"]), "STRIP_TOP": STRIP_TOP,
              "TOP_TOKENS": LOGIT_K}
    what = ("an SAE feature's statistics, top examples and logit weights, and the features active on the "
            "prompt")
    return notebook("features", params, f"SAE feature {int(s['feature'])}", body=(what, *_FEATURES)).encode()


# -- the contracts of app.exporting / app.notebooks ---------------------------------------------------------
def page_tables(page: str, insp: "Inspection | None", settings: Mapping[str, Any]) -> list[Table]:
    """The tables of "timeline" or "features" (settings: timeline_tables' and features_tables')."""
    if insp is None:
        raise ValueError(f"the {page} export needs the page's Inspection (its prompt and model)")
    if page == "timeline":
        return timeline_tables(insp, settings)
    if page == "features":
        return features_tables(insp, settings)
    raise ValueError(f"no tables for page {page!r} here; pages: {', '.join(PAGES)}")


def page_notebook(page: str, insp: "Inspection | None", settings: Mapping[str, Any],
                  loaded: "Loaded | None" = None) -> bytes:
    """The .ipynb of "timeline" or "features" for the same settings as page_tables."""
    if insp is None:
        raise ValueError(f"the {page} notebook needs the page's Inspection (its prompt and model)")
    if page == "timeline":
        return timeline_notebook(insp, settings)
    if page == "features":
        return features_notebook(insp, settings)
    raise ValueError(f"no notebook for page {page!r} here; pages: {', '.join(PAGES)}")
