"""The data behind a view as files: labelled arrays (`Table`) to CSV bytes and NPZ bytes, and each
inspector page's tables computed from what the page shows (its Inspection's recording and its own
choices), so a download holds exactly the app's numbers.

Pure: no Streamlit, no caches (the download buttons live in app.components.export_bar, which calls
these only when the user clicks). NPZ files hold only numeric and unicode-string arrays, so
`np.load(path)` reads them with allow_pickle=False; for a table `name` the NPZ has `name` (the
values) and `name.<axis>` (that axis's labels, one string per index). CSV: a 1-D table is one row
per label; a 2-D table has its first axis down and its second across; higher ranks are written
long, one row per cell.
"""
from __future__ import annotations

import csv
import importlib
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from app.inspection import Inspection
    from gpt.patching import PatchResult

PAGES = ("attention", "layers", "next_token", "attribution", "patch")  # pages with tables here
# pages whose tables and notebook live in a module of their own: page -> module, imported on first use.
# Each such module has page_tables(page, insp, settings) -> list[Table] and
# page_notebook(page, insp, settings, loaded) -> bytes, with the contracts of the functions here.
ELSEWHERE = {"generate": "app.export_generation", "compare": "app.export_generation",
             "walkthrough": "app.export_generation", "timeline": "app.export_history",
             "features": "app.export_history"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Table:
    """A labelled array. values: numeric or string array of any rank; axes: one (axis name, labels)
    per dimension, len(labels) == values.shape[i]."""

    name: str
    values: np.ndarray
    axes: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"table name {self.name!r} must be a Python identifier (letters, digits, _)")
        if len(self.axes) != self.values.ndim:
            raise ValueError(f"table {self.name}: {self.values.ndim}-D values need {self.values.ndim} axes, "
                             f"got {len(self.axes)}")
        for i, (axis, labels) in enumerate(self.axes):
            if len(labels) != self.values.shape[i]:
                raise ValueError(f"table {self.name}: axis {axis!r} has {len(labels)} labels for "
                                 f"{self.values.shape[i]} values")


def table(name: str, values: Any, *axes: tuple[str, Sequence[Any]]) -> Table:
    """A Table from a tensor/array/list and (axis name, labels) pairs; labels become strings."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = values.float().numpy() if values.is_floating_point() else values.numpy()
    return Table(name, np.asarray(values), tuple((a, tuple(str(x) for x in ls)) for a, ls in axes))


# -- files ---------------------------------------------------------------------------------------------
def to_npz(tables: Sequence[Table]) -> bytes:
    """Every table and its axis labels in one compressed NPZ (no object arrays: no pickle on load)."""
    arrays: dict[str, np.ndarray] = {}
    for t in tables:
        if t.values.dtype == object:
            raise ValueError(f"table {t.name}: object arrays would need pickle; pass numbers or strings")
        arrays[t.name] = t.values
        for axis, labels in t.axes:
            arrays[f"{t.name}.{axis}"] = np.array(labels, dtype=str)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """An NPZ made by to_npz back as {name: array} (labels included), without pickle."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _cell(v: Any) -> str:
    return v if isinstance(v, str) else repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)


def to_csv(t: Table) -> bytes:
    """One table as UTF-8 CSV with its labels (module docstring: the layout per rank). Floats are
    written with repr, so they read back exactly."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    v = t.values
    if v.ndim == 1:
        w.writerow([t.axes[0][0], t.name])
        w.writerows([lab, _cell(x)] for lab, x in zip(t.axes[0][1], v.tolist()))
    elif v.ndim == 2:
        (rows_name, rows), (cols_name, cols) = t.axes
        w.writerow([f"{rows_name}\\{cols_name}", *cols])
        w.writerows([lab, *map(_cell, row)] for lab, row in zip(rows, v.tolist()))
    else:
        w.writerow([a for a, _ in t.axes] + [t.name])
        for idx in np.ndindex(*v.shape):
            w.writerow([t.axes[i][1][j] for i, j in enumerate(idx)] + [_cell(v[idx].item())])
    return buf.getvalue().encode()


def read_csv(data: bytes, ndim: int) -> tuple[list[list[str]], np.ndarray]:
    """A CSV made by to_csv of an `ndim`-D numeric table back as (labels per axis, float values)."""
    rows = list(csv.reader(io.StringIO(data.decode())))
    head, body = rows[0], rows[1:]
    if ndim == 1:
        return [[r[0] for r in body]], np.array([float(r[1]) for r in body])
    if ndim == 2:
        return [[r[0] for r in body], head[1:]], np.array([[float(x) for x in r[1:]] for r in body])
    labels = [list(dict.fromkeys(r[i] for r in body)) for i in range(ndim)]
    vals = np.array([float(r[-1]) for r in body]).reshape([len(ls) for ls in labels])
    return labels, vals


def filename(page: str, what: str, ext: str) -> str:
    """The download's file name, e.g. nanolens-attention-pattern.csv."""
    return f"nanolens-{page.replace('_', '-')}-{what.replace('_', '-')}.{ext}"


# -- each page's tables (the app's own numbers) ---------------------------------------------------------
def _heads(n_layer: int, n_head: int) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    return ("layer", [f"L{i}" for i in range(n_layer)]), ("head", [f"H{h}" for h in range(n_head)])


