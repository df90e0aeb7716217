"""The Timeline's snapshot player: which snapshot is shown, Play / Pause, and the slider's key.

The snapshot shown is a plain session value. The slider only displays and edits it: whenever the
server moves it (a Play tick, Play from the end) the slider gets a new key, because a request
already in flight from the browser carries the old slider value, and for a widget whose key is
unchanged that stale value would win over the server's. State lives in a mapping
(st.session_state on the page, a dict in tests); no Streamlit here.
"""
from __future__ import annotations

from typing import Any, MutableMapping, Sequence

from app.views.timeline import next_iter

ITER_KEY, PLAY_KEY, HOLD_KEY, GEN_KEY = "_tl_iter", "_tl_playing", "_tl_hold", "_tl_gen"


class Playback:
    """Play through `iters` (snapshot iterations, ascending) one step per timer tick."""

    def __init__(self, store: MutableMapping[str, Any], iters: Sequence[int]) -> None:
        self.store, self.iters = store, list(iters)

    @property
    def playing(self) -> bool:
        return bool(self.store.get(PLAY_KEY, False))

    @property
    def current(self) -> int:
        return self.store[ITER_KEY]

    @property
    def slider_key(self) -> str:
        return f"_tl_slider_{self.store.get(GEN_KEY, 0)}"

    def show(self, it: int) -> None:
        """Show snapshot `it`, moving the slider (a new key: see the module docstring)."""
        self.store[ITER_KEY] = it
        self.store[GEN_KEY] = self.store.get(GEN_KEY, 0) + 1

    def toggle(self) -> None:
        """Play / Pause. Play at the end starts over; either way the current snapshot shows first."""
        self.store[PLAY_KEY] = not self.playing
        if self.playing and self.store.get(ITER_KEY) == self.iters[-1]:
            self.show(self.iters[0])
        self.store[HOLD_KEY] = True

    def slid(self, key: str) -> None:
        """The user moved the slider: show that snapshot (also while playing, before advancing)."""
        self.store[ITER_KEY] = self.store[key]
        self.store[HOLD_KEY] = True

    def tick(self) -> bool:
        """One run of the player: an unknown snapshot becomes the last; while playing, advance one
        unless holding. True when playing just stopped at the last snapshot (the page then reruns
        in full to clear its timer)."""
        if self.store.get(ITER_KEY) not in self.iters:
            self.show(self.iters[-1])
        if not self.playing or self.store.pop(HOLD_KEY, False):
            return False
        nxt, done = next_iter(self.iters, self.current)
        self.show(nxt)
        if done:
            self.store[PLAY_KEY] = False
        return done
