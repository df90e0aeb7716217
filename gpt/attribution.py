"""Direct logit attribution (DLA): how much each component wrote, directly, into one logit.

The final residual stream at a position is the sum of what every component wrote into it:
    x = embed + pos_embed + sum_l (sum_h result[l, h] + b_O[l]) + sum_l mlp_out[l]
(result[l, h] is blocks.l.attn.hook_result, head h's write z_h @ W_O[h]^T without the bias; b_O is
the attention output bias; mlp_out includes the MLP's own output bias). The logit of token t is
W_U[t] . ln_f(x). With the final LayerNorm's scale at that position frozen,
sigma = sqrt(var(x) + eps) (as TransformerLens's decompose_resid / logit_attrs do), ln_f is affine:
ln_f(x) = w * (x - mean(x)) / sigma + b, so
    logit_t = sum_c W_U[t] . (w * (c - mean(c))) / sigma  +  W_U[t] . b
and each term is that component's direct logit attribution. The terms sum exactly to the logit (up
to float rounding; everything here is summed in float64). In difference mode W_U[t] becomes
W_U[t] - W_U[other] and the terms sum to the logit difference.

Under an edit (gpt.edit.Edits) every component is read from the edited recording, so the terms
describe the edited model. An edit that writes into the residual stream itself (hook_resid_*,
hook_attn_out, ln_final.hook_normalized or logits) is no component's write: then one more
component, "edit", holds what it changed (the logit minus every other term), and the sum still
equals the edited model's logit.

Pure functions; tensors come back on the CPU. NEEDS lists what a recording must hold to skip the
forward (`rec=`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from gpt.record import Recorder

if TYPE_CHECKING:
    from gpt.edit import Edits
    from gpt.model import GPT

LN_EPS = 1e-5
NEEDS = ["hook_embed", "hook_pos_embed", "blocks.*.attn.hook_result", "blocks.*.hook_mlp_out",
         "blocks.*.hook_resid_post", "logits"]
KINDS = ("embed", "pos_embed", "head", "attn_bias", "mlp", "ln_bias", "edit")
# edits of these names change the residual stream (or the logits) outside any component's write
_RESIDUAL_EDITS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                   "ln_final.hook_normalized", "logits")


@dataclass(frozen=True)
class Component:
    """One term of the decomposition: label ("L1H2", "L3 MLP", ...), kind (one of KINDS), and the
    layer and head it belongs to (None where it has none)."""
    label: str
    kind: str
    layer: int | None = None
    head: int | None = None


@dataclass
class DLA:
    """The direct logit attribution at one position. values (n,): each component's term, in the
    order of `components`; they sum to `logit`, the model's logit of `token` (minus that of `other`)
    at `pos`, read from the forward. scale: the frozen final-LayerNorm scale sigma at `pos`."""
    components: list[Component]
    values: torch.Tensor
    logit: float
    pos: int
    token: int
    other: int | None
    scale: float

    @property
    def total(self) -> float:
        """The sum of the terms (equals `logit`)."""
        return float(self.values.sum())

    def heads(self, n_layer: int, n_head: int) -> torch.Tensor:
        """The head terms as a (n_layer, n_head) grid."""
        return head_grid(self.values, self.components, n_layer, n_head)

    def top(self, k: int) -> list[int]:
        """Indices of the k components with the largest |term|, largest first."""
        return torch.argsort(self.values.abs(), descending=True)[:k].tolist()


@dataclass
class DLAAll:
    """DLA at every position at once: values (T, n), row t for tokens[t] (minus others[t]) at t;
    logits (T,) the model's logits (differences); scale (T,) the frozen sigmas."""
    components: list[Component]
    values: torch.Tensor
    logits: torch.Tensor
    tokens: list[int]
    others: list[int] | None
    scale: torch.Tensor

    def at(self, pos: int) -> DLA:
        """Row `pos` as a DLA."""
        p = pos % self.values.size(0)
        return DLA(self.components, self.values[p], float(self.logits[p]), p, self.tokens[p],
                   None if self.others is None else self.others[p], float(self.scale[p]))


