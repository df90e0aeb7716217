"""Token-level figures: axis labels, colored token strips (HTML) and next-token distributions.

Pure functions (no Streamlit): token strings and tensors in, HTML strings or plotly figures out.
Token text always goes through `esc`, because the strips are rendered with
st.markdown(unsafe_allow_html=True), where a raw "<", "*", "$" or ":" would be read as HTML,
markdown, LaTeX or a Streamlit directive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import plotly.graph_objects as go
from plotly.colors import get_colorscale, sample_colorscale
import torch

from gpt.analysis import next_token
from gpt.generate import sampling_distribution
from gpt.tokenizer import VISIBLE

if TYPE_CHECKING:
    from app.inspection import Inspection

NAMES = ("logits",)  # what the Next-token page records
# Probability -> background color for token strips: red (surprising) .. yellow .. green (expected),
# light enough that black text stays readable on every step.
_STOPS = ((0.0, (248, 150, 150)), (0.5, (250, 226, 140)), (1.0, (150, 220, 150)))
LOG10_FLOOR = -4.0  # probabilities below 1e-4 all get the reddest color
_MD_SPECIAL = "$*_`[]\\~#|:<>&{}"  # markdown, LaTeX ($) and Streamlit directive (:red[...]) syntax
FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,monospace;"
# What each whitespace glyph of gpt.tokenizer.VISIBLE stands for (a test checks none is missing).
GLYPH_NAMES = {" ": "space", "\n": "newline", "\t": "tab", "\r": "carriage return"}
# Attention weight has its own palette, the heatmaps' Blues (light = 0); red..green means surprise.
WEIGHT_SCALE = get_colorscale("Blues")


def light_figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    """A plotly Figure from plain trace and layout dicts, skipping plotly's per-property validation:
    that costs ~5 ms per 256x256 heatmap and every figure is rebuilt on each rerun (the page budget
    is 150 ms). tests/test_views_inspect.py validates every builder's output with
    go.Figure(fig.to_dict()), so a typo still fails a test.

    Named colorscales are resolved here as plotly (Python) resolves them: plotly.js has fewer
    names ("Purples" is unknown to it) and draws some of the shared ones reversed ("Blues")."""
    for trace in data:
        if isinstance(trace.get("colorscale"), str):
            trace["colorscale"] = get_colorscale(trace["colorscale"])
    return go.Figure({"data": data, "layout": layout}, _validate=False)


def esc(text: str) -> str:
    """`text` safe inside st.markdown(unsafe_allow_html=True): HTML-escaped, and every markdown /
    LaTeX / directive character written as a numeric entity so it stays literal."""
    return "".join(f"&#{ord(c)};" if c in _MD_SPECIAL or c in "\"'" else c for c in text)


def md_label(text: str) -> str:
    """`text` safe as a Streamlit widget label (labels are markdown, with LaTeX and :directives:):
    every ASCII punctuation character backslash-escaped, which CommonMark reads as the literal."""
    return "".join("\\" + c if c.isascii() and not c.isalnum() and not c.isspace() else c for c in text)


def glyph_legend() -> str:
    """The one legend of how a token is drawn, on every page that draws tokens (HTML, for
    st.markdown(unsafe_allow_html=True)): each whitespace glyph of gpt.tokenizer.visible() as a token
    chip with its name, the code-point and byte forms, and the position prefix of axis labels."""
    def chip(glyph: str, name: str) -> str:
        return _span(glyph, "#e6e6e6", name) + f" {esc(name)}"

    parts = [chip(VISIBLE[c], GLYPH_NAMES[c]) for c in VISIBLE]
    parts += [chip("<U+0007>", "another control character"),
              chip("<0xE2>", "one byte of a character split across BPE tokens"),
              chip("5:·", "on an axis: position 5, token ·")]
    return ('<div style="font-size:0.85em;color:#555"><b>Reading tokens:</b> ' + "&emsp;".join(parts)
            + "</div>")


def unique_labels(token_strs: Sequence[str], start: int = 0) -> list[str]:
    """Axis categories for tokens: "3:·the". The position prefix makes repeated tokens distinct
    (plotly merges equal category labels into one row/column)."""
    return [f"{start + i}:{s}" for i, s in enumerate(token_strs)]


def prob_color(p: float, log: bool = True) -> str:
    """Background color for probability `p` in [0, 1]. log=True spreads 1e-4..1 evenly, which is
    where a language model's probabilities live; log=False is linear."""
    p = min(max(float(p), 0.0), 1.0)
    if log:
        x = (max(math.log10(p), LOG10_FLOOR) - LOG10_FLOOR) / -LOG10_FLOOR if p > 0 else 0.0
    else:
        x = p
    for (x0, c0), (x1, c1) in zip(_STOPS, _STOPS[1:]):
        if x <= x1:
            t = (x - x0) / (x1 - x0)
            r, g, b = (round(a + (bb - a) * t) for a, bb in zip(c0, c1))
            return f"rgb({r},{g},{b})"
    return "rgb({},{},{})".format(*_STOPS[-1][1])


