"""Recorder: which activations to keep from one forward pass, in what dtype and on which device.

Pass one to `model(idx, rec=rec)`; afterwards `rec[name]` is the detached activation under its
TransformerLens name, batch dimension kept. `names` picks sites by name or fnmatch glob
("blocks.*.attn.hook_pattern"); None records every site except the per-head `attn.hook_result`,
which is big (B, T, nh, C) and is recorded only when a name or glob asks for it explicitly.

compact=True (the default) stores only what cannot be cheaply rebuilt and derives the rest on
access, exactly as the model computed it:
    resid_post[i]   = resid_pre[i+1]            (the same tensor)
    resid_mid[i]    = resid_pre[i] + attn_out[i]
    ln1/ln2/ln_final hook_normalized = LayerNorm(x) without gain and bias
    pattern         = softmax(attn_scores)      (scores are stored as their lower triangle)
    z               = pattern @ v               (not under a KV cache, where v is partial)
    mlp.hook_post   = GELU(mlp.hook_pre)
With dtype=torch.float16 this keeps a full GPT-2-small trace at T=1024 under 0.5 GiB
(bench/bench_record.py). compact=False keeps every tensor exactly as computed, for tests.

Under an edit (gpt.edit.Edits, `model(idx, rec=rec, edit=e)`) the recorder stores the edited values,
as the model carries them on. Then an edited name is stored, never derived, and resid_post[i] is
not derived from an edited resid_pre[i+1]; see `_plan`.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

import torch
from torch.nn import functional as F

from gpt.config import GPTConfig

LN_EPS = 1e-5
BLOCK_SITES = (
    "hook_resid_pre", "ln1.hook_normalized",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern",
    "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized",
    "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
)
OPT_IN = "hook_result"  # recorded only when asked for by name


def _all_names(n_layer: int) -> list[str]:
    names = ["hook_embed", "hook_pos_embed"]
    for i in range(n_layer):
        names += [f"blocks.{i}.{s}" for s in BLOCK_SITES]
    return names + ["ln_final.hook_normalized", "logits"]


def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.size(-1),), eps=LN_EPS)


class Recorder:
    """Collects activations during `GPT.forward(..., rec=self)`. Reusable: each forward starts afresh."""

    def __init__(self, names: Iterable[str] | str | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", compact: bool = True) -> None:
        self.patterns = None if names is None else ([names] if isinstance(names, str) else list(names))
        self.dtype = dtype
        self.device = torch.device(device)
        self.compact = compact
        self._store: dict[str, torch.Tensor] = {}
        self._requested: list[str] = []
        self._needed: set[str] = set()
        self._derive: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {}
        self._packed: dict[str, tuple[int, int]] = {}  # name -> (Tq, Tk) for triangle-packed scores
        self._config: GPTConfig | None = None
        self._edited: frozenset[str] = frozenset()

    # -- planning ----------------------------------------------------------------------------------
    @staticmethod
    def all_names(config: GPTConfig) -> list[str]:
        """Every name a forward pass of `config` can record."""
        return _all_names(config.n_layer)

    @staticmethod
    def resolve(config: GPTConfig, patterns: list[str] | None, what: str = "recorder") -> list[str]:
        """Expand names and globs into concrete names, in model order. Unknown names are an error
        (`what` names the caller in its message: "recorder", "edit")."""
        every = _all_names(config.n_layer)
        if patterns is None:
            return [n for n in every if not n.endswith(OPT_IN)]
        out: set[str] = set()
        for p in patterns:
            hits = [n for n in every if fnmatch.fnmatchcase(n, p)]
            if OPT_IN not in p and any(not n.endswith(OPT_IN) for n in hits):
                hits = [n for n in hits if not n.endswith(OPT_IN)]
            if not hits:
                close = sorted({n.split(".", 2)[-1] for n in every})
                raise ValueError(f"{what} name {p!r} matches nothing for a {config.n_layer}-layer model; "
                                 f"names look like 'blocks.0.attn.hook_pattern'; sites: {close}")
            out.update(hits)
        return [n for n in every if n in out]

    @staticmethod
    def _plan(config: GPTConfig, requested: list[str], compact: bool, cached: bool,
              edited: frozenset[str] = frozenset()
              ) -> tuple[set[str], dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]]]:
        """Which names the model must hand over, and how the others are rebuilt from them.

        `edited`: the names an edit changes in this forward. Every rule rebuilds a name from the
        values the model itself consumed to compute it, and the model hands sources over after their
        edit, so a rule stays exact under any edit of its sources (resid_mid = the edited resid_pre
        plus the edited attn_out is what the model adds; LN, softmax, pattern @ v and GELU likewise
        run on edited inputs). It breaks only where the name itself is edited after the computation
        the rule repeats: so an edited name is never derived. resid_post[i] = resid_pre[i+1] is the
        one rule that reads a *later* hook: an edit of resid_pre[i+1] changes its stored value but
        not resid_post[i], so that rule goes too."""
        if not compact:
            return set(requested), {}
        L = config.n_layer
        act = "tanh" if config.activation == "gelu_tanh" else "none"
        rules: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {}
        for i in range(L):
            p = f"blocks.{i}."
            if i < L - 1:
                rules[p + "hook_resid_post"] = ((f"blocks.{i + 1}.hook_resid_pre",), lambda x: x)
            rules[p + "hook_resid_mid"] = ((p + "hook_resid_pre", p + "hook_attn_out"),
                                           lambda a, b: a.float() + b.float())
            rules[p + "ln1.hook_normalized"] = ((p + "hook_resid_pre",), _ln)
            rules[p + "ln2.hook_normalized"] = ((p + "hook_resid_mid",), _ln)
            rules[p + "attn.hook_pattern"] = ((p + "attn.hook_attn_scores",),
                                              lambda s: F.softmax(s.float(), dim=-1))
            if not cached:
                rules[p + "attn.hook_z"] = ((p + "attn.hook_pattern", p + "attn.hook_v"),
                                            lambda a, v: (a.float() @ v.float().transpose(1, 2)).transpose(1, 2))
            rules[p + "mlp.hook_post"] = ((p + "mlp.hook_pre",),
                                          lambda x, act=act: F.gelu(x.float(), approximate=act))
        rules["ln_final.hook_normalized"] = ((f"blocks.{L - 1}.hook_resid_post",), _ln)
        for i in range(L - 1):
            if f"blocks.{i + 1}.hook_resid_pre" in edited:
                rules.pop(f"blocks.{i}.hook_resid_post", None)
        for n in edited:
            rules.pop(n, None)
        needed: set[str] = set()

        def need(name: str) -> None:
            if name in rules:
                for src in rules[name][0]:
                    need(src)
            else:
                needed.add(name)
        for n in requested:
            need(n)
        return needed, {n: r for n, r in rules.items() if n in requested or _feeds(n, rules, requested)}

    @staticmethod
    def estimate_bytes(config: GPTConfig, T: int, names: Iterable[str] | None = None,
                       dtype: torch.dtype = torch.float32, compact: bool = True, batch: int = 1) -> int:
        """Bytes the stored tensors of one forward over T positions will take, before running it."""
        patterns = None if names is None else list(names)
        requested = Recorder.resolve(config, patterns)
        needed, _ = Recorder._plan(config, requested, compact, cached=False)
        C, H, V = config.n_embd, config.n_head, config.vocab_size
        tri = T * (T + 1) // 2
        per = {"hook_result": T * H * C, "mlp.hook_pre": 4 * T * C, "mlp.hook_post": 4 * T * C,
               "attn.hook_attn_scores": tri * H if compact else T * T * H, "attn.hook_pattern": T * T * H}
        total = 0
        for n in needed:
            if n == "logits":
                total += T * V
            else:
                total += next((v for k, v in per.items() if n.endswith(k)), T * C)
        return total * batch * torch.empty((), dtype=dtype).element_size()

    # -- the model's side --------------------------------------------------------------------------
    def begin(self, config: GPTConfig, cached: bool = False, edited: frozenset[str] = frozenset()) -> None:
        """Called by GPT.forward before anything is saved; forgets the previous forward. `edited`:
        the concrete names an edit changes in this forward (stored as handed over, never derived)."""
        self._config = config
        self._edited = frozenset(edited)
        self._store.clear()
        self._packed.clear()
        self._requested = self.resolve(config, self.patterns)
        self._needed, self._derive = self._plan(config, self._requested, self.compact, cached, self._edited)

    def wants(self, name: str) -> bool:
        return name in self._needed

    def save(self, name: str, t: torch.Tensor) -> None:
        t = t.detach()
        # edited scores may hold anything above the diagonal (an edit can unmask): keep them whole
        if self.compact and name.endswith("attn.hook_attn_scores") and name not in self._edited:
            B, H, Tq, Tk = t.shape
            if Tq == Tk:  # keep only the causal lower triangle; the rest is -inf by definition
                rows, cols = torch.tril_indices(Tq, Tk, device=t.device)
                t = t[:, :, rows, cols]  # (B, H, T(T+1)/2)
                self._packed[name] = (Tq, Tk)
        stored = t.to(device=self.device, dtype=self.dtype)
        if stored.data_ptr() == t.data_ptr() and not t.is_contiguous():
            stored = stored.contiguous()  # a view (q of the fused qkv) would keep its whole base alive
        self._store[name] = stored

    # -- the reader's side -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every name available after the last forward, in model order."""
        return [n for n in self._requested if n in self._store or n in self._derive]

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._store:
            t = self._store[name]
            if name in self._packed:
                Tq, Tk = self._packed[name]
                B, H, _ = t.shape
                full = torch.full((B, H, Tq, Tk), float("-inf"), dtype=t.dtype, device=t.device)
                rows, cols = torch.tril_indices(Tq, Tk, device=t.device)
                full[:, :, rows, cols] = t
                return full
            return t
        if name in self._derive:
            srcs, fn = self._derive[name]
            return fn(*(self[s] for s in srcs)).to(self.dtype)
        if self._config is None:
            raise KeyError(f"{name!r}: nothing recorded yet; run model(idx, rec=rec) first")
        raise KeyError(f"{name!r} was not recorded; recorded: {self.names()[:8]}{' …' if len(self.names()) > 8 else ''}")

    def stored_bytes(self) -> int:
        """Bytes actually held (derived names cost nothing until read)."""
        seen = {id(t): t for t in self._store.values()}
        return sum(t.numel() * t.element_size() for t in seen.values())

    def __repr__(self) -> str:
        return (f"Recorder({len(self.names())} names, {self.stored_bytes() / 2**20:.1f} MiB, "
                f"dtype={self.dtype}, compact={self.compact})")


def _feeds(name: str, rules: dict, requested: list[str]) -> bool:
    """True if derived `name` is a source of some requested derived name (e.g. resid_mid for ln2)."""
    stack = [r for r in requested if r in rules]
    seen: set[str] = set()
    while stack:
        r = stack.pop()
        if r in seen:
            continue
        seen.add(r)
        for s in rules[r][0]:
            if s == name:
                return True
            if s in rules:
                stack.append(s)
    return False

