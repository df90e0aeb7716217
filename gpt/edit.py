"""Edits: the write-side twin of gpt.record.Recorder. Functions that replace activations during a
forward pass, under the same TransformerLens names.

    zero_h1 = Edits({"blocks.1.attn.hook_z": lambda z: z.index_fill(2, torch.tensor([1]), 0.0)})
    logits, _ = model(idx, edit=zero_h1)             # the edited run
    logits, _ = model(idx, rec=rec, edit=zero_h1)    # rec holds the edited values

Contract:
- names are the Recorder's names or fnmatch globs, expanded exactly as Recorder.resolve expands them
  (so "*" leaves out the per-head "attn.hook_result", which has to be named). A name that matches
  nothing for the model raises ValueError when the forward begins.
- a function is called as fn(act), or as fn(act, pos) when it has a second required positional
  parameter (a parameter with a default, as in `lambda z, h=h: ...`, is not one). pos is a
  LongTensor (T,) of the absolute model positions of act's T axis (the queries, for attention
  scores and pattern), so a position-dependent edit is the same with or without a KV cache, where a
  forward covers only the new positions. Positions are the model's (0 .. block_size-1): once
  generation slides its window they are not sequence indices.
- a function gets its own copy of act, so it may change it in place, but it must return the edited
  tensor, with act's shape.
- several functions may apply to one name; they run in order (mapping order, then `a + b` order).
- the edited value is what the model carries on with and what a Recorder in the same forward stores.
- Edits are immutable; `a + b` (or `a.then(b)`) is a new Edits applying a's functions, then b's.
- `key` identifies the edit for caches: a tuple of the parts' keys, in order; () for no edit. A part
  built with an explicit key contributes that key (equal keys promise equal functions); without
  one it contributes a fresh uuid4 hex, so two Edits built from raw functions never compare equal.
- like a Recorder, an Edits plans one forward at a time (begin, wants, apply): do not run two
  forwards with the same Edits concurrently.
- every part has a description (`Desc`); `description` sums them up for a banner ("2 heads ablated
  (zero)") and `details` lists them one by one. A part may need the model before its hooks run (a
  mean over a reference batch): GPT.forward hands itself to `begin`, which runs the part's `prepare`.

Sugar (gpt/interventions.py holds the functions; each method returns self + one new part, so they
chain, and each part's key is plain data made of its arguments, e.g. ("ablate_heads", 1, (0, 2), "zero")):

    edit = Edits().ablate_heads(1, [0, 2]).ablate_mlp(3, "mean").ablate_neurons(0, [5], "zero")
    edit.description                      # "2 heads ablated (zero); 1 MLP layer ablated (mean); 1 neuron ..."
    Edits.from_spec(edit.key) == edit     # ablations rebuild from their keys (app session state)
    Edits().patch("blocks.0.hook_resid_pre", clean_rec["blocks.0.hook_resid_pre"], positions=[3])
    Edits().add("blocks.2.hook_resid_post", direction, scale=4.0)
"""
from __future__ import annotations

import inspect
import uuid
from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple, Sequence

import torch

from gpt.config import GPTConfig
from gpt.record import Recorder

EditFn = Callable[..., torch.Tensor]
_Entry = tuple[str, EditFn, bool]  # (name or glob, function, takes pos)
Prepare = Callable[[Any], None]  # called with the model at the start of every forward


class Desc(NamedTuple):
    """How one part of an edit reads: parts with the same (noun, plural, suffix) add up in a banner,
    counted over the union of their items ("2 heads ablated (zero)"); `detail` is the part alone."""
    noun: str
    plural: str
    suffix: str
    items: frozenset
    detail: str


