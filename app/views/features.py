"""The Features page's figures and tables (pure: no st.*, no caches): the feature list, a feature's
top examples shaded over their tokens, its histogram, the tokens its decoder direction promotes and
suppresses, its activation on the prompt, the "features on this prompt" strip, and the SAE job's
live chart."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale

from app.views.tokens import _span, esc

SORTS = {"frequency": "freq", "max activation": "max_act"}
SCALE = "Oranges"


def feature_table(idx: Any, sort: str = "frequency", min_freq: float = 0.0) -> pd.DataFrame:
    """One row per feature with its frequency (% of held-out tokens), max and mean activation,
    sorted by `sort` (a key of SORTS), largest first; features firing on fewer than min_freq
    of the tokens (dead ones: 0) are left out when min_freq > 0."""
    df = pd.DataFrame({"feature": range(idx.n_latents), "frequency %": (idx.freq * 100).tolist(),
                       "max act": idx.max_act.tolist(), "mean act": idx.mean_act.tolist()})
    if min_freq > 0:
        df = df[idx.freq.numpy() >= min_freq]
    col = {"freq": "frequency %", "max_act": "max act"}[SORTS[sort]]
    return df.sort_values(col, ascending=False, kind="stable").reset_index(drop=True)


def act_color(x: float) -> tuple[str, str]:
    """(background, text colour) for an activation as a fraction x of the feature's max."""
    x = min(max(float(x), 0.0), 1.0)
    return sample_colorscale(SCALE, [x])[0] if x > 0 else "#f7f7f7", "#fff" if x > 0.6 else "#111"


def shaded_html(strs: Sequence[str], acts: Sequence[float], top: float, peak: int | None = None) -> str:
    """Tokens shaded by the feature's activation (darkest orange = `top`, the feature's max), the
    peak outlined; hover gives each token's activation."""
    spans = []
    for i, (s, a) in enumerate(zip(strs, acts)):
        bg, fg = act_color(a / top if top > 0 else 0.0)
        outline = "outline:2px solid #b34700;" if i == peak else ""
        spans.append(_span(s, bg, f"{s!r}  activation={a:.3f}", outline, fg))
        if s.endswith("⏎"):
            spans.append("<br>")
    return f'<div style="line-height:1.9">{"".join(spans)}</div>'


def examples_html(idx: Any, f: int, token_strs: Callable[[Sequence[int]], list[str]]) -> list[str]:
    """Feature f's top held-out examples as shaded HTML, highest peak first ([] when it never fired)."""
    out = []
    top = float(idx.max_act[f])
    for i in range(idx.top_win.size(1)):
        if int(idx.top_win[f, i]) < 0:
            break
        ids, acts, peak = idx.example(f, i)
        head = f'<span style="color:#666;font-size:0.8em">{acts[peak]:.2f} ·</span> '
        out.append(head + shaded_html(token_strs(ids), acts, top, peak))
    return out


def histogram_figure(idx: Any, f: int) -> go.Figure:
    """Counts of feature f's non-zero held-out activations (log scale: a few strong ones show)."""
    counts = idx.hist[f].tolist()
    top = float(idx.max_act[f])
    w = top / len(counts) if top > 0 else 1.0
    fig = go.Figure(go.Bar(x=[(i + 0.5) * w for i in range(len(counts))], y=counts, width=w * 0.95,
                           marker_color="#e6550d", hovertemplate="activation %{x:.2f}<br>%{y} tokens<extra></extra>"))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), yaxis_type="log",
                      title=f"Where feature {f} fires: its activations",
                      xaxis_title="activation", yaxis_title="tokens")
    return fig


def logit_table(logits: torch.Tensor, token_str: Callable[[int], str], k: int = 10) -> pd.DataFrame:
    """The k tokens whose logits the feature's direction raises most and the k it lowers most."""
    up = logits.topk(min(k, logits.numel()))
    down = (-logits).topk(min(k, logits.numel()))
    return pd.DataFrame({"promotes": [token_str(int(i)) for i in up.indices], "+logit": up.values.tolist(),
                         "suppresses": [token_str(int(i)) for i in down.indices],
                         "−logit": (-down.values).tolist()})


def strip_table(latents: torch.Tensor, strs: Sequence[str], top: int = 3) -> pd.DataFrame:
    """Features on this prompt: for each position its token and its `top` most active features
    ("f 12 (3.4)"), blank where fewer fire."""
    vals, idx = latents.topk(min(top, latents.size(1)), dim=1)  # (T, top)
    rows = []
    for t, s in enumerate(strs):
        cells = [f"f {int(i)} ({float(v):.2f})" if v > 0 else "" for v, i in zip(vals[t], idx[t])]
        rows.append({"pos": t, "token": s, **{f"#{j + 1}": c for j, c in enumerate(cells)}})
    return pd.DataFrame(rows)


def metrics_figure(rows: Sequence[dict[str, Any]]) -> tuple[go.Figure, int]:
    """The SAE job's live chart: training FVE, held-out FVE, CE loss recovered and the dead fraction
    against the step (all on 0..1); and how many points it has."""
    train = [r for r in rows if r.get("kind") == "train"]
    ev = [r for r in rows if r.get("kind") == "eval"]
    fig = go.Figure()
    for data, key, name, dash in ((train, "fve", "FVE (train batch)", None), (train, "dead", "dead fraction", "dot"),
                                  (ev, "fve", "FVE (held out)", None), (ev, "ce_recovered", "CE loss recovered", "dash")):
        pts = [(r["step"], r[key]) for r in data if isinstance(r.get(key), (int, float))]
        if pts:
            fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode="lines+markers",
                            line=dict(dash=dash), marker=dict(size=4 if data is train else 8))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="step",
                      yaxis=dict(range=[-0.02, 1.02]), legend=dict(orientation="h", y=-0.25))
    return fig, len(train) + len(ev)


def status_text(status: dict[str, Any]) -> tuple[str, str]:
    """(level, text) for the SAE job's state, e.g. ("info", "SAE blocks.2.hook_resid_post: running ·
    step 120/1200")."""
    state = status["state"]
    if state == "none":
        return "info", "Not trained yet: Start trains it in the background (python -m trainers.train_sae)."
    level = {"failed": "error", "interrupted": "warning", "finished": "success"}.get(state, "info")
    msg = esc(status.get("message") or "")
    step = f"step {status.get('step', 0)}/{status.get('total', 0)}"
    return level, f"{state}: {msg}" + ("" if step in msg else f" ({step})")
