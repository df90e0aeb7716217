"""Information-flow routes (Ferrando & Voita 2024, "Information flow routes", arXiv 2403.00824):
which heads, source tokens and MLPs each block's output at each position came from.

Each block has two nodes per position i, as in the paper and Meta's LLM Transparency Tool (LLM-TT):
- the residual after attention, y = resid_mid[i] = resid_pre[i] + attn_out[i]. Its parts are the
  residual x = resid_pre[i] and, for every head h and source token j, what h wrote at i from j:
  z[j, h] = A_h[i, j] * W_O[h] v_h[j] (v with its bias; the attention output bias b_O is in y
  but no part, having no source);
- the residual after the MLP, y = resid_post[i] = resid_mid[i] + mlp_out[i], with the parts
  resid_mid[i] and mlp_out[i].
A part's share of its node is the paper's proximity, normalised over the node's parts:
    proximity(z, y) = max(||y||_1 - ||y - z||_1, 0),   share(z) = proximity(z) / sum_parts proximity
so the shares at every node sum to 1. (In the degenerate case where no part has a positive
proximity, e.g. y = 0, the residual gets the whole share.) By the triangle inequality
proximity(z, y) <= ||z||_1; the computation clamps to that bound, so a part that is exactly zero
(a zero-ablated head or MLP) gets exactly 0. Edges to a token's own earlier node sum the heads.

Under an edit everything comes from the edited recording (pattern, v, resid_*, mlp_out). Where the
edit changes a head's output after the pattern (attn.hook_z or attn.hook_result), the per-source
parts are the edit applied to each source's slice (the source axis taken as the batch): exact for
edits linear in the activation, as the sidebar's zero and mean-over-the-prompt ablations are. Where
the slices do not add up to the edited output (a patch, an added vector), that head's edited output
at that position is split over the sources by its attention weights instead.

Speed: the L1 distances are the cost, O(L * T^2 / 2 * H * C); `cost` estimates it before running.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch

from gpt.record import Recorder

if TYPE_CHECKING:
    from gpt.edit import Edits
    from gpt.model import GPT

NEEDS = ["blocks.*.hook_resid_pre", "blocks.*.hook_resid_mid", "blocks.*.hook_resid_post",
         "blocks.*.attn.hook_pattern", "blocks.*.attn.hook_v", "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out"]
CHUNK = 1 << 20  # floats of decomposed attention held at once (4 MiB): cache-friendly, bounded memory
DEFAULT_THRESHOLD = 0.04  # LLM-TT's slider runs 0..0.1


class Node(NamedTuple):
    """A node of the graph: kind "embed" (layer -1: the token's embedding), "mid" (after block
    `layer`'s attention), "mlp" (block `layer`'s MLP) or "out" (block `layer`'s output), at `pos`."""
    kind: str
    layer: int
    pos: int


class Edge(NamedTuple):
    """src -> dst carrying `weight` (a share of dst, or for the MLP's two edges the MLP's share of
    the block output). kind: "attn" (a source token through the heads; `heads` holds each head's
    share), "resid" (the residual stream), "mlp" (into and out of an MLP node)."""
    src: Node
    dst: Node
    weight: float
    kind: str
    heads: tuple[float, ...] = ()


@dataclass
class Graph:
    """The routes to the prediction at `pos`: every edge above `threshold` reachable backwards from
    the output node ("out", L-1, pos). nodes are sorted layer by layer (embed, then per layer mid,
    mlp, out), then by position; edges likewise by their destination."""
    nodes: list[Node]
    edges: list[Edge]
    pos: int
    threshold: float


@dataclass
class Contributions:
    """Shares of every node (see the module docstring), batch element 0, float32 on the CPU:
    attn (L, T, T, H): [l, i, j, h] the share of resid_mid[l, i] written by head h from source j;
    attn_resid (L, T): the share of resid_mid[l, i] from resid_pre[l, i];
    mlp (L, T) and mlp_resid (L, T): the shares of resid_post[l, i] from the MLP and from resid_mid.
    For each (l, i): attn[l, i].sum() + attn_resid[l, i] == 1 and mlp + mlp_resid == 1."""
    attn: torch.Tensor
    attn_resid: torch.Tensor
    mlp: torch.Tensor
    mlp_resid: torch.Tensor
    edited: bool = False
    split_by_attention: list[int] = field(default_factory=list)  # layers where a non-linear edit was split

    @property
    def T(self) -> int:
        return self.attn.size(1)

    def head_map(self, layer: int, head: int) -> torch.Tensor:
        """Head `head` of `layer`'s contribution map (T, T), shaped as its attention pattern: [i, j]
        is the share of the residual at query i that this head wrote from source token j, i.e. the
        attention weight A[i, j] scaled by how far A[i, j] * W_O v[j] moves the output."""
        return self.attn[layer, :, :, head]

    def graph(self, threshold: float = DEFAULT_THRESHOLD, pos: int = -1) -> Graph:
        """The routes that lead to the prediction at `pos` (negative counts from the end): start at
        the last block's output at pos and walk edges backwards, keeping those whose weight is
        above `threshold` (LLM-TT's build_paths_to_predictions)."""
        L, T = self.attn.size(0), self.T
        if not -T <= pos < T:
            raise ValueError(f"position {pos} is outside the prompt's {T} tokens (0..{T - 1})")
        pos %= T
        tok = self.attn.sum(dim=-1)  # (L, T, T) shares summed over heads
        nodes: set[Node] = {Node("out", L - 1, pos)}
        edges: list[Edge] = []
        frontier = {pos}
        for l in range(L - 1, -1, -1):
            mids: set[int] = set()
            below: set[int] = set()
            for i in sorted(frontier):  # out(l, i) <- mid(l, i) directly and through the MLP
                out, mid, mlp = Node("out", l, i), Node("mid", l, i), Node("mlp", l, i)
                if self.mlp_resid[l, i] > threshold:
                    edges.append(Edge(mid, out, float(self.mlp_resid[l, i]), "resid"))
                    mids.add(i)
                if self.mlp[l, i] > threshold:
                    w = float(self.mlp[l, i])
                    edges += [Edge(mlp, out, w, "mlp"), Edge(mid, mlp, w, "mlp")]
                    nodes.add(mlp)
                    mids.add(i)
            for i in sorted(mids):  # mid(l, i) <- the block's input at i and at every source j
                mid = Node("mid", l, i)
                nodes.add(mid)
                src = (lambda j: Node("out", l - 1, j)) if l > 0 else (lambda j: Node("embed", -1, j))
                if self.attn_resid[l, i] > threshold:
                    edges.append(Edge(src(i), mid, float(self.attn_resid[l, i]), "resid"))
                    below.add(i)
                for j in torch.nonzero(tok[l, i] > threshold).flatten().tolist():
                    edges.append(Edge(src(j), mid, float(tok[l, i, j]), "attn",
                                      tuple(float(v) for v in self.attn[l, i, j])))
                    below.add(j)
            nodes.update(Node("out", l - 1, j) if l > 0 else Node("embed", -1, j) for j in below)
            frontier = below
        return Graph(sorted(nodes, key=node_order), sorted(edges, key=lambda e: (node_order(e.dst), node_order(e.src))),
                     pos, threshold)


def node_order(n: Node) -> tuple[int, int]:
    """Sort key: (level, pos), levels 0 (embed), then 3l+1 mid, 3l+2 mlp, 3l+3 out."""
    return level(n), n.pos


def level(n: Node) -> int:
    """How far up the node sits: embed 0, then for layer l: mid 3l+1, mlp 3l+2, out 3l+3."""
    return 0 if n.kind == "embed" else 3 * n.layer + {"mid": 1, "mlp": 2, "out": 3}[n.kind]


def cost(n_layer: int, n_head: int, n_embd: int, T: int) -> int:
    """Floats of decomposed attention the L1 distances run over: L * T(T+1)/2 * H * C."""
    return n_layer * T * (T + 1) // 2 * n_head * n_embd


def needs(model: "GPT", edit: "Edits | None" = None) -> list[str]:
    """What a recording must hold for `contributions(rec=...)` under `edit`: NEEDS, plus
    attn.hook_result of each layer whose result the edit changes."""
    extra = [n for n in sorted(edit.edited_names(model.config)) if n.endswith("attn.hook_result")] if edit else []
    return NEEDS + extra


def proximity(parts: torch.Tensor, y: torch.Tensor, upper: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's proximity max(||y||_1 - ||y - z||_1, 0) of parts (..., C) to y (broadcast to
    parts), clamped to its bound ||z||_1 (`upper`, computed when not given)."""
    ny = y.abs().sum(dim=-1)
    d = (parts - y).abs_().sum(dim=-1)
    if upper is None:
        upper = parts.abs().sum(dim=-1)
    return torch.minimum((ny - d).clamp_(min=0), upper)


def _normalise(res: torch.Tensor, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Proximities of the residual (N,) and of the other parts (N, ...) -> their shares."""
    total = res + parts.reshape(res.size(0), -1).sum(dim=1)  # (N,)
    dead = total <= 0  # no part is closer to y than 0: the residual carries it all
    res = torch.where(dead, torch.ones_like(res), res)
    total = torch.where(dead, torch.ones_like(total), total)
    return res / total, parts / total.reshape(-1, *([1] * (parts.dim() - 1)))


def _sliced(edit: "Edits", model: "GPT", name: str, S: torch.Tensor, edited: torch.Tensor, A: torch.Tensor
            ) -> tuple[torch.Tensor, bool]:
    """The edit of `name` applied to per-source slices S (Tk, T, H, D) (sources as the batch), so
    that sum_j S[j] is the edited activation `edited` (T, H, D) where the edit is linear; where it
    is not, that (position, head)'s output is split over the sources by A (H, T, Tk) instead.
    Returns (the slices, whether any was split by attention)."""
    Tk, T = S.size(0), S.size(1)
    edit.begin(model.config, 0, T, model=model)
    out = edit.apply(name, S.to(edited.dtype)).float()  # (Tk, T, H, D)
    ok = torch.isclose(out.sum(0), edited.float(), rtol=1e-4, atol=1e-5).all(dim=-1)  # (T, H)
    if bool(ok.all()):
        return out, False
    by_attn = A.permute(2, 1, 0)[..., None] * edited.float()[None]  # (Tk, T, H, D)
    return torch.where(ok[None, :, :, None], out, by_attn), True


@torch.no_grad()
def _attention_node(model: "GPT", rec: Recorder, l: int, edit: "Edits | None", chunk: int
                    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Layer l's attention node at every position: (shares (T, T, H), residual share (T,), split)."""
    attn = model.transformer.h[l].attn
    p = f"blocks.{l}."
    x = rec[p + "hook_resid_pre"][0].float()  # (T, C)
    y = rec[p + "hook_resid_mid"][0].float()  # (T, C)
    A = rec[p + "attn.hook_pattern"][0].float()  # (H, T, Tk) Tk == T
    v = rec[p + "attn.hook_v"][0].float()  # (T, H, hs)
    T, H, hs = v.shape
    C = y.size(-1)
    W_O = attn.c_proj.weight.detach().float().to(v.device).view(C, H, hs)  # (C, H, hs), beside the recording
    names = edit.edited_names(model.config) if edit else set()
    z_name, r_name = p + "attn.hook_z", p + "attn.hook_result"
    split = False
    full: torch.Tensor | None = None  # (Tk, T, H, C) per-source writes, only for an edited result
    S: torch.Tensor | None = None  # (Tk, T, H, hs) per-source z, only for an edited z
    if z_name in names or r_name in names:
        S = A.permute(2, 1, 0)[..., None] * v[:, None]  # (Tk, T, H, hs): S[j, i, h] = A_h[i, j] v_h[j]
        if z_name in names:
            S, split = _sliced(edit, model, z_name, S, rec[z_name][0], A)
        if r_name in names:
            full = torch.einsum("kqhd,chd->kqhc", S, W_O)  # (Tk, T, H, C)
            full, s2 = _sliced(edit, model, r_name, full, rec[r_name][0], A)
            split = split or s2
    u = torch.einsum("thd,chd->thc", v, W_O)  # (T, H, C): each source's value through W_O
    nu = u.abs().sum(dim=-1)  # (T, H) ||W_O v||_1, for the bound ||A u||_1 = A ||u||_1
    future = bool(torch.triu(A, diagonal=1).ne(0).any())  # only an edited pattern looks ahead
    prox = torch.zeros(T, T, H)
    for i0, i1 in _chunks(T, H * C, chunk):
        k = T if future else i1  # sources 0..k-1: later ones have A == 0
        a = A[:, i0:i1, :k].permute(1, 2, 0)  # (q, k, H)
        if full is not None:
            parts = full[:k, i0:i1].transpose(0, 1)  # (q, k, H, C)
            upper = None
        elif S is not None:
            parts = torch.einsum("kqhd,chd->qkhc", S[:k, i0:i1], W_O)  # (q, k, H, C)
            upper = None
        else:  # y - A u in one fused pass (addcmul): the distances are the whole cost
            yq = y[i0:i1]  # (q, C)
            d = torch.addcmul(-yq[:, None, None, :], a[..., None], u[None, :k]).abs_().sum(dim=-1)  # (q, k, H)
            ny = yq.abs().sum(dim=-1)[:, None, None]  # (q, 1, 1)
            prox[i0:i1, :k] = torch.minimum((ny - d).clamp_(min=0), a * nu[None, :k])
            continue
        prox[i0:i1, :k] = proximity(parts, y[i0:i1, None, None, :], upper)
    res = proximity(x, y)  # (T,)
    res, shares = _normalise(res, prox)
    return shares, res, split


def _chunks(T: int, width: int, chunk: int) -> list[tuple[int, int]]:
    """Query ranges [i0, i1) whose (i1 - i0) * i1 * width floats stay about `chunk` (at least one row)."""
    out, i0 = [], 0
    while i0 < T:
        i1 = i0 + 1
        while i1 < T and (i1 + 1 - i0) * (i1 + 1) * width <= chunk:
            i1 += 1
        out.append((i0, i1))
        i0 = i1
    return out


@torch.no_grad()
def contributions(model: "GPT", ids: Sequence[int] | torch.Tensor, edit: "Edits | None" = None,
                  rec: Recorder | None = None, chunk: int = CHUNK) -> Contributions:
    """The information-flow shares of every node for `ids` ((T,) or (1, T)) under `edit`. `rec`: a
    recording of `needs(model, edit)` made from exactly these ids under exactly this edit, to skip
    the forward. `chunk`: floats of decomposed attention held at once."""
    if rec is None:
        from gpt.attribution import record

        _, rec = record(model, ids, edit, needs(model, edit))
    L = model.config.n_layer
    attn, attn_res, mlp, mlp_res, split = [], [], [], [], []
    for l in range(L):
        s, r, sp = _attention_node(model, rec, l, edit, chunk)
        attn.append(s)
        attn_res.append(r)
        if sp:
            split.append(l)
        p = f"blocks.{l}."
        y = rec[p + "hook_resid_post"][0].float()  # (T, C)
        m = rec[p + "hook_mlp_out"][0].float()
        r_mlp, s_mlp = _normalise(proximity(rec[p + "hook_resid_mid"][0].float(), y), proximity(m, y)[:, None])
        mlp.append(s_mlp[:, 0])
        mlp_res.append(r_mlp)
    return Contributions(torch.stack(attn), torch.stack(attn_res), torch.stack(mlp), torch.stack(mlp_res),
                         bool(edit), split)


@dataclass
class NodeTokens:
    """What a node's vector says about the next token: promoted / suppressed token ids with their
    logits (k each, strongest first), and probs (the softmax of the lens logits, for residual
    nodes). `what` says how they were read."""
    promoted: list[int]
    promoted_logits: list[float]
    suppressed: list[int]
    suppressed_logits: list[float]
    probs: list[float]
    what: str


@torch.no_grad()
def node_tokens(model: "GPT", rec: Recorder, node: Node, k: int = 8) -> NodeTokens:
    """The logit lens at a node. A residual node (embed, mid, out) goes through ln_f with its own
    statistics and the unembedding (gpt.analysis.lens_logits); an MLP node's write, which is not a
    residual, goes through ln_f with the final residual's frozen scale at that position (its direct
    logit attribution for every token). Promoted: the k highest logits; suppressed: the k lowest."""
    from gpt.analysis import lens_logits

    L = model.config.n_layer
    name = {"embed": "blocks.0.hook_resid_pre", "mid": f"blocks.{node.layer}.hook_resid_mid",
            "out": f"blocks.{node.layer}.hook_resid_post", "mlp": f"blocks.{node.layer}.hook_mlp_out"}[node.kind]
    vec = rec[name][0, node.pos].float().cpu()  # (C,)
    if node.kind == "mlp":
        x = rec[f"blocks.{L - 1}.hook_resid_post"][0, node.pos].float().cpu()
        sigma = (x.var(unbiased=False) + 1e-5).sqrt()
        w = model.transformer.ln_f.weight.detach().float().cpu()
        logits = ((vec - vec.mean()) * w / sigma) @ model.lm_head.weight.detach().float().cpu().t()  # (V,)
        probs, what = [], "direct effect on the logits (final LayerNorm scale frozen)"
    else:
        logits = lens_logits(model, vec).cpu()  # (V,)
        probs, what = torch.softmax(logits, -1), "logit lens (ln_final with this residual's own statistics)"
    k = min(k, logits.numel())
    top, bot = torch.topk(logits, k), torch.topk(-logits, k)
    return NodeTokens(top.indices.tolist(), top.values.tolist(), bot.indices.tolist(), (-bot.values).tolist(),
                      [float(probs[i]) for i in top.indices] if len(probs) else [], what)