def components(model: "GPT", edit: "Edits | None" = None) -> list[Component]:
    """The components of `model`'s final residual, in the order DLA values use: embed, pos_embed,
    then per layer its heads, its attention bias (when c_proj has a bias) and its MLP, then the final
    LayerNorm's bias (when it has one), then "edit" when `edit` writes into the residual stream."""
    cfg = model.config
    out = [Component("token embed", "embed"), Component("pos embed", "pos_embed")]
    for l, block in enumerate(model.transformer.h):
        out += [Component(f"L{l}H{h}", "head", l, h) for h in range(cfg.n_head)]
        if block.attn.c_proj.bias is not None:
            out.append(Component(f"L{l} attn bias", "attn_bias", l))
        out.append(Component(f"L{l} MLP", "mlp", l))
    if model.transformer.ln_f.bias is not None:
        out.append(Component("ln_final bias", "ln_bias"))
    if edits_residual(model, edit):
        out.append(Component("edit", "edit"))
    return out


def head_grid(values: torch.Tensor, comps: Sequence[Component], n_layer: int, n_head: int) -> torch.Tensor:
    """values (..., n) -> the head terms as (..., n_layer, n_head)."""
    idx = [next(i for i, c in enumerate(comps) if c.kind == "head" and c.layer == l and c.head == h)
           for l in range(n_layer) for h in range(n_head)]
    return values[..., idx].reshape(*values.shape[:-1], n_layer, n_head)


def edits_residual(model: "GPT", edit: "Edits | None") -> bool:
    """Whether `edit` changes the residual stream or the logits outside any component's write."""
    if not edit:
        return False
    return any(n.endswith(_RESIDUAL_EDITS) for n in edit.edited_names(model.config))


def record(model: "GPT", ids: Sequence[int] | torch.Tensor, edit: "Edits | None" = None,
           names: Sequence[str] = tuple(NEEDS)) -> tuple[torch.Tensor, Recorder]:
    """One recorded forward of `ids` ((T,) or (1, T)) under `edit`, in eval mode and without grad:
    ((1, T) ids on the model's device, the Recorder of `names`)."""
    idx = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)  # (1, T)
    if idx.size(1) == 0:
        raise ValueError("attribution needs at least one token")
    rec = Recorder(list(names))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx, rec=rec, edit=edit)
    finally:
        model.train(was)
    return idx, rec


def _tokens(x: int | Sequence[int] | torch.Tensor | None, T: int, what: str, V: int) -> torch.Tensor | None:
    """A token (or one per position) as a (T,) LongTensor, checked against the vocabulary."""
    if x is None:
        return None
    t = torch.as_tensor(x, dtype=torch.long).flatten()
    if t.numel() == 1:
        t = t.expand(T)
    if t.numel() != T:
        raise ValueError(f"{what} must be one token id or one per position ({T}), got {t.numel()}")
    bad = t[(t < 0) | (t >= V)]
    if bad.numel():
        raise ValueError(f"{what} id {int(bad[0])} is outside the vocabulary 0..{V - 1}")
    return t.clone()


