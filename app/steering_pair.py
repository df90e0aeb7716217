"""Default and steered generation side by side: two app.generation.GenerationSessions that step
together, one token at a time, from the same seed, plus the KL divergence of their next-token
distributions at each step. No Streamlit.

- Both sessions use the same Settings, so their seeded torch.Generators draw the same random
  numbers: while the steering changes nothing (alpha 0) the two texts are the same token for token.
  Back and force keep the streams in step (back draws nothing; a forced token draws nothing, as
  the token it replaces drew once in both).
- The default column runs under the session's active intervention (`base`, or None); the steered
  one under base + the steering edit.
- kl[i] is KL(steered ‖ default) in nats of the model's distributions at generated token i
  (softmax of the logits, before temperature / top-k / top-p, so it is finite), each on its own
  text: once the texts differ, each distribution follows its own column's context.
- Another model, prompt, intervention or steering edit starts both columns over from the prompt.

Like GenerationSession, the methods meant for button callbacks (step, back, reset, force) work on
objects held in the store, under one lock (the pair's, then a session's: always in that order), and
never touch the store, so a click during a rerun is safe (app/generation.py's module docstring).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Hashable, MutableMapping, Sequence

from app.generation import GenerationSession, GenState, Settings, held
from app.inspection import Loaded, edit_key
from gpt.compare import kl_per_position

if TYPE_CHECKING:
    from gpt.edit import Edits

COLUMNS = ("default", "steered")


class PairLive:
    """The pair's own mutable part: its lock, what both columns were synced for, and the KL list."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: Hashable = None
        self.kl: list[float] = []


class SteeringPair:
    """Two GenerationSessions under store[key + "_default"] / [key + "_steered"] (their dict
    mirrors under those keys) and a PairLive under key + "_pair"; see the module docstring."""

    def __init__(self, store: MutableMapping[str, Any], key: str = "steer", top_k_shown: int = 10) -> None:
        self.sessions = {c: GenerationSession(store, f"{key}_{c}", top_k_shown) for c in COLUMNS}
        self.live: PairLive = held(store, key + "_pair", PairLive)

    def sync(self, loaded: Loaded, prompt: Sequence[int], settings: Settings, base: "Edits | None",
             steer: "Edits") -> tuple[GenState, GenState, list[float]]:
        """The two states (default, steered) and the KL list to draw on this rerun (copies)."""
        steered_edit = (base + steer) if base else steer
        key = (loaded.ref, loaded.stamp, tuple(int(i) for i in prompt), edit_key(base), edit_key(steer))
        d, s = self.sessions["default"], self.sessions["steered"]
        with self.live.lock:
            gd = d.sync(loaded, prompt, settings, base)
            gs = s.sync(loaded, prompt, settings, steered_edit)
            if key != self.live.key or gd.n_new != gs.n_new:
                for sess in (d, s):
                    sess.reset()
                self.live.key, self.live.kl = key, []
                # again, so the dict mirrors in the store show the fresh start
                gd, gs = d.sync(loaded, prompt, settings, base), s.sync(loaded, prompt, settings, steered_edit)
            del self.live.kl[gd.n_new:]
            return gd, gs, list(self.live.kl)

    def _kl_last(self) -> float:
        got = [self.sessions[c].last() for c in COLUMNS]
        if got[0] is None or got[1] is None:
            return float("nan")
        return float(kl_per_position(got[1][0].logits[None], got[0][0].logits[None])[0])

    def step(self, n: int = 1) -> None:
        """Both columns draw `n` tokens, one at a time each."""
        with self.live.lock:
            for _ in range(n):
                for c in COLUMNS:
                    self.sessions[c].step(1)
                self.live.kl.append(self._kl_last())

    def back(self) -> None:
        """Both columns drop their last generated token."""
        with self.live.lock:
            for c in COLUMNS:
                self.sessions[c].back()
            if self.live.kl:
                self.live.kl.pop()

    def reset(self) -> None:
        """Both columns back to the prompt."""
        with self.live.lock:
            for c in COLUMNS:
                self.sessions[c].reset()
            self.live.kl = []

    def force(self, column: str, token: int) -> None:
        """Replace `column`'s last generated token by `token`. The distribution it was drawn from,
        and so the KL at that step, stay as they were."""
        if column not in COLUMNS:
            raise ValueError(f"column must be one of {COLUMNS}, got {column!r}")
        with self.live.lock:
            self.sessions[column].force(token)