def attention_tables(insp: "Inspection", query: int) -> list[Table]:
    """The open head's pattern and scores (query x key), its layer's patterns, where `query` attends.
    From the Inspection's recording, or (a page that records lazily) one forward recording this layer."""
    lab, L, H = insp.labels, insp.layer, insp.head
    rec = insp.rec
    if rec is None or f"blocks.{L}.attn.hook_attn_scores" not in rec:
        from app.tracecache import record_forward

        rec = record_forward(insp.model, insp.ids, [f"blocks.{L}.attn.hook_attn_scores",
                                                    f"blocks.{L}.attn.hook_pattern"], insp.edit)
    pat = rec[f"blocks.{L}.attn.hook_pattern"][0].float()  # (H, T, T)
    return [table("pattern", pat[H], ("query", lab), ("key", lab)),
            table("scores", rec[f"blocks.{L}.attn.hook_attn_scores"][0, H].float(), ("query", lab), ("key", lab)),
            table("query_row", pat[H, query], ("key", lab)),
            table("layer_patterns", pat, ("head", [f"H{h}" for h in range(pat.size(0))]), ("query", lab), ("key", lab))]


def layers_tables(insp: "Inspection", k: int = 5) -> list[Table]:
    """Residual norms (layer x position, one table per quantity) and the logit lens at every
    position: top-k token strings and probabilities, and the actual next token's probability."""
    from gpt import analysis

    lab, n = insp.labels, insp.config.n_layer
    out = [table(f"norm_{key}", v, ("layer", [f"L{i}" for i in range(n)]), ("position", lab))
           for key, v in analysis.residual_norms(insp.rec, n).items()]  # (L, T) each
    lens = analysis.logit_lens(insp.model, insp.rec, k=k, ids=insp.ids)  # (L+1, T, k)
    ranks = ("rank", [str(r + 1) for r in range(lens.top_probs.size(-1))])
    tok = np.vectorize(insp.token_str, otypes=[str])(lens.top_ids.numpy()) if lens.top_ids.numel() else \
        np.zeros(tuple(lens.top_ids.shape), dtype=str)
    out += [table("lens_top_prob", lens.top_probs, ("row", lens.layers), ("position", lab), ranks),
            table("lens_top_token", tok, ("row", lens.layers), ("position", lab), ranks),
            table("lens_target_prob", lens.target_probs, ("row", lens.layers), ("position", lab))]
    return out


def next_token_tables(insp: "Inspection", pos: int, temperature: float) -> list[Table]:
    """The whole next-token distribution at `pos` (every vocabulary token, at `temperature`) and
    the surprise of each actual token (bits, temperature 1)."""
    from gpt import analysis
    from gpt.generate import sampling_distribution

    logits = insp.rec["logits"][0].float()  # (T, V)
    vocab = [insp.token_str(i) for i in range(logits.size(-1))]
    probs = sampling_distribution(logits[pos:pos + 1].cpu(), temperature)[0]  # (V,)
    nt = analysis.next_token(logits, insp.ids, 1.0, k=1)
    return [table("distribution", probs, ("token", [f"{i}:{s}" for i, s in enumerate(vocab)])),
            table("surprise_bits", nt.surprise_bits, ("token", insp.labels[1:]))]


def attribution_tables(insp: "Inspection", pos: int, token: int, other: int | None) -> list[Table]:
    """Direct logit attribution at `pos` of `token` (minus `other`): every component's term, and
    the heads' terms as a layer x head grid."""
    from gpt import attribution

    d = attribution.dla(insp.model, insp.ids, pos, token, other, edit=insp.edit, rec=insp.rec)
    return [table("dla", d.values, ("component", [c.label for c in d.components])),
            table("dla_heads", d.heads(insp.config.n_layer, insp.config.n_head),
                  *_heads(insp.config.n_layer, insp.config.n_head))]


def patch_tables(res: "PatchResult", labels: Sequence[str], n_head: int) -> list[Table]:
    """A patching sweep's metric per cell, raw and normalized, with its axes named (res.dims)."""
    names = {"layer": [f"L{i}" for i in range(res.values.size(0))], "head": [f"H{h}" for h in range(n_head)],
             "position": list(labels)}
    axes = [(d, names[d]) for d in res.dims]
    out = [table("patch", res.values, *axes)]
    try:
        out.append(table("patch_normalized", res.normalized(), *axes))
    except ValueError:  # clean and corrupted give the same metric: nothing to normalize against
        pass
    return out


def _labels(loaded: Any, ids: Sequence[int]) -> list[str]:
    from app.views.tokens import token_strs, unique_labels

    return unique_labels(token_strs(loaded.tokenizer.token_str, ids))


def page_tables(page: str, insp: "Inspection | None", settings: Mapping[str, Any]) -> list[Table]:
    """The tables of `page` (one of PAGES) for the Inspection and the page's settings (as
    app.notebooks takes them): attention {query}, next_token {pos, temperature}, attribution {pos,
    token, other}, patch {result, and labels + n_head or loaded + clean}."""
    s = settings
    if page in ELSEWHERE:
        return importlib.import_module(ELSEWHERE[page]).page_tables(page, insp, settings)
    if page == "attention":
        return attention_tables(insp, int(s["query"]))
    if page == "layers":
        return layers_tables(insp)
    if page == "next_token":
        return next_token_tables(insp, int(s["pos"]), float(s.get("temperature", 1.0)))
    if page == "attribution":
        return attribution_tables(insp, int(s["pos"]), int(s["token"]), s.get("other"))
    if page == "patch":
        loaded = s.get("loaded")
        labels = s.get("labels") or _labels(loaded, s["clean"])
        return patch_tables(s["result"], labels, int(s.get("n_head") or loaded.config.n_head))
    raise ValueError(f"no tables for page {page!r}; pages with tables: {', '.join(PAGES + tuple(ELSEWHERE))}")