@torch.no_grad()
def attribute(model: "GPT", rec: Recorder, positions: Sequence[int], tokens: torch.Tensor,
              others: torch.Tensor | None = None, edit: "Edits | None" = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The core, on a recording of NEEDS (batch element 0): for positions (P,) and tokens (P,)
    (others (P,) for difference mode) -> (values (P, n) float64, logits (P,) float64, scale (P,)).
    `edit` must be the edit the recording was made under (it decides the "edit" component)."""
    cfg = model.config
    L = cfg.n_layer
    sel = torch.as_tensor(list(positions), dtype=torch.long)  # (P,)
    W_U = model.lm_head.weight.detach()  # (V, C): only the rows asked for go to float64
    ln_f = model.transformer.ln_f
    w = ln_f.weight.detach().double().cpu()  # (C,)
    direction = W_U[tokens.to(W_U.device)].double().cpu()  # (P, C)
    if others is not None:
        direction = direction - W_U[others.to(W_U.device)].double().cpu()
    x = rec[f"blocks.{L - 1}.hook_resid_post"][0, sel].double().cpu()  # (P, C) the final residual
    scale = (x.var(dim=-1, unbiased=False) + LN_EPS).sqrt()  # (P,) the frozen sigma
    d = direction * w / scale[:, None]  # (P, C): c . d is the term of a centred write c
    d = d - d.mean(dim=-1, keepdim=True)  # centring the write = centring the direction (mean is linear)

    def proj(write: torch.Tensor) -> torch.Tensor:  # (P, k, C) -> (P, k)
        return torch.einsum("pkc,pc->pk", write.double().cpu(), d)

    P = sel.numel()
    cols = [proj(rec["hook_embed"][0, sel][:, None]), proj(rec["hook_pos_embed"][0, sel][:, None])]
    for l, block in enumerate(model.transformer.h):
        cols.append(proj(rec[f"blocks.{l}.attn.hook_result"][0, sel]))  # (P, H)
        if block.attn.c_proj.bias is not None:
            cols.append(proj(block.attn.c_proj.bias.detach().expand(P, 1, -1)))
        cols.append(proj(rec[f"blocks.{l}.hook_mlp_out"][0, sel][:, None]))
    if ln_f.bias is not None:
        cols.append((direction @ ln_f.bias.detach().double().cpu())[:, None])  # (P, 1): not scaled
    values = torch.cat(cols, dim=1)  # (P, n)
    if "logits" in rec:
        lg = rec["logits"][0, sel].cpu()  # (P, V)
        logits = lg.gather(1, tokens[:, None])[:, 0].double()
        if others is not None:
            logits = logits - lg.gather(1, others[:, None])[:, 0].double()
    else:  # the logit ln_f(x) produces (equal to the model's unless an edit changed the logits)
        logits = values.sum(dim=1)
    if edits_residual(model, edit):  # what the edit wrote: the rest of the logit
        values = torch.cat([values, (logits - values.sum(dim=1))[:, None]], dim=1)
    return values, logits, scale


def dla(model: "GPT", ids: Sequence[int] | torch.Tensor, pos: int, token: int, other: int | None = None,
        edit: "Edits | None" = None, rec: Recorder | None = None) -> DLA:
    """The direct logit attribution of `token`'s logit at `pos` (negative counts from the end), or
    of the difference logit(token) - logit(other), for `ids` run under `edit`. `rec`: a recording
    of NEEDS made from exactly these ids under exactly this edit, to skip the forward."""
    T = len(ids) if not isinstance(ids, torch.Tensor) else ids.numel()
    if not -T <= pos < T:
        raise ValueError(f"position {pos} is outside the prompt's {T} tokens (0..{T - 1})")
    p = pos % T
    V = model.config.vocab_size
    tok = _tokens(token, 1, "token", V)
    oth = _tokens(other, 1, "other", V)
    if rec is None:
        _, rec = record(model, ids, edit)
    values, logits, scale = attribute(model, rec, [p], tok, oth, edit)
    return DLA(components(model, edit), values[0], float(logits[0]), p, int(tok[0]),
               None if oth is None else int(oth[0]), float(scale[0]))


def dla_all(model: "GPT", ids: Sequence[int] | torch.Tensor, tokens: int | Sequence[int] | torch.Tensor | None = None,
            other: int | Sequence[int] | torch.Tensor | None = None, edit: "Edits | None" = None,
            rec: Recorder | None = None) -> DLAAll:
    """DLA at every position at once: values (T, n). `tokens`: one token for every position, or one
    per position; None: each position's own top prediction (the argmax of its logits). `other`
    likewise (None: no difference). `rec` as in dla."""
    if rec is None:
        _, rec = record(model, ids, edit)
    T = rec["hook_embed"].size(1)
    V = model.config.vocab_size
    if tokens is None:
        if "logits" not in rec:
            raise KeyError("dla_all with tokens=None reads the predictions from the logits: record 'logits' too")
        tok = rec["logits"][0].argmax(dim=-1).cpu()  # (T,)
    else:
        tok = _tokens(tokens, T, "tokens", V)
    oth = _tokens(other, T, "other", V)
    values, logits, scale = attribute(model, rec, range(T), tok, oth, edit)
    return DLAAll(components(model, edit), values, logits, tok.tolist(),
                  None if oth is None else oth.tolist(), scale)
