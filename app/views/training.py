"""What the Train page shows, as pure functions: preset defaults, size/memory/time estimates, the
runs table, progress (tokens/s, ETA) and the live loss chart (downsampled). No Streamlit here.

Time estimates scale a measured throughput by FLOPs per token: `tokens_per_s(cfg, ref_tps)`
takes the tokens/s this machine reached on the tiny preset (app.resources.cpu_tokens_per_s,
measured once per process) and divides by how many times more work a token of `cfg` is (Kaplan et
al. 2020: 6N + 6·L·T·C FLOPs per training token). Bigger models use the CPU better than the tiny
one, so the estimate errs long; it is a rough guide, not a promise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from gpt.config import GPTConfig
from trainers.config import PRESETS, TrainConfig, estimate_memory
from trainers.metrics import SERIES

# the overrides the page offers, in display order: (field, label, kind)
FIELDS = (("n_layer", "Layers", int), ("n_head", "Heads", int), ("n_embd", "Embedding size", int),
          ("block_size", "Context (block_size)", int), ("batch_size", "Batch size", int),
          ("max_iters", "Iterations", int), ("learning_rate", "Learning rate", float),
          ("dropout", "Dropout", float), ("eval_interval", "Eval every", int))
MAX_POINTS = 1500
# rough vocabulary sizes before the data is read (for the estimate only)
VOCAB_GUESS = {"shakespeare": 65, "python-docs": 100}
GPT2_VOCAB = 50257


def preset_values(preset: str) -> dict[str, Any]:
    """The values of FIELDS for a trainer preset; shape fields it leaves None come from the
    GPTConfig preset of the same name."""
    tc: TrainConfig = PRESETS[preset]
    mc = GPTConfig.preset(preset)
    out = {}
    for name, _label, kind in FIELDS:
        v = getattr(tc, name)
        out[name] = kind(getattr(mc, name) if v is None else v)
    return out


def n_params(c: GPTConfig) -> int:
    """Parameters of GPT(c), counting the tied lm_head once (= GPT.get_num_params(False))."""
    C, L = c.n_embd, c.n_layer
    ln = 2 * C if c.bias else C
    b = 1 if c.bias else 0
    block = 2 * ln + (3 * C * C + 3 * C * b) + (C * C + C * b) + (4 * C * C + 4 * C * b) + (4 * C * C + C * b)
    return c.vocab_size * C + c.block_size * C + L * block + ln


def flops_per_token(c: GPTConfig) -> float:
    """Training FLOPs per token: 6N (N without position embeddings, with the lm_head matmul)
    plus 6·L·T·C for attention scores (Kaplan et al. 2020)."""
    n = n_params(c) - c.block_size * c.n_embd
    return 6.0 * n + 6.0 * c.n_layer * c.block_size * c.n_embd


def tokens_per_s(c: GPTConfig, ref_tps: float, ref: GPTConfig | None = None) -> float:
    """Training tokens/s expected for `c`, given `ref_tps` measured on `ref` (default: the tiny preset)."""
    ref = ref or GPTConfig.preset("tiny")
    return ref_tps * flops_per_token(ref) / flops_per_token(c)


@dataclass(frozen=True)
class Estimate:
    params: int
    memory_bytes: int  # weights + grads + AdamW state + activations of one step (fp32)
    tokens: int  # training tokens over the whole run (eval not counted)
    tokens_per_s: float
    seconds: float  # training plus evaluation


def estimate(model_cfg: GPTConfig, train: TrainConfig, ref_tps: float) -> Estimate:
    """Size, memory and rough duration of a run. Evaluation runs 2·eval_iters forward-only batches
    (a third of a training step each) at every eval_interval."""
    p_bytes, a_bytes = estimate_memory(model_cfg, train.batch_size)
    per_iter = train.batch_size * train.grad_accum * model_cfg.block_size
    tokens = train.max_iters * per_iter
    tps = max(tokens_per_s(model_cfg, ref_tps), 1e-9)
    evals = train.max_iters // train.eval_interval + 1
    eval_tokens = evals * 2 * train.eval_iters * train.batch_size * model_cfg.block_size / 3
    return Estimate(params=n_params(model_cfg), memory_bytes=p_bytes + a_bytes, tokens=tokens,
                    tokens_per_s=tps, seconds=(tokens + eval_tokens) / tps)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_duration(s: float | None) -> str:
    """12 -> "12 s", 75 -> "1 min 15 s", 7300 -> "2 h 1 min"; None or nan -> "—"."""
    if s is None or not math.isfinite(s):
        return "—"
    s = max(0, round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


# -- runs ------------------------------------------------------------------------------------------
def run_rows(runs: Sequence[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """One row per run (trainers.runs.list_runs dicts) for the runs table."""
    now = time.time() if now is None else now
    out = []
    for r in runs:
        it, mx = r.get("iter"), r.get("max_iters")
        val = r.get("val_loss") if r.get("val_loss") is not None else r.get("best_val_loss")
        ts = r.get("updated_ts")
        out.append({"run": r.get("name"), "state": r.get("state", "unknown"),
                    "iter": f"{it if it is not None else '—'} / {mx if mx is not None else '—'}",
                    "val loss": round(val, 4) if isinstance(val, (int, float)) else None,
                    "preset": r.get("preset") or "—", "data": r.get("data") or "—",
                    "updated": f"{human_duration(now - ts)} ago" if isinstance(ts, (int, float)) else "—"})
    return out


@dataclass(frozen=True)
class Progress:
    iter: int
    max_iters: int
    fraction: float  # 0..1
    tokens_per_s: float | None
    eta_s: float | None


def progress(status: dict[str, Any], logged_tokens_per_s: float | None = None) -> Progress:
    """Where a run is: status.json's iter/max_iters/tokens_per_s/eta_s, falling back to the last
    logged tokens_per_s (trainers.metrics.Metrics.last_tokens_per_s). A run that is not going has
    no ETA."""
    it = int(status.get("iter") or 0)
    mx = int(status.get("max_iters") or 0)
    tps = status.get("tokens_per_s")
    if tps is None:
        tps = logged_tokens_per_s
    eta = status.get("eta_s") if status.get("state") in ("starting", "running", "stopping") else None
    return Progress(iter=it, max_iters=mx, fraction=min(1.0, it / mx) if mx else 0.0,
                    tokens_per_s=tps, eta_s=eta)


# -- loss chart ------------------------------------------------------------------------------------
def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_POINTS
               ) -> tuple[list[float], list[float]]:
    """At most `max_points` evenly spaced points of (xs, ys), always keeping the first and last;
    unchanged when already short enough."""
    n = len(xs)
    if len(ys) != n:
        raise ValueError(f"xs and ys differ in length ({n} vs {len(ys)})")
    if n <= max_points:
        return list(xs), list(ys)
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def loss_series(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{"train": (iters, losses), "val": (...), "train (eval)": (...)} from metrics.jsonl rows;
    rows without a finite value for a series are skipped. (The live page gets the same mapping
    incrementally from trainers.metrics.MetricsTail.)"""
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in SERIES}
    for r in rows:
        for series, key in SERIES.items():
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and r.get("iter") is not None:
                out[series][0].append(r["iter"])
                out[series][1].append(float(v))
    return out


def loss_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], log_y: bool = False,
                max_points: int = MAX_POINTS) -> tuple[go.Figure, int]:
    """(figure, number of points drawn) from loss_series' mapping (a missing series is empty):
    train loss as a thin line, val loss as markers and line, each series downsampled to
    `max_points`. uirevision keeps the user's zoom across updates."""
    styles = {"train": dict(mode="lines", line=dict(width=1, color="#8fb3d9")),
              "train (eval)": dict(mode="lines", line=dict(width=1.5, dash="dot", color="#1f77b4")),
              "val": dict(mode="lines+markers", line=dict(width=2, color="#d62728"), marker=dict(size=6))}
    fig = go.Figure()
    points = 0
    for name in ("train", "train (eval)", "val"):
        xs, ys = downsample(*series.get(name, ((), ())), max_points=max_points)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, name=name + " loss", **styles[name]))
            points += len(xs)
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), uirevision="loss",
                      xaxis_title="iteration", yaxis_title="loss (log)" if log_y else "loss",
                      legend=dict(orientation="h", y=1.12), template="plotly_white")
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig, points
