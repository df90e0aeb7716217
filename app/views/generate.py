"""Generate-page logic and figures: the session's generation state, the text so far, each step's
distribution and the attention of the query that predicted the new token.

Pure (no Streamlit). The page keeps one `GenState` in st.session_state["gen"] (as a dict, so the
shared key stays plain data) and a gpt.generate.Generator beside it; `sync_generator` decides when
that Generator must be rebuilt (another model, prompt or settings) and carries the sequence over.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import plotly.graph_objects as go
import torch

from app.views.tokens import distribution_figure, esc, light_figure, prob_color, unique_labels
from gpt.generate import Generator, Step


KEEP_ATTENTION = 32  # generated steps whose attention rows stay in the session (for Back)


@dataclass(frozen=True)
class Settings:
    """Sampling settings; top_k 0 and top_p 1.0 mean "off" (the widgets' neutral values)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1337

    def generator_kwargs(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "top_k": int(self.top_k) or None,
                "top_p": None if self.top_p >= 1.0 else float(self.top_p), "seed": int(self.seed)}


@dataclass
class GenState:
    """What survives reruns: which model and prompt, the settings, the sequence, and per generated
    token its Step (distribution, attention) and how long the step took."""

    ref: str = ""
    prompt: tuple[int, ...] = ()
    settings: Settings = field(default_factory=Settings)
    ids: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # shallow on purpose: asdict would deep-copy every Step's tensors on each rerun
        return {"ref": self.ref, "prompt": self.prompt, "settings": self.settings, "ids": list(self.ids),
                "steps": list(self.steps), "ms": list(self.ms)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "GenState":
        if not d:
            return cls()
        return cls(ref=d.get("ref", ""), prompt=tuple(d.get("prompt", ())), settings=d.get("settings", Settings()),
                   ids=list(d.get("ids", [])), steps=list(d.get("steps", [])), ms=list(d.get("ms", [])))

    @property
    def n_new(self) -> int:
        return len(self.ids) - len(self.prompt)


def sync_generator(gen: Generator | None, state: GenState, model: torch.nn.Module, ref: str,
                   prompt: Sequence[int], settings: Settings) -> tuple[Generator, GenState]:
    """The Generator and state to use on this rerun.

    - another model or prompt: start over from the prompt (generated tokens dropped);
    - other settings: a new Generator with them that keeps the tokens so far (its cache refills
      lazily on the next step);
    - no Generator (first visit, or lost): rebuilt from state.ids;
    - otherwise the same objects."""
    prompt = tuple(int(i) for i in prompt)
    if state.ref != ref or state.prompt != prompt:
        state = GenState(ref=ref, prompt=prompt, settings=settings, ids=list(prompt))
        gen = None
    elif state.settings != settings:
        state.settings = settings
        gen = None
    if gen is None or gen.model is not model or list(gen.ids) != state.ids:
        gen = Generator(model, prompt, record=True, **settings.generator_kwargs())
        gen.ids = list(state.ids)  # lazy: the next step forwards whatever the cache lacks
    return gen, state


def record_step(state: GenState, step: Step, ms: float) -> None:
    """Append a step's result (the Generator already appended the token to its ids). What the page
    never shows is not kept: the raw logits (V floats per step), and the attention rows of all but
    the last KEEP_ATTENTION steps (L*H*T floats each: 0.6 MB per GPT-2 step at T=1024)."""
    state.ids.append(step.token)
    state.steps.append(replace(step, logits=step.logits[:0]))
    state.ms.append(ms)
    old = len(state.steps) - 1 - KEEP_ATTENTION
    if old >= 0 and state.steps[old].attention is not None:
        state.steps[old] = replace(state.steps[old], attention=None)


def undo_step(state: GenState) -> None:
    """Forget the last generated token (never the prompt)."""
    if state.n_new <= 0:
        raise ValueError("nothing to undo: only the prompt is left")
    state.ids.pop()
    if state.steps:
        state.steps.pop()
        state.ms.pop()


def sequence_html(token_strs: Sequence[str], n_prompt: int, steps: Sequence[Step]) -> str:
    """The text so far as tokens: the prompt plain grey, each generated token colored by the
    probability it was drawn with (log scale, as the next-token page), forced ones outlined."""
    spans = []
    first_new = len(token_strs) - len(steps)
    for i, s in enumerate(token_strs):
        base = 'style="padding:1px 2px;margin:1px;border-radius:3px;display:inline-block;' \
               'font-family:ui-monospace,monospace;color:#111;'
        if i < max(n_prompt, first_new):
            spans.append(f'<span {base}background:#ececec" title="prompt">{esc(s)}</span>')
        else:
            step = steps[i - first_new]
            tag = " (forced)" if step.forced else ""
            outline = "outline:2px dashed #e4572e;" if step.forced else ""
            spans.append(f'<span {base}background:{prob_color(step.prob)};{outline}" '
                         f'title="{i}: p={step.prob:.4f}{tag}">{esc(s)}</span>')
        if s.endswith("⏎"):
            spans.append("<br>")
    return f'<div style="line-height:1.9" data-new-tokens="{len(steps)}">{"".join(spans)}</div>'


def alternatives(step: Step, token_str: Callable[[int], str]) -> list[tuple[int, str, float, bool]]:
    """(token id, display string, probability, chosen) for each of the step's top-k tokens that
    could have been drawn (probability > 0), most likely first; buttons force one of them. The
    chosen token is always there: a forced token from outside the top k comes last."""
    out = []
    for i, p in zip(step.top_ids.tolist(), step.top_probs.tolist()):
        if p > 0 or i == step.token:
            out.append((int(i), token_str(int(i)), float(p), int(i) == step.token))
    if not any(a[3] for a in out):
        out.append((step.token, token_str(step.token), float(step.prob), True))
    return out


def step_attention_figure(attention: torch.Tensor, ctx_strs: Sequence[str], ctx_start: int = 0,
                          max_positions: int = 128) -> go.Figure:
    """Heatmap (layer·head) x context position of the attention row of the query that predicted
    the new token: attention (L, H, Tctx) from Step.attention. Only the last `max_positions`
    context positions are drawn (the weights there are what matters for the next token)."""
    L, H, T = attention.shape
    if T != len(ctx_strs):
        raise ValueError(f"attention covers {T} positions but {len(ctx_strs)} context tokens were given")
    keep = min(T, max_positions)
    z = attention.detach().float().cpu().reshape(L * H, T)[:, T - keep:]  # (L*H, keep)
    labels = unique_labels(ctx_strs[T - keep:], start=ctx_start + T - keep)
    rows = [f"L{l} H{h}" for l in range(L) for h in range(H)]
    trace = dict(type="heatmap", z=z.numpy(), x=labels, y=rows, colorscale="Blues", zmin=0.0,
                 hovertemplate="%{y}<br>key %{x}<br>weight=%{z:.3f}<extra></extra>")
    title = "attention of the predicting query" + (f" (last {keep})" if keep < T else "")
    return light_figure([trace], dict(
        height=min(640, max(220, 14 * L * H + 120)), margin=dict(l=10, r=10, t=30, b=10),
        title=dict(text=title),
        xaxis=dict(type="category", tickfont=dict(family="monospace", size=10), tickangle=-60),
        yaxis=dict(type="category", autorange="reversed", tickfont=dict(size=10))))


@dataclass
class GenerateView:
    """What the Generate page draws: the text so far and, after a step, that step's figures."""

    text: str  # HTML
    distribution: go.Figure | None
    attention: go.Figure | None
    alternatives: list[tuple[int, str, float, bool]]


def build(state: GenState, token_str: Callable[[int], str]) -> GenerateView:
    """The page's figures for `state` (the last step's distribution and attention, if any)."""
    strs = [token_str(i) for i in state.ids]
    text = sequence_html(strs, len(state.prompt), state.steps)
    if not state.steps:
        return GenerateView(text, None, None, [])
    step = state.steps[-1]
    alts = alternatives(step, token_str)
    chosen = next((j for j, a in enumerate(alts) if a[3]), None)
    dist = distribution_figure([a[1] for a in alts], [a[2] for a in alts], chosen,
                               title=f"token {step.pos}: the distribution it was drawn from",
                               highlight_label="forced" if step.forced else "drawn")
    att = None
    if step.attention is not None:
        att = step_attention_figure(step.attention, strs[step.ctx_start:step.pos], step.ctx_start)
    return GenerateView(text, dist, att, alts)
