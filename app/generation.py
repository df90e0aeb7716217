"""Generation as a session: the sequence so far, stepped, undone, reset or forced, for the Generate
and Walkthrough pages alike.

`GenerationSession(store, key)` keeps a `GenState` (plain data: ids, Steps, timings) under `key`
in a mapping (st.session_state on a page, a dict in tests) and the gpt.generate.Generator with its
KV cache under `key + "_generator"`. `sync` is called once per rerun with the model, prompt,
settings and edit in hand; it decides when the Generator must be rebuilt (another model, prompt,
edit or settings) and carries the sequence over. step / back / reset / force are meant for button
callbacks, which run before the page script, so the page always draws the new state. No Streamlit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, MutableMapping, Sequence

import torch

from app.inspection import Loaded, edit_key
from gpt.generate import Generator, Step

if TYPE_CHECKING:
    from gpt.edit import Edits

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
                   prompt: Sequence[int], settings: Settings, edit: "Edits | None" = None
                   ) -> tuple[Generator, GenState]:
    """The Generator and state to use on this rerun.

    - another model or prompt: start over from the prompt (generated tokens dropped);
    - other settings: a new Generator with them that keeps the tokens so far (its cache refills
      lazily on the next step);
    - no Generator (first visit, or lost): rebuilt from state.ids;
    - otherwise the same objects.
    `ref` names the model and the edit (GenerationSession passes "<ref>@<stamp>#<edit key>"), so
    another edit starts over too."""
    prompt = tuple(int(i) for i in prompt)
    if state.ref != ref or state.prompt != prompt:
        state = GenState(ref=ref, prompt=prompt, settings=settings, ids=list(prompt))
        gen = None
    elif state.settings != settings:
        state.settings = settings
        gen = None
    if gen is None or gen.model is not model or list(gen.ids) != state.ids:
        gen = Generator(model, prompt, record=True, edit=edit, **settings.generator_kwargs())
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


class GenerationSession:
    """One page's generation: its GenState under `key` in `store`, its Generator beside it.
    `last` is the newest Step with its logits and the Settings it was drawn with (the Walkthrough
    explains it); GenState keeps neither, to stay small."""

    def __init__(self, store: MutableMapping[str, Any], key: str, top_k_shown: int = 10) -> None:
        self.store, self.key, self.k = store, key, top_k_shown
        self.gen_key, self.last_key = key + "_generator", key + "_last"

    @property
    def state(self) -> GenState:
        return GenState.from_dict(self.store.get(self.key))

    def sync(self, loaded: Loaded, prompt: Sequence[int], settings: Settings,
             edit: "Edits | None" = None) -> GenState:
        """The state to draw on this rerun, for this model, prompt, settings and edit."""
        ref = f"{loaded.ref}@{loaded.stamp}#{edit_key(edit)}"
        gen, gs = sync_generator(self.store.get(self.gen_key), self.state, loaded.model, ref, prompt,
                                 settings, edit)
        self.store[self.gen_key] = gen
        self._save(gs)
        return gs

    def _save(self, gs: GenState) -> None:
        self.store[self.key] = gs.to_dict()

    def _objs(self) -> tuple[Generator, GenState]:
        return self.store[self.gen_key], self.state

    def _advance(self, gen: Generator, gs: GenState, force: int | None = None) -> None:
        t0 = time.perf_counter()
        step = gen.step(force=force, k=self.k)
        record_step(gs, step, (time.perf_counter() - t0) * 1000)
        self.store[self.last_key] = (gs.ref, gs.prompt, step, gs.settings)

    def step(self, n: int = 1) -> None:
        """Draw `n` tokens."""
        gen, gs = self._objs()
        for _ in range(n):
            self._advance(gen, gs)
        self._save(gs)

    def back(self) -> None:
        """Drop the last generated token (nothing happens at the prompt)."""
        gen, gs = self._objs()
        if gs.n_new > 0:
            gen.back()
            undo_step(gs)
            self.store.pop(self.last_key, None)
            self._save(gs)

    def reset(self) -> None:
        """Back to the prompt."""
        gen, gs = self._objs()
        gen.reset()
        self.store.pop(self.last_key, None)
        self._save(GenState(ref=gs.ref, prompt=gs.prompt, settings=gs.settings, ids=list(gs.prompt)))

    def force(self, token: int) -> None:
        """Replace the last generated token by `token` (drawn from the same distribution)."""
        gen, gs = self._objs()
        if gs.n_new <= 0:
            return
        gen.back()
        undo_step(gs)
        self._advance(gen, gs, force=token)
        self._save(gs)

    def last(self) -> tuple[Step, Settings] | None:
        """The newest step with its logits and the settings it was drawn with, while it is still
        the last token of this model's and prompt's sequence (None after back, reset or a change)."""
        got = self.store.get(self.last_key)
        gs = self.state
        if got is None or got[:2] != (gs.ref, gs.prompt) or got[2].pos != len(gs.ids) - 1:
            return None
        return got[2], got[3]