def weight_color(x: float) -> tuple[str, str]:
    """(background, text colour) for an attention weight `x` in [0, 1] on the Blues palette the
    heatmaps use; white text once the blue gets dark."""
    x = min(max(float(x), 0.0), 1.0)
    return sample_colorscale(WEIGHT_SCALE, [x])[0], "#fff" if x > 0.55 else "#111"


def _span(text: str, bg: str, title: str, extra: str = "", fg: str = "#111") -> str:
    return (f'<span title="{esc(title)}" style="background:{bg};color:{fg};padding:1px 2px;'
            f'margin:1px;border-radius:3px;display:inline-block;{FONT}{extra}">{esc(text)}</span>')


def surprise_html(token_strs: Sequence[str], probs: Sequence[float | None]) -> str:
    """The prompt as colored tokens: token i's background shows the probability the model gave it
    (from position i-1). `probs[i]` is None for the first token (nothing predicted it): grey.
    Hover (title) gives position, probability and surprise in bits."""
    if len(token_strs) != len(probs):
        raise ValueError(f"{len(token_strs)} tokens but {len(probs)} probabilities")
    spans = []
    for i, (s, p) in enumerate(zip(token_strs, probs)):
        if p is None:
            spans.append(_span(s, "#e6e6e6", f"{i}: {s!r} (first token, nothing predicted it)"))
        else:
            bits = -math.log2(max(p, 1e-12))
            spans.append(_span(s, prob_color(p), f"{i}: {s!r}  p={p:.4f}  surprise={bits:.2f} bits"))
        if s.endswith("⏎"):
            spans.append("<br>")
    return f'<div style="line-height:1.9">{"".join(spans)}</div>'


def surprise_legend_html() -> str:
    """A legend for `surprise_html`: sample swatches from p=1e-4 to p=1."""
    cells = [_span(f"p={p:g}", prob_color(p), f"probability {p:g}") for p in (1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0)]
    return ('<div style="font-size:0.85em">surprising ' + "".join(cells) + " expected"
            ' &nbsp; <span style="background:#e6e6e6;padding:1px 4px">first token</span></div>')


def attention_html(token_strs: Sequence[str], weights: torch.Tensor, query: int) -> str:
    """Where one query attends: tokens 0..query colored by attention weight on the Blues palette
    (linear, the row's max = darkest; attention_legend_html says so with numbers); later tokens
    (masked) are faded; the query itself is outlined."""
    w = weights.detach().float().cpu()
    top = float(w[: query + 1].max()) if query >= 0 and w.numel() else 1.0
    spans = []
    for i, s in enumerate(token_strs):
        if i > query:
            spans.append(_span(s, "#f4f4f4", f"{i}: {s!r} (after the query: masked)", "opacity:0.45;"))
            continue
        a = float(w[i])
        outline = "outline:2px solid #1f4fd8;" if i == query else ""
        bg, fg = weight_color(a / top if top > 0 else 0.0)
        spans.append(_span(s, bg, f"{i}: {s!r}  attention={a:.4f}", outline, fg))
        if s.endswith("⏎"):
            spans.append("<br>")
    return f'<div style="line-height:1.9">{"".join(spans)}</div>'


