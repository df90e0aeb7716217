"""Generation as a session: the sequence so far, stepped, undone, reset or forced, for the Generate
and Walkthrough pages alike.

`GenerationSession(store, key)` keeps a `GenState` (plain data: ids, Steps, timings) and the
gpt.generate.Generator with its KV cache in one `Live` object under `key + "_live"` in a mapping
(st.session_state on a page, a dict in tests), and mirrors the state as a dict under `key` after
each `sync`. `sync` is called once per rerun with the model, prompt, settings and edit in hand; it
decides when the Generator must be rebuilt (another model, prompt, edit or settings) and carries the
sequence over. step / back / reset / force are meant for button callbacks, which run before the
page script, so the page always draws the new state. No Streamlit.

Two threads, one session (issue 13.1). With Streamlit's fast reruns (runner.fastReruns, on by
default) a click during a rerun stops that rerun and starts a new one at once: the new run's
callbacks and script then run while the old thread is still inside its callback. So:
- every method takes the Live's lock, so each call acts as if alone: no exception, and no click
  whose callback runs is lost;
- the methods a callback calls never touch the store: in a rerun that was told to stop, each
  st.session_state access raises StopException, which would cut a ten-token step short after its
  Generator had moved and before its state was saved. The session holds the Live itself, fetched
  once by the constructor in the page script (where such an exception is harmless);
- `held()` makes the Live once per store, even when two reruns ask at the same moment.
Any page whose callbacks change objects kept in session state (patching, steering, training buttons)
needs the same three things; `held` is written to be reused. What no app code can fix: two clicks
of one button that reach the server before the first one's rerun has begun are one click to
Streamlit (the newer rerun replaces the older before its callbacks run, with fast reruns on or off);
on a loaded machine the browser can deliver two clicks 40 ms apart that close (BENCHMARKS.md).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, MutableMapping, Sequence, TypeVar

import torch

from app.inspection import Loaded, edit_key
from gpt.generate import Generator, Step

if TYPE_CHECKING:
    from gpt.edit import Edits

KEEP_ATTENTION = 32  # generated steps whose attention rows stay in the session (for Back)
T = TypeVar("T")
_MAKING = threading.Lock()  # one creator at a time in held(), across every session


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

    def copy(self) -> "GenState":
        """A copy whose lists can change without changing this one (the Steps are shared: nothing
        changes a Step in place)."""
        return GenState.from_dict(self.to_dict())


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


def held(store: MutableMapping[str, Any], key: str, kind: type[T]) -> T:
    """The `kind` object under store[key], made by `kind()` and put there when absent (or of another
    kind). Two reruns of one session asking at the same moment get the same object: making it is
    serialised, so neither can replace the one whose methods the other's buttons already call."""
    got = store.get(key)
    if not isinstance(got, kind):
        with _MAKING:
            got = store.get(key)
            if not isinstance(got, kind):
                got = kind()
                store[key] = got
    return got


class Live:
    """One generation's mutable parts, changed only under `lock`: the Generator (None until the
    first sync), the state, and the newest Step with its logits and Settings (see
    GenerationSession.last)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gen: Generator | None = None
        self.state = GenState()
        self.last: tuple[str, tuple[int, ...], Step, Settings] | None = None


class GenerationSession:
    """One page's generation: a Live under `key + "_live"` in `store`, and a dict copy of its state
    under `key` as of the last sync (what the page drew; AppTest reads it). `last` is the newest
    Step with its logits and the Settings it was drawn with (the Walkthrough explains it); GenState
    keeps neither, to stay small.

    Only the constructor and `sync` touch `store`; step / back / reset / force / state / last work
    on the Live alone, under its lock, so they are safe as callbacks of a rerun that is being
    stopped and from two threads at once (module docstring)."""

    def __init__(self, store: MutableMapping[str, Any], key: str, top_k_shown: int = 10) -> None:
        self.store, self.key, self.k = store, key, top_k_shown
        self.live: Live = held(store, key + "_live", Live)

    @property
    def state(self) -> GenState:
        """A copy of the state now (it does not change when the session does)."""
        with self.live.lock:
            return self.live.state.copy()

    @property
    def generator(self) -> Generator | None:
        """The Generator in use (None before the first sync); read-only use."""
        return self.live.gen

    def sync(self, loaded: Loaded, prompt: Sequence[int], settings: Settings,
             edit: "Edits | None" = None) -> GenState:
        """The state to draw on this rerun, for this model, prompt, settings and edit (a copy)."""
        ref = f"{loaded.ref}@{loaded.stamp}#{edit_key(edit)}"
        live = self.live
        with live.lock:
            live.gen, live.state = sync_generator(live.gen, live.state, loaded.model, ref, prompt, settings, edit)
            gs = live.state.copy()
            # under the lock, so an older run cannot overwrite a newer copy; in a stopped run this
            # raises, with the Live already consistent
            self.store[self.key] = gs.to_dict()
        return gs

    def _generator(self) -> Generator:
        if self.live.gen is None:
            raise RuntimeError("GenerationSession.sync must run before the first step")
        return self.live.gen

    def _advance(self, force: int | None = None) -> None:
        live = self.live
        t0 = time.perf_counter()
        step = self._generator().step(force=force, k=self.k)
        record_step(live.state, step, (time.perf_counter() - t0) * 1000)
        live.last = (live.state.ref, live.state.prompt, step, live.state.settings)

    def step(self, n: int = 1) -> None:
        """Draw `n` tokens."""
        with self.live.lock:
            for _ in range(n):
                self._advance()

    def back(self) -> None:
        """Drop the last generated token (nothing happens at the prompt)."""
        with self.live.lock:
            gs = self.live.state
            if gs.n_new > 0:
                self._generator().back()
                undo_step(gs)
                self.live.last = None

    def reset(self) -> None:
        """Back to the prompt."""
        with self.live.lock:
            gs = self.live.state
            self._generator().reset()
            self.live.last = None
            self.live.state = GenState(ref=gs.ref, prompt=gs.prompt, settings=gs.settings, ids=list(gs.prompt))

    def force(self, token: int) -> None:
        """Replace the last generated token by `token` (drawn from the same distribution)."""
        with self.live.lock:
            gs = self.live.state
            if gs.n_new <= 0:
                return
            self._generator().back()
            undo_step(gs)
            self._advance(force=token)

    def last(self) -> tuple[Step, Settings] | None:
        """The newest step with its logits and the settings it was drawn with, while it is still
        the last token of this model's and prompt's sequence (None after back, reset or a change)."""
        with self.live.lock:
            got, gs = self.live.last, self.live.state
            if got is None or got[:2] != (gs.ref, gs.prompt) or got[2].pos != len(gs.ids) - 1:
                return None
            return got[2], got[3]
