"""The batched runs behind gpt.patching.sweep: every patched cell computed only where it can differ.

A patch at block l and position p changes nothing before block l, nor at positions before p
(attention is causal). So a cell is a row that joins the residual stream before some block e with
its own state from a position p0 on; the keys and values of positions < p0 are the unpatched run's
(a `_Prefix` stands in for the KV cache), and the last block finishes only the positions the metric
reads. Rows of one pass share p0 (the smallest of theirs) and join at their own blocks, so one pass
costs one call per block for any number of cells. Which cells share a pass: `buckets` weighs the
work a later-starting row wastes against the fixed cost of another pass.

The state of a row is built with the model's own modules (ln_2, mlp, c_proj) and the blocks run
their fast path (no hooks), so the values equal a full forward under an edit to float rounding.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

STATE = ["hook_resid_pre", "hook_resid_post", "attn.hook_k", "attn.hook_v"]  # recorded for every site
EXTRA = {"attn_out": ["hook_attn_out", "hook_resid_mid"], "mlp_out": ["hook_mlp_out", "hook_resid_mid"],
         "head": ["attn.hook_z"], "head_pos": ["attn.hook_z"]}  # and for these sites, to build rows
BUDGET = 1 << 24  # floats of activations one batched pass may hold (64 MiB in float32)
PASS_COST = 1e7  # a block call's fixed cost, in multiply-adds, for choosing how to batch


Entry = tuple[tuple[int, ...], int, int, torch.Tensor]  # (cell, enters before block e, p0, rows p0.. (n, C))


class _Prefix:
    """Stands in for a KVCache: every row's keys and values of positions < p0 are the unpatched run's."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], p0: int) -> None:
        self.k, self.v = [t[:, :p0] for t in k], [t[:, :p0] for t in v]  # each (nh, p0, hs)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = k.size(0)  # k, v: (R, nh, T', hs) -> (R, nh, p0 + T', hs)
        return (torch.cat([self.k[layer].expand(R, -1, -1, -1), k], 2),
                torch.cat([self.v[layer].expand(R, -1, -1, -1), v], 2))