def attention_legend_html(weights: torch.Tensor, query: int) -> str:
    """The legend of `attention_html` for the same row: swatches from weight 0 to the row's largest
    weight (the darkest blue), and what uniform attention over the query's keys would be, so an
    evenly spread row is not read as strong attention; a faded "later: masked" chip when the row
    has keys after the query."""
    later = weights.numel() > query + 1  # keys after the query exist (and are drawn faded)
    w = weights.detach().float().cpu()[: query + 1]
    top = float(w.max()) if w.numel() else 0.0
    cells = []
    for x in (0.0, 0.25, 0.5, 0.75, 1.0):
        bg, fg = weight_color(x)
        cells.append(_span(f"{x * top:.3f}", bg, f"attention weight {x * top:.4f}", fg=fg))
    n = query + 1
    return ('<div style="font-size:0.85em">attention weight ' + "".join(cells) +
            f" (darkest = this row's largest; uniform over its {n} key{'s' if n > 1 else ''} would be "
            f"{1 / n:.3f} each)" + (' &nbsp; <span style="background:#f4f4f4;opacity:0.6;padding:1px 4px">'
                                    "later: masked</span>" if later else "") + "</div>")


def distribution_figure(token_strs: Sequence[str], probs: Sequence[float], chosen: int | None = None,
                        title: str = "", highlight_label: str = "chosen") -> go.Figure:
    """Horizontal bars for a top-k distribution, most likely on top. `chosen` is an index into the
    lists whose bar is colored and tagged (the sampled token, or the actual next token)."""
    if len(token_strs) != len(probs):
        raise ValueError(f"{len(token_strs)} tokens but {len(probs)} probabilities")
    labels = [f"{i + 1}. {s}" for i, s in enumerate(token_strs)]
    colors = ["#e4572e" if i == chosen else "#4c78a8" for i in range(len(labels))]
    text = [f"{p:.1%}" + (f"  ← {highlight_label}" if i == chosen else "") for i, p in enumerate(probs)]
    bar = dict(type="bar", x=[float(p) for p in probs], y=labels, orientation="h", marker=dict(color=colors),
               text=text, textposition="outside", cliponaxis=False,
               hovertemplate="%{y}<br>p=%{x:.4f}<extra></extra>")
    layout = dict(height=max(180, 26 * len(labels) + 60), margin=dict(l=10, r=90, t=40 if title else 10, b=30),
                  # room for the text labels; a flat distribution still gets visible bars
                  xaxis=dict(range=[0, min(1.0, 1.35 * max(map(float, probs), default=1.0) + 0.02)],
                             tickformat=".0%", title=dict(text="probability")),
                  yaxis=dict(autorange="reversed", type="category", tickfont=dict(family="monospace")))
    if title:
        layout["title"] = dict(text=title)
    return light_figure([bar], layout)


def attention_bar_figure(labels: Sequence[str], weights: torch.Tensor, query: int) -> go.Figure:
    """Bars of one query's attention weights over the keys 0..query."""
    w = weights.detach().float().cpu()[: query + 1]
    bar = dict(type="bar", x=list(labels[: query + 1]), y=w.numpy(), marker=dict(color="#4c78a8"),
               hovertemplate="key %{x}<br>attention=%{y:.4f}<extra></extra>")
    return light_figure([bar], dict(
        height=200, margin=dict(l=10, r=10, t=10, b=10),
        yaxis=dict(title=dict(text="weight"), rangemode="tozero"),
        xaxis=dict(type="category", tickfont=dict(family="monospace"))))


def token_strs(token_str: Callable[[int], str], ids: Sequence[int]) -> list[str]:
    """Display strings of `ids` (tokenizer.token_str of each)."""
    return [token_str(int(i)) for i in ids]


def distribution_at(logits: torch.Tensor, ids: Sequence[int], pos: int, temperature: float = 1.0,
                    k: int = 10) -> tuple[list[int], list[float], int | None]:
    """The top-k next-token distribution at position `pos` of logits (1, T, V) or (T, V), through
    gpt.generate.sampling_distribution (what sampling would draw from at this temperature).
    Returns (top ids, top probabilities, index in the top-k of the actual next token ids[pos+1],
    or None when it is not among them or pos is the last position)."""
    row = logits[0, pos] if logits.dim() == 3 else logits[pos]  # (V,)
    probs = sampling_distribution(row.detach().float().cpu(), temperature)
    top_p, top_i = torch.topk(probs, min(k, probs.numel()))
    top_ids = top_i.tolist()
    actual = int(ids[pos + 1]) if pos + 1 < len(ids) else None
    return top_ids, top_p.tolist(), top_ids.index(actual) if actual in top_ids else None


