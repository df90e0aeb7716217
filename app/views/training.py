"""What the Train page shows, as pure functions: the form's fields, values and corpus default, the
estimate's cells and caption, what an action on a run says, the runs table, progress (tokens/s,
ETA), the live loss chart (downsampled), the sample text and when to draw a new one. No Streamlit
here and no trainers/ import: the page passes in what it read (estimates and step costs are
trainers.estimate's Estimate and StepCost).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import plotly.graph_objects as go

if TYPE_CHECKING:
    from gpt.model import GPT
    from gpt.tokenizer import Tokenizer

# the TrainConfig fields the page offers, in display order: (field, label, kind)
FIELDS = (("n_layer", "Layers", int), ("n_head", "Heads", int), ("n_embd", "Embedding size", int),
          ("block_size", "Context (block_size)", int), ("batch_size", "Batch size", int),
          ("max_iters", "Iterations", int), ("learning_rate", "Learning rate", float),
          ("dropout", "Dropout", float), ("eval_interval", "Eval every", int))
FIELD_NAMES = tuple(name for name, _label, _kind in FIELDS)
DATA_SOURCES = {"shakespeare": "Tiny Shakespeare", "python-docs": "Python docs (offline, always there)",
                "shakespeare-repeats": "Tiny Shakespeare with repeats (grows an induction head)",
                "upload": "Upload a .txt"}
PRESET_HELP = ("tiny: seconds; cpu-small: nanoGPT's laptop settings; baby: nanoGPT's shakespeare_char; "
               "gpt2: nanoGPT's GPT-2 124M (GPU work; GPT-2's BPE tokenizer)")
TOKENIZER_HELP = "char: one token per character (small vocabulary); gpt2: GPT-2's BPE (50257 tokens)"
UPLOAD_FIRST = "Upload a .txt file to train on (or pick a built-in corpus)."
MAX_POINTS = 1500


def number_args(name: str, kind: type, default: float) -> dict[str, Any]:
    """st.number_input arguments for a form field: whole numbers step by 1, the learning rate
    shows five decimals and steps by 1e-4, other floats (dropout) two decimals and 0.05."""
    if kind is int:
        return dict(min_value=0, value=int(default), step=1)
    lr = name == "learning_rate"
    return dict(min_value=0.0, value=float(default), format="%.5f" if lr else "%.2f",
                step=1e-4 if lr else 0.05)


def form_values(store: Mapping[str, Any], prefix: str, preset: str, defaults: Mapping[str, Any],
                tokenizer: str = "char") -> dict[str, Any]:
    """TrainConfig.from_preset's keyword arguments (all but the preset) from the form's widget values
    in `store`, under `prefix` + "data", "name", "tokenizer_<preset>" and "<field>_<preset>" (the
    fields and the tokenizer are keyed by preset); `defaults` (the preset's values of FIELD_NAMES)
    and `tokenizer` (the preset's) fill in what the form does not hold yet. ValueError (UPLOAD_FIRST) while "upload" is chosen and no file is."""
    data = store.get(prefix + "data", "python-docs")
    if data == "upload" and store.get(prefix + "upload") is None:
        raise ValueError(UPLOAD_FIRST)
    values = {f: store.get(f"{prefix}{f}_{preset}", v) for f, v in defaults.items()}
    return dict(data=data, tokenizer=store.get(f"{prefix}tokenizer_{preset}", tokenizer),
                name=(store.get(prefix + "name") or "").strip() or None, **values)


def _count(v: Any) -> int | None:
    """v when it is a whole number >= 0 (not a bool), else None: a run folder may hold anything."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _number(v: Any) -> float | None:
    """v when it is a finite number (not a bool), else None."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def resume_args(status: dict[str, Any]) -> dict[str, Any]:
    """st.number_input arguments for "resume until iter": past where the run is, and by default
    its old target, or twice its iterations when it reached that target."""
    it, mx = _count(status.get("iter")) or 0, _count(status.get("max_iters")) or 0
    return dict(min_value=it + 1, value=mx if mx > it else 2 * max(it, 1))


def default_data(bundled: str | None, offline: str) -> str:
    """The Data field's first value: the corpus the bundled model was trained on (`bundled`, read
    from its run's config.json) when that is a built-in corpus available without the network,
    else `offline` (trainers.data.default_data(): Tiny Shakespeare when it is there offline, else
    Python docs). Python docs is always there; Tiny Shakespeare only when `offline` says so."""
    if bundled is not None and bundled in (offline, "python-docs"):
        return bundled
    return offline


def estimate_cells(est: Any) -> list[tuple[str, str]]:
    """(label, value) of the four estimate metrics, from a trainers.estimate.Estimate (its
    seconds None: the step could not be timed)."""
    return [("Parameters", f"{est.params / 1e6:.2f}M"), ("Memory (training)", human_bytes(est.memory_bytes)),
            ("Estimated time", human_duration(est.seconds)), ("Tokens", f"{est.tokens / 1e6:.2f}M")]


def human_step(s: float) -> str:
    """A step's duration: 0.0213 -> "21 ms", 1.5 -> "1.5 s", 75 -> "1 min 15 s"."""
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.1f} s" if s < 60 else human_duration(s)


def estimate_caption(est: Any, cost: Any | None, error: str | None = None) -> str:
    """How the time was found, from the Estimate and the trainers.estimate.StepCost it came from;
    or why there is none (`error`)."""
    if cost is None or est.seconds is None:
        return f"No time estimate: {error or 'the step was not timed'}. Starting a run is not affected."
    threads = f"{cost.threads} thread{'s' if cost.threads != 1 else ''}"
    rows = "" if cost.rows == cost.batch_size else f" (at {cost.rows} of its {cost.batch_size} rows, scaled)"
    return (f"Timed here: {cost.steps} training steps of this model on {threads}, as the run will use"
            f"{rows}: {human_step(cost.micro_s + cost.opt_s)} a step, "
            f"{est.tokens_per_s:,.0f} tok/s. Evaluations and checkpoints add {human_step(est.eval_seconds)}, "
            f"starting the run's process {human_step(est.startup_seconds)}.")


def human_bytes(n: float) -> str:
    """512 -> "512 B", 3 * 2**20 -> "3.0 MiB"; GiB is the largest unit."""
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
def state_label(r: dict[str, Any]) -> str:
    """A run's state for the table: an unreadable run shows why ("unreadable: <reason>")."""
    state = r.get("state") if isinstance(r.get("state"), str) else "unknown"
    if state == "unreadable" and isinstance(r.get("message"), str):
        return r["message"].split("; delete the run")[0][:120]
    return state


def run_rows(runs: Sequence[dict[str, Any]], now: float | None = None,
             logged_val: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per run (trainers.runs.list_runs dicts) for the runs table; a value of the wrong
    type shows as "—" rather than failing. Val loss: status.json's, else the last one the run
    logged (`logged_val` by run name: a resumed run's status has none until it evaluates), else
    its best, else "—"."""
    now = time.time() if now is None else now
    out = []
    for r in runs:
        it, mx = _count(r.get("iter")), _count(r.get("max_iters"))
        val = _number(r.get("val_loss"))
        for fallback in ((logged_val or {}).get(str(r.get("name"))), r.get("best_val_loss")):
            val = _number(fallback) if val is None else val
        ts = _number(r.get("updated_ts"))
        out.append({"run": str(r.get("name")), "state": state_label(r),
                    "iter": f"{it if it is not None else '—'} / {mx if mx is not None else '—'}",
                    "val loss": f"{val:.4f}" if val is not None else "—",
                    "preset": str(r.get("preset") or "—"), "data": str(r.get("data") or "—"),
                    "updated": f"{human_duration(now - ts)} ago" if ts is not None else "—"})
    return out


@dataclass(frozen=True)
class Progress:
    iter: int
    max_iters: int
    fraction: float  # 0..1
    tokens_per_s: float | None
    eta_s: float | None


def progress(status: dict[str, Any], logged_tokens_per_s: float | None = None,
             now: float | None = None) -> Progress:
    """Where a run is: status.json's iter/max_iters/tokens_per_s/eta_s, falling back to the last
    logged tokens_per_s (trainers.metrics.Metrics.last_tokens_per_s). The ETA is the trainer's,
    from the run's own measured step and eval times (None for its first steps), less the time
    since status.json was written (it is rewritten every log interval). A run that is not going
    has no ETA."""
    it, mx = _count(status.get("iter")) or 0, _count(status.get("max_iters")) or 0
    tps = _number(status.get("tokens_per_s"))
    if tps is None:
        tps = logged_tokens_per_s
    eta = _number(status.get("eta_s")) if status.get("state") in ("starting", "running", "stopping") else None
    written = _number(status.get("updated_ts"))
    if eta is not None and written is not None:
        eta = max(0.0, eta - max(0.0, (time.time() if now is None else now) - written))
    return Progress(iter=it, max_iters=mx, fraction=min(1.0, it / mx) if mx else 0.0,
                    tokens_per_s=tps, eta_s=eta)


def status_caption(state: str, prog: Progress, points: int, live: bool) -> str:
    """The live panel's one-line summary (tests/e2e read it: "<state> · iter i / n · p points")."""
    tps = f"{prog.tokens_per_s:,.0f} tok/s" if prog.tokens_per_s else "— tok/s"
    return (f"**{state}** · iter {prog.iter} / {prog.max_iters} · {points} points · {tps} · "
            f"ETA {human_duration(prog.eta_s) if live else '—'}")


def status_note(status: dict[str, Any]) -> tuple[str, str] | None:
    """("error" | "info", the run's own message) for a run that failed, was interrupted, stopped,
    or cannot be read."""
    msg = status.get("message")
    if msg and isinstance(msg, str) and status.get("state") in ("failed", "interrupted", "stopped", "unreadable"):
        return ("error" if status["state"] in ("failed", "unreadable") else "info"), msg
    return None


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


def loss_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], log_y: bool = False,
                max_points: int = MAX_POINTS) -> tuple[go.Figure, int]:
    """(figure, number of points drawn) from {"train" | "val" | "train (eval)": (iters, losses)} (a missing series is empty):
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


# -- the page's small decisions --------------------------------------------------------------------
def threads_caption(threads: int, cores: int) -> str:
    """What a run takes of this machine, e.g. "Training uses 1 thread, leaving 1 core for the UI."."""
    left = max(cores - threads, 0)
    return (f"Training uses {threads} thread{'s' if threads != 1 else ''}, leaving "
            f"{left} core{'s' if left != 1 else ''} for the UI.")


def run_message(action: str, name: str, label: str | None = None) -> tuple[str, str]:
    """(level, text) the page says once `action` on run `name` went through: "start", "stop",
    "resume", "delete", or "inspect" with `label` the model every page inspects now (None: the run
    has no checkpoint yet, so nothing changed)."""
    if action == "inspect":
        return (("success", f"Every page now inspects {label}.") if label is not None else
                ("warning", "This run has no checkpoint yet: it writes one at its first evaluation."))
    return {"start": ("success", f"Started run {name}: it trains in the background, even after you leave."),
            "stop": ("info", f"Asked {name} to stop: it finishes its step and saves latest/ first."),
            "resume": ("success", f"Resumed {name}."),
            "delete": ("success", f"Deleted {name}.")}[action]


def sample_text(model: "GPT", tokenizer: "Tokenizer", n_tokens: int = 100, seed: int = 1337) -> str:
    """~n_tokens of text generated from a newline (char models) or <|endoftext|> (GPT-2)."""
    from gpt.generate import generate

    if tokenizer.kind == "gpt2":
        start, n_tokens = [50256], max(1, n_tokens // 3)  # a BPE token is ~3 characters
    else:
        start = tokenizer.encode("\n", errors="drop") or [0]
    ids = generate(model, start, n_tokens, temperature=0.8, seed=seed)
    return tokenizer.decode(ids[len(start):])


def next_sample(shown: tuple | None, ckpt: str, it: int, now: float, every_s: float,
                draw: Callable[[], str]) -> tuple[tuple, bool]:
    """(the sample to show now as (checkpoint, iter, when, text), whether to keep it as `shown`
    for the next call). A new sample costs a checkpoint load and 100 tokens on the server, so a
    live run that evaluates every second gets one at most every `every_s` seconds; `shown` stays
    while its checkpoint and iteration do. Pass every_s=0 once the run has ended: nothing polls
    then, so a throttled sample would stay stale for good (issue 12: "iter 250" under a run
    finished at 300). A failed draw (a checkpoint replaced mid-read) is shown but not kept, so
    the next call tries again."""
    if shown and shown[0] == ckpt and (shown[1] == it or now - shown[2] < every_s):
        return shown, True
    try:
        return (ckpt, it, now, draw()), True
    except Exception as e:  # anything a load can raise; the page must keep going
        return (ckpt, it, now, f"(no sample yet: {type(e).__name__})"), False


def is_within(ref: str | None, folder: str | Path) -> bool:
    """Whether the model reference `ref` is `folder` or lies inside it (a run's checkpoint)."""
    if not ref:
        return False
    r, f = Path(ref).resolve(), Path(folder).resolve()
    return r == f or f in r.parents