def run(model: Any, entries: list[Entry], tgt: dict[str, torch.Tensor], positions: list[int] | None,
        tgt_logits: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]
        ) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """(cell, metric value) for every entry. tgt: the unpatched run's activations {name: (L, T, ...)};
    positions: the (non-negative) positions the metric reads, or None for all; tgt_logits (T, V);
    score: logits (R, P, V) at `positions` (or (R, T, V)) -> (R,)."""
    cfg = model.config
    T = tgt_logits.size(0)
    # a row's state enters before block e; state[L] is the final residual, before ln_f
    state = torch.cat([tgt["hook_resid_pre"], tgt["hook_resid_post"][-1:]])  # (L+1, T, C)
    k = [t.transpose(0, 1) for t in tgt["attn.hook_k"]]  # each (nh, T, hs)
    v = [t.transpose(0, 1) for t in tgt["attn.hook_v"]]
    out = []
    for bucket in buckets(entries, T, cfg, positions is None):
        bucket.sort(key=lambda e: e[1])  # by the block each row joins at, as _pass wants them
        p0 = min(e[2] for e in bucket)
        per_row = (T - p0) * max(4 * cfg.n_embd, cfg.n_head * T, cfg.vocab_size if positions is None else 0)
        step = max(1, BUDGET // per_row)  # rows per pass, to bound memory
        for i in range(0, len(bucket), step):
            part = bucket[i:i + step]
            values = _pass(model, part, p0, state, k, v, positions, tgt_logits, score)
            out += [(e[0], val) for e, val in zip(part, values)]
    return out


def cells(model: Any, site: str, tgt: dict[str, torch.Tensor], src: torch.Tensor) -> list[Entry]:
    """Every cell of `site` whose patched value differs from the target run's, with the residual
    state its patch makes from position p0 on (the first position it changes), before block e.
    tgt: the target run's activations {name: (L, T, ...)}; src: the source's at the site."""
    blocks = model.transformer.h
    rp = tgt["hook_resid_pre"]  # (L, T, C)

    def finish(l: int, mid: torch.Tensor) -> torch.Tensor:  # resid_mid -> resid_post of block l
        return mid + blocks[l].mlp(blocks[l].ln_2(mid))
    if site == "resid_pre":
        ls, ps = (src != rp).any(-1).nonzero().unbind(1)
        return [((l, p), l, p, src[l, p:p + 1]) for l, p in zip(ls.tolist(), ps.tolist())]
    if site in ("attn_out", "mlp_out"):
        own = tgt["hook_" + site]
        ls, ps = (src != own).any(-1).nonzero().unbind(1)
        out: list[Entry] = []
        for l in ls.unique().tolist():
            p = ps[ls == l]
            if site == "attn_out":
                rows = finish(l, rp[l, p] + src[l, p])  # (n, C)
            else:
                rows = tgt["hook_resid_mid"][l, p] + src[l, p]
            out += [((l, pi), l + 1, pi, rows[j:j + 1]) for j, pi in enumerate(p.tolist())]
        return out
    z = tgt["attn.hook_z"]  # (L, T, nh, hs)
    differs = (src != z).any(-1)  # (L, T, nh)
    out = []
    for l in range(z.size(0)):
        c_proj = blocks[l].attn.c_proj
        if site == "head_pos":
            ps, hs = differs[l].nonzero().unbind(1)
            if ps.numel() == 0:
                continue
            zp = z[l, ps].clone()  # (n, nh, hs)
            zp[torch.arange(ps.numel()), hs] = src[l, ps, hs]
            rows = finish(l, rp[l, ps] + c_proj(zp.flatten(1)))
            out += [((l, h, p), l + 1, p, rows[j:j + 1])
                    for j, (p, h) in enumerate(zip(ps.tolist(), hs.tolist()))]
            continue
        heads = differs[l].any(0).nonzero().squeeze(1).tolist()
        if not heads:
            continue
        starts = [int(differs[l, :, h].nonzero()[0]) for h in heads]
        p0 = min(starts)
        zp = z[l, p0:].expand(len(heads), -1, -1, -1).clone()  # (n, T', nh, hs)
        for j, h in enumerate(heads):
            zp[j, :, h] = src[l, p0:, h]
        rows = finish(l, rp[l, p0:] + c_proj(zp.flatten(2)))  # (n, T', C)
        out += [((l, h), l + 1, s, rows[j, s - p0:]) for j, (h, s) in enumerate(zip(heads, starts))]
    return out


def buckets(entries: list[Entry], T: int, cfg: Any, all_positions: bool) -> list[list[Entry]]:
    """Group cells into passes: a pass computes every row from its smallest p0, so rows that start
    later waste work, while each pass costs a fixed overhead. Minimum total cost, by dynamic
    programming over the distinct p0 values (coarsened past 256 of them)."""
    if not entries:
        return []
    by_p0: dict[int, list[Entry]] = {}
    for e in entries:
        by_p0.setdefault(e[2], []).append(e)
    starts = sorted(by_p0)
    n = -(-len(starts) // 256)
    groups = [starts[i:i + n] for i in range(0, len(starts), n)]
    L, C = cfg.n_layer, cfg.n_embd
    lm = cfg.vocab_size / (12 * C) if all_positions else 0.0  # the unembedding of every position, in layers
    weight = [sum(L - e[1] + lm for s in g for e in by_p0[s]) for g in groups]  # layers x rows, per position
    overhead = L * PASS_COST / (12 * C * C)  # a pass's fixed cost, in token-layers
    best, cut = [0.0] * (len(groups) + 1), [0] * (len(groups) + 1)
    for j in range(1, len(groups) + 1):
        best[j], w = float("inf"), 0.0
        for i in range(j, 0, -1):  # the last pass covers groups i-1 .. j-1
            w += weight[i - 1]
            c = best[i - 1] + overhead + w * (T - groups[i - 1][0])
            if c < best[j]:
                best[j], cut[j] = c, i - 1
    out, j = [], len(groups)
    while j > 0:
        out.append([e for g in groups[cut[j]:j] for s in g for e in by_p0[s]])
        j = cut[j]
    return out[::-1]


def _pass(model: Any, part: list[Entry], p0: int, state: torch.Tensor, k: list[torch.Tensor],
          v: list[torch.Tensor], positions: list[int] | None, tgt_logits: torch.Tensor,
          score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The metric of each row in `part` (sorted by the block e each row joins at): positions p0.. of
    every row through blocks e.., keys and values of positions < p0 from the unpatched run."""
    L = len(model.transformer.h)
    x = state[[e[1] for e in part], p0:].clone()  # (R, T', C): the unpatched states, then each row's patch
    one = [r for r, e in enumerate(part) if e[3].size(0) == 1]  # one changed position: write them at once
    if one:
        x[one, [part[r][2] - p0 for r in one]] = torch.cat([part[r][3] for r in one])
    for r, (_, _, s, rows) in enumerate(part):
        if rows.size(0) > 1:
            x[r, s - p0:s - p0 + rows.size(0)] = rows
    enter = torch.tensor([e[1] for e in part]).bincount(minlength=L + 1).cumsum(0).tolist()  # rows with e <= i
    sel = None if positions is None else [p - p0 for p in positions if p >= p0]
    kv = _Prefix(k, v, p0) if p0 > 0 else None
    h, done = x[:0], False
    for i, blk in enumerate(model.transformer.h):
        h = torch.cat([h, x[(enter[i - 1] if i else 0):enter[i]]])  # rows that join before block i
        if h.size(0) == 0:
            continue
        if i < L - 1 or sel is None:
            h = blk(h, layer=i, kv_cache=kv)
        else:  # the last block: keys and values of every position, the rest only where the metric reads
            h = (h + blk.attn(blk.ln_1(h), kv_cache=kv, layer=i))[:, sel]
            h, done = h + blk.mlp(blk.ln_2(h)), True
    tail = x[enter[L - 1]:]
    if sel is not None:
        h, tail = (h if done else h[:, sel]), tail[:, sel]
    h = torch.cat([h, tail])
    logits = model.lm_head(model.transformer.ln_f(h))  # (R, len(sel) or T', V)
    R = logits.size(0)
    if positions is None:
        full = torch.cat([tgt_logits[:p0].expand(R, -1, -1), logits], 1)  # positions < p0 are unchanged
    else:
        got = iter(range(logits.size(1)))
        full = torch.stack([logits[:, next(got)] if p >= p0 else tgt_logits[p].expand(R, -1)
                            for p in positions], 1)  # positions < p0 are unchanged
    return score(full)