@dataclass
class NextTokenView:
    """Everything the Next-token page draws for one (prompt, position, temperature, k)."""

    strip: str  # the prompt colored by surprise (HTML)
    surprise_bits: list[float]  # per predicted token (positions 1..T-1), at temperature 1
    mean_bits: float | None  # their mean (None for a one-token prompt)
    distribution: go.Figure  # the top-k at the chosen position
    top: list[tuple[str, float]]  # the same as (token string, probability)


def build_next_token(insp: "Inspection", pos: int, temperature: float = 1.0, k: int = 10) -> NextTokenView:
    """The page's figures from an Inspection recording NAMES (the logits, (1, T, V)). The strip uses
    the model's own probabilities (temperature 1); the distribution at `pos` uses `temperature`."""
    logits, ids, strs, token_str = insp.rec["logits"], insp.ids, insp.strs, insp.token_str
    nt = next_token(logits, ids, temperature=1.0, k=1)
    probs: list[float | None] = [None] + nt.actual_prob.tolist()
    top_ids, top_probs, actual = distribution_at(logits, ids, pos, temperature, k)
    names = [token_str(i) for i in top_ids]
    nxt = f"actual next {strs[pos + 1]!r}" if pos + 1 < len(strs) else "end of prompt"
    title = f"after {pos}:{strs[pos]} ({nxt}), temperature {temperature:g}"
    bits = nt.surprise_bits.tolist()
    return NextTokenView(strip=surprise_html(strs, probs), surprise_bits=bits,
                         mean_bits=sum(bits) / len(bits) if bits else None,
                         distribution=distribution_figure(names, top_probs, actual, title=title,
                                                          highlight_label="actual next"),
                         top=list(zip(names, top_probs)))


@dataclass
class EditCompareView:
    """The Next-token page's extra figures while an edit is active: the original and edited
    distributions at one position, and Δloss per predicted token (edited minus original, nats)."""

    original: go.Figure
    edited: go.Figure
    dloss: list[float]  # per predicted token, positions 1..T-1
    dloss_figure: go.Figure


def _token_loss(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Cross-entropy of each actual next token, (T-1,), from logits (1, T, V) or (T, V)."""
    lg = (logits[0] if logits.dim() == 3 else logits).detach().float().cpu()  # (T, V)
    tgt = torch.tensor([int(i) for i in ids[1:]], dtype=torch.long)  # (T-1,)
    return torch.nn.functional.cross_entropy(lg[:-1], tgt, reduction="none")


def build_edit_compare(original: torch.Tensor, edited: torch.Tensor, ids: Sequence[int], strs: Sequence[str],
                       token_str: Callable[[int], str], pos: int, temperature: float = 1.0,
                       k: int = 10, labels: Sequence[str] | None = None) -> EditCompareView:
    """Original vs edited logits ((1, T, V) each) of the same prompt: both top-k distributions at
    `pos` (at `temperature`) and Δloss = edited - original loss of each actual next token."""
    figs = []
    for what, lg in (("original", original), ("edited", edited)):
        top_ids, top_probs, actual = distribution_at(lg, ids, pos, temperature, k)
        figs.append(distribution_figure([token_str(i) for i in top_ids], top_probs, actual,
                                        title=f"{what} model", highlight_label="actual next"))
    d = (_token_loss(edited, ids) - _token_loss(original, ids)).tolist() if len(ids) > 1 else []
    xs = list(labels[1:] if labels is not None else unique_labels(list(strs[1:]), 1))
    bar = dict(type="bar", x=xs, y=d, marker=dict(color=["#d62728" if v > 0 else "#2ca02c" for v in d]),
               hovertemplate="%{x}<br>Δloss=%{y:+.3f} nats<extra></extra>")
    fig = light_figure([bar], dict(height=220, margin=dict(l=10, r=10, t=10, b=10),
                                   yaxis=dict(title=dict(text="Δloss (nats)")),
                                   xaxis=dict(type="category", tickfont=dict(family="monospace"))))
    return EditCompareView(original=figs[0], edited=figs[1], dloss=d, dloss_figure=fig)