def _takes_pos(name: str, fn: EditFn) -> bool:
    """Whether fn wants (act, pos) rather than (act), read once from its signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: call them with act alone
        return False
    params = sig.parameters.values()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = sum(p.kind in positional and p.default is p.empty for p in params)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return required >= 2
    if required not in (1, 2):
        raise TypeError(f"edit function for {name!r} must take (act) or (act, pos); "
                        f"it requires {required} positional arguments")
    return required == 2


class Edits:
    """Functions act -> act (or (act, pos) -> act) keyed by hook name or glob. See the module docstring."""

    def __init__(self, fns: Mapping[str, EditFn | Sequence[EditFn]] | None = None,
                 key: Hashable | None = None, desc: Desc | None = None, prepare: Prepare | None = None
                 ) -> None:
        """`desc` says what the part does (default: "custom edit of <names>"); `prepare(model)`, if
        given, runs at the start of every forward under this edit, before any hook."""
        entries: list[_Entry] = []
        for name, f in (fns or {}).items():
            if not isinstance(name, str):
                raise TypeError(f"edit names must be strings (hook names or globs), got {name!r}")
            for fn in (f if isinstance(f, (list, tuple)) else [f]):
                if not callable(fn):
                    raise TypeError(f"the edit for {name!r} must be a function act -> act, "
                                    f"got {type(fn).__name__}")
                entries.append((name, fn, _takes_pos(name, fn)))
        if key is not None:
            hash(key)  # an unhashable key would only fail later, inside some cache
        keys: tuple[Hashable, ...] = ((uuid.uuid4().hex if key is None else key),) if entries else ()
        if desc is None and entries:
            names = ", ".join(dict.fromkeys(name for name, _, _ in entries))
            desc = Desc("custom edit", "custom edits", "", frozenset(keys), f"custom edit of {names}")
        self._setup(tuple(entries), keys, (desc,) if entries else (), (prepare,) if entries and prepare else ())

    def _setup(self, entries: tuple[_Entry, ...], keys: tuple[Hashable, ...], descs: tuple[Desc, ...],
               prepares: tuple[Prepare, ...]) -> None:
        self._entries = entries
        self._keys = keys
        self._descs = descs
        self._prepares = prepares
        self._plans: dict[int, dict[str, tuple[tuple[EditFn, bool], ...]]] = {}  # n_layer -> name -> fns
        self._active: dict[str, tuple[tuple[EditFn, bool], ...]] = {}
        self._start, self._T = 0, 0
        self._pos: torch.Tensor | None = None

    # -- identity and combination -----------------------------------------------------------------
    @property
    def key(self) -> tuple[Hashable, ...]:
        """Hashable identity for caches: the parts' keys in order; () when there is nothing to apply."""
        return self._keys

    def then(self, other: "Edits") -> "Edits":
        """A new Edits applying self's functions, then other's (where both touch one name)."""
        if not isinstance(other, Edits):
            raise TypeError(f"can only combine Edits with Edits, got {type(other).__name__}")
        out = Edits.__new__(Edits)
        out._setup(self._entries + other._entries, self._keys + other._keys, self._descs + other._descs,
                   self._prepares + other._prepares)
        return out

    def __add__(self, other: "Edits") -> "Edits":
        return self.then(other)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Edits) and self._keys == other._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def __repr__(self) -> str:
        names = list(dict.fromkeys(name for name, _, _ in self._entries))
        return f"Edits({', '.join(names)})"

    # -- what it does, in words ----------------------------------------------------------------------
    @property
    def description(self) -> str:
        """The whole edit for a banner: parts of one kind added up, "2 heads ablated (zero); 1 MLP
        layer ablated (mean)"; "no edit" when empty."""
        groups: dict[tuple[str, str, str], set] = {}
        for d in self._descs:
            groups.setdefault((d.noun, d.plural, d.suffix), set()).update(d.items)
        parts = [" ".join(w for w in (str(len(items)), noun if len(items) == 1 else plural, suffix) if w)
                 for (noun, plural, suffix), items in groups.items()]
        return "; ".join(parts) or "no edit"

    @property
    def details(self) -> tuple[str, ...]:
        """Each part in words, in order, e.g. "layer 1 heads 0, 2 ablated (zero)"."""
        return tuple(d.detail for d in self._descs)

    # -- sugar: each returns self + one part (gpt/interventions.py) ---------------------------------
    def ablate_heads(self, layer: int, heads: Sequence[int], how: str = "zero", ref: Any = None) -> "Edits":
        """Heads `heads` of `layer` ablated at attn.hook_z: "zero", or "mean" over `ref` ids (default:
        each row's own positions). See gpt.interventions."""
        from gpt import interventions
        return self + interventions.ablate_heads(layer, heads, how, ref)

    def ablate_mlp(self, layer: int, how: str = "zero", ref: Any = None) -> "Edits":
        """The MLP of `layer` ablated at hook_mlp_out ("zero" or "mean", as ablate_heads)."""
        from gpt import interventions
        return self + interventions.ablate_mlp(layer, how, ref)

    def ablate_neurons(self, layer: int, indices: Sequence[int], how: str = "zero", ref: Any = None) -> "Edits":
        """MLP neurons `indices` of `layer` ablated at mlp.hook_post ("zero" or "mean")."""
        from gpt import interventions
        return self + interventions.ablate_neurons(layer, indices, how, ref)

    def patch(self, name: str, values: torch.Tensor, positions: Sequence[int] | None = None,
              heads: Sequence[int] | None = None) -> "Edits":
        """`name` replaced by `values` (what a Recorder stores for it, e.g. from another run), at all
        positions or `positions` (model positions), for all heads or `heads`."""
        from gpt import interventions
        return self + interventions.patch(name, values, positions, heads)

    def add(self, name: str, vector: torch.Tensor, scale: float = 1.0) -> "Edits":
        """`scale * vector` added to `name` at every position (steering)."""
        from gpt import interventions
        return self + interventions.add(name, vector, scale)

    @classmethod
    def from_spec(cls, spec: Iterable[tuple]) -> "Edits":
        """The edit whose key is `spec`, rebuilt from plain data: a sequence of sugar keys such as
        ("ablate_heads", 1, (0, 2), "zero"), so `Edits.from_spec(e.key) == e` for ablations."""
        from gpt import interventions
        return interventions.from_spec(spec)

    # -- planning -----------------------------------------------------------------------------------
    def _plan(self, config: GPTConfig) -> dict[str, tuple[tuple[EditFn, bool], ...]]:
        """Concrete name -> its functions in order, for this model's layer count (cached: immutable)."""
        plan = self._plans.get(config.n_layer)
        if plan is None:
            acc: dict[str, list[tuple[EditFn, bool]]] = {}
            for pattern, fn, takes_pos in self._entries:
                for name in Recorder.resolve(config, [pattern], what="edit"):
                    acc.setdefault(name, []).append((fn, takes_pos))
            plan = self._plans[config.n_layer] = {n: tuple(fns) for n, fns in acc.items()}
        return plan

    def edited_names(self, config: GPTConfig) -> set[str]:
        """The concrete names this edit changes in a model of `config` (for Recorder.begin)."""
        return set(self._plan(config))

    # -- the model's side ---------------------------------------------------------------------------
    def begin(self, config: GPTConfig, start: int, T: int, model: Any = None) -> None:
        """Called by GPT.forward before any hook: this forward covers positions start .. start+T-1.
        `model` (the GPT running) goes to the parts that prepare something from it."""
        self._active = self._plan(config)
        self._start, self._T = start, T
        self._pos = None
        for prepare in self._prepares:
            prepare(model)

    def wants(self, name: str) -> bool:
        return name in self._active

    def apply(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Run name's functions on t in order and return the edited activation."""
        for fn, takes_pos in self._active[name]:
            # a copy: t may be a view of a buffer the model still reads (the fused qkv), or stored
            # by a Recorder under another name (resid_post of the block before)
            out = fn(t.clone(), self._positions(t.device)) if takes_pos else fn(t.clone())
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"edit of {name!r} returned {type(out).__name__}, not a tensor; "
                                 "return the edited activation (also after changing it in place)")
            if out.shape != t.shape:
                raise ValueError(f"edit of {name!r} returned shape {tuple(out.shape)}; "
                                 f"the activation has shape {tuple(t.shape)}")
            t = out
        return t

    def _positions(self, device: torch.device) -> torch.Tensor:
        if self._pos is None or self._pos.device != device:
            self._pos = torch.arange(self._start, self._start + self._T, dtype=torch.long, device=device)  # (T,)
        return self._pos


def wants(rec: Recorder | None, edit: Edits | None, name: str) -> bool:
    """Whether the recorder or the edit needs `name` handed over."""
    return (rec is not None and rec.wants(name)) or (edit is not None and edit.wants(name))


def hook(rec: Recorder | None, edit: Edits | None, name: str, t: torch.Tensor) -> torch.Tensor:
    """The one place an activation meets the edit and the recorder, in that order: returns the value
    the model carries on with (t itself when nothing edits `name`)."""
    if edit is not None and edit.wants(name):
        t = edit.apply(name, t)
    if rec is not None and rec.wants(name):
        rec.save(name, t)
    return t
