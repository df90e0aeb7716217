"""app/generation.py's GenerationSession: the Generate and Walkthrough pages' sequence, on a plain
dict store and a small random GPT. Each behaviour is checked against an independent reference: a
separately built gpt.generate.Generator, nanoGPT-style full recompute (gpt.generate.generate with
use_cache=False), or the model's own forward on the whole context."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from app import generation as ag
from app.inspection import Loaded
from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.generate import Generator, generate, sampling_distribution
from gpt.model import GPT
from gpt.tokenizer import CharTokenizer

torch.set_num_threads(1)
V = 40
TOK = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz0123456789.,;:"))
PROMPT = (1, 2, 3)
PROMPT_IDS = list(PROMPT)
SETTINGS = [ag.Settings(temperature=1.0, seed=7), ag.Settings(temperature=0.8, top_k=5, seed=1),
            ag.Settings(temperature=1.3, top_p=0.9, seed=2), ag.Settings(temperature=0.0)]


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=V)).eval()


def loaded_of(model: GPT, ref: str = "m") -> Loaded:
    return Loaded(model=model, tokenizer=TOK, meta={}, ref=ref, label=ref, config=model.config, stamp="s")


def session(model: GPT, prompt=PROMPT, settings: ag.Settings = SETTINGS[0],
            edit: Edits | None = None) -> tuple[ag.GenerationSession, dict[str, Any]]:
    store: dict[str, Any] = {}
    s = ag.GenerationSession(store, "gen")
    s.sync(loaded_of(model), prompt, settings, edit)
    return s, store


def full_logits(model: GPT, ids: list[int], edit: Edits | None = None) -> torch.Tensor:
    """The next-token logits (V,) after `ids`, by one forward of the last block_size of them."""
    with torch.no_grad():
        return model(torch.tensor([ids[-model.config.block_size:]]), edit=edit)[0][0, -1]


def zero_head(layer: int, head: int, key: str | None = None) -> Edits:
    return Edits({f"blocks.{layer}.attn.hook_z": lambda z: z.index_fill(2, torch.tensor([head]), 0.0)}, key=key)


@pytest.mark.parametrize("settings", SETTINGS, ids=["t1", "top_k", "top_p", "greedy"])
def test_step_draws_what_a_seeded_generator_and_full_recompute_draw(model: GPT, settings: ag.Settings) -> None:
    s, _ = session(model, settings=settings)
    s.step(2)
    s.step(4)  # in two calls: the Generator carries on where it was
    st = s.state
    assert st.n_new == 6 and len(st.steps) == len(st.ms) == 6 and st.settings == settings
    ref = Generator(model, PROMPT, **settings.generator_kwargs())
    want = [ref.step(k=10) for _ in range(6)]
    assert st.ids == ref.ids
    assert st.ids == generate(model, PROMPT, 6, use_cache=False, **settings.generator_kwargs())
    for got, w in zip(st.steps, want):
        assert (got.token, got.pos, got.forced) == (w.token, w.pos, False)
        assert got.top_ids.tolist() == w.top_ids.tolist()
        torch.testing.assert_close(got.top_probs, w.top_probs)
        assert got.logits.numel() == 0  # the state keeps no logits ...
    assert st.steps[-1].attention.shape[:2] == (model.config.n_layer, model.config.n_head)  # ... but attention


def test_back_then_step_draws_from_the_same_distribution(model: GPT) -> None:
    s, _ = session(model)
    s.step(4)
    before = s.state
    removed = before.steps[-1]
    s.back()
    st = s.state
    assert st.ids == before.ids[:-1] and len(st.steps) == 3 and s.last() is None
    s.step()
    again = s.state.steps[-1]
    assert again.pos == removed.pos and again.top_ids.tolist() == removed.top_ids.tolist()
    torch.testing.assert_close(again.top_probs, removed.top_probs)
    probs = sampling_distribution(full_logits(model, st.ids), 1.0)
    torch.testing.assert_close(again.top_probs, torch.topk(probs, 10).values, atol=1e-5, rtol=1e-4)
    s.reset()
    s.back()  # nothing to undo at the prompt: nothing happens
    assert s.state.ids == list(PROMPT)


def test_reset_returns_to_the_prompt_and_draws_the_same_again(model: GPT) -> None:
    s, _ = session(model)
    s.step(5)
    first = s.state.ids
    s.reset()
    st = s.state
    assert st.ids == list(PROMPT) and st.steps == [] and st.ms == [] and st.n_new == 0
    assert st.prompt == PROMPT and st.settings == SETTINGS[0] and s.last() is None
    s.step(5)
    assert s.state.ids == first  # re-seeded


def test_force_replaces_the_last_token(model: GPT) -> None:
    s, _ = session(model)
    s.step(3)
    drawn = s.state
    token = (drawn.ids[-1] + 1) % V
    s.force(token)
    st = s.state
    assert st.ids == drawn.ids[:-1] + [token] and st.n_new == 3
    assert st.steps[-1].forced and not any(x.forced for x in st.steps[:-1])
    assert st.steps[-1].token == token and st.steps[-1].pos == drawn.steps[-1].pos
    torch.testing.assert_close(st.steps[-1].top_probs, drawn.steps[-1].top_probs)  # same distribution
    want = sampling_distribution(full_logits(model, st.ids[:-1]), 1.0)[token]
    assert st.steps[-1].prob == pytest.approx(float(want), rel=1e-4)
    step, settings = s.last()
    assert step.forced and step.token == token and settings == SETTINGS[0]
    s.step()  # the sequence carries on from the forced token
    torch.testing.assert_close(s.last()[0].logits, full_logits(model, st.ids), atol=1e-5, rtol=1e-4)
    s.reset()
    s.force(token)  # nothing to replace at the prompt
    assert s.state.ids == list(PROMPT)


def test_last_is_the_newest_step_with_its_logits(model: GPT) -> None:
    s, _ = session(model, settings=SETTINGS[1])
    assert s.last() is None
    s.step(2)
    step, settings = s.last()
    st = s.state
    assert settings == SETTINGS[1] and step.token == st.ids[-1] and step.pos == len(st.ids) - 1
    assert step.logits.shape == (V,)
    torch.testing.assert_close(step.logits, full_logits(model, st.ids[:-1]), atol=1e-5, rtol=1e-4)
    s.back()
    assert s.last() is None
    s.step()
    assert s.last() is not None
    s.reset()
    assert s.last() is None
    s.step()
    s.sync(loaded_of(model), (4, 5), SETTINGS[1])  # another prompt: the step is not this sequence's
    assert s.last() is None


def test_sync_starts_over_or_keeps_the_tokens(model: GPT) -> None:
    s, store = session(model)
    s.step(3)
    gen = s.generator
    assert store["gen"]["ids"] == PROMPT_IDS  # the dict under the key is the state as of the last sync
    st = s.sync(loaded_of(model), PROMPT, SETTINGS[0])  # a rerun: nothing changes
    assert s.generator is gen and st.ids == gen.ids and st.n_new == 3
    assert store["gen"]["ids"] == st.ids and store["gen"]["steps"] == st.steps
    kept = st.ids
    st = s.sync(loaded_of(model), PROMPT, SETTINGS[1])  # other settings: same tokens, new Generator
    assert st.ids == kept and len(st.steps) == 3 and st.settings == SETTINGS[1]
    assert s.generator is not gen
    s.step()  # drawn with the new settings, from a freshly seeded RNG, after the kept tokens
    ref = Generator(model, kept, **SETTINGS[1].generator_kwargs())
    assert s.state.ids == kept + [ref.step().token]
    st = s.sync(loaded_of(model), (4, 5), SETTINGS[1])  # another prompt: start over
    assert st.ids == [4, 5] and st.steps == [] and st.prompt == (4, 5)
    s.step(2)
    st = s.sync(loaded_of(model, ref="other"), (4, 5), SETTINGS[1])  # another model: start over
    assert st.ids == [4, 5] and st.steps == []


def test_an_edit_starts_over_and_generates_as_full_recompute_under_it(model: GPT) -> None:
    s, store = session(model)
    s.step(2)
    plain_ref = s.state.ref
    edit = zero_head(0, 1)
    B = model.config.block_size
    prompt = tuple(torch.randint(V, (B - 3,), generator=torch.Generator().manual_seed(5)).tolist())
    st = s.sync(loaded_of(model), PROMPT, SETTINGS[0], edit)
    assert st.ref != plain_ref and st.ids == list(PROMPT)  # another edit: start over
    assert s.generator.edit is edit
    assert s.sync(loaded_of(model), PROMPT, SETTINGS[0], zero_head(0, 1)).ref != st.ref  # another edit
    assert s.sync(loaded_of(model), PROMPT, SETTINGS[0], Edits()).ref == plain_ref  # empty: no edit
    s.sync(loaded_of(model), prompt, SETTINGS[0], edit)
    for _ in range(6):  # past block_size: the window slides and the cache is rebuilt
        s.step()
        step, _ = s.last()
        context = s.state.ids[:-1]
        want = full_logits(model, context, edit)
        torch.testing.assert_close(step.logits, want, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(want, full_logits(model, context), atol=1e-4)  # the edit matters
    assert s.state.steps[-1].cropped
    assert s.state.ids == generate(model, prompt, 6, use_cache=False, edit=edit, **SETTINGS[0].generator_kwargs())


# -- concurrency: issue 13.1 -------------------------------------------------------------------------
def check_consistent(model: GPT, s: ag.GenerationSession, store: dict[str, Any]) -> ag.GenState:
    """Every kept step was drawn from the distribution full recompute gives after the tokens before
    it, at its own position, and the Generator agrees with the state: nothing half-done survived."""
    st = s.state
    assert len(st.steps) == len(st.ms) == st.n_new
    assert [x.pos for x in st.steps] == list(range(len(st.prompt), len(st.ids)))
    assert [x.token for x in st.steps] == st.ids[len(st.prompt):]
    for x in st.steps:
        probs = sampling_distribution(full_logits(model, st.ids[:x.pos]), 1.0)
        torch.testing.assert_close(x.top_probs, torch.topk(probs, 10).values, atol=1e-5, rtol=1e-4)
    s.step()  # and the Generator carries on from exactly these tokens
    torch.testing.assert_close(s.last()[0].logits, full_logits(model, st.ids), atol=1e-5, rtol=1e-4)
    return st


def test_two_threads_hammering_one_session_lose_nothing_and_break_nothing(model: GPT) -> None:
    """Streamlit's fast reruns run a new click's callback while the previous run's thread is still
    stepping, so two threads call one session at once. Each call must act as if alone: no exception,
    every token counted (12 per round below), and a state and KV cache that agree with full
    recompute. One thread steps 10 at a time; the other steps, forces, backs and re-syncs."""
    import sys
    import threading

    s, store = session(model)
    rounds, errors = 12, []
    start = threading.Barrier(2)

    def tens() -> None:
        start.wait()
        for _ in range(rounds):
            s.step(10)

    def mixed() -> None:
        start.wait()
        for i in range(rounds):
            s.step(1)
            s.force(i % V)  # replaces the newest token, whichever thread drew it: the count stays
            s.sync(loaded_of(model), PROMPT, SETTINGS[0])  # a rerun's script: no change
            s.back()  # this thread's step above keeps n_new >= 1, so one token goes
            s.step(2)

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 -- reported below, in the test's thread
                errors.append(e)
        return run

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the calls interleave
    try:
        threads = [threading.Thread(target=guarded(f)) for f in (tens, mixed)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, f"{len(errors)} call(s) raised, first: {errors[0]!r}"
    st = check_consistent(model, s, store)
    assert st.n_new == rounds * (10 + 1 - 1 + 2)


class StoppedRun(Exception):
    """What Streamlit raises (StopException) at a session-state access in a rerun told to stop."""


class StoppingStore(dict):
    """A store as st.session_state behaves in a rerun that a newer click has stopped: once
    `stopped`, every access raises, as each access there is a yield point."""

    stopped = False

    def _check(self) -> None:
        if self.stopped:
            raise StoppedRun("this rerun was stopped")

    def __getitem__(self, k: str) -> Any:
        self._check()
        return super().__getitem__(k)

    def __setitem__(self, k: str, v: Any) -> None:
        self._check()
        super().__setitem__(k, v)

    def get(self, k: str, default: Any = None) -> Any:
        self._check()
        return super().get(k, default)

    def pop(self, k: str, *default: Any) -> Any:
        self._check()
        return super().pop(k, *default)


def test_callbacks_of_a_stopped_rerun_finish_without_touching_the_store(model: GPT) -> None:
    """A click's callback still running when the next click stops its rerun must finish its work:
    step / back / force / reset never access the store (where Streamlit would raise mid-way, after
    the Generator moved and before the state was saved), and the next sync sees every token."""
    store = StoppingStore()
    s = ag.GenerationSession(store, "gen")
    s.sync(loaded_of(model), PROMPT, SETTINGS[0])
    s.step(2)
    store.stopped = True  # the newer click arrives here
    s.step(10)
    s.back()
    s.force(5)
    assert s.state.n_new == 11 and s.last()[0].token == 5
    store.stopped = False
    st = s.sync(loaded_of(model), PROMPT, SETTINGS[0])  # the newer rerun's script
    assert st.n_new == 11 and store["gen"]["ids"] == st.ids and s.generator.ids == st.ids
    check_consistent(model, s, store)
    store.stopped = True
    s.reset()
    store.stopped = False
    assert s.sync(loaded_of(model), PROMPT, SETTINGS[0]).ids == PROMPT_IDS


def test_two_reruns_making_the_session_at_once_share_one(model: GPT) -> None:
    """The first visit's two reruns (a click during the first run) both construct the page's
    session: they must get the same Live, or one run's buttons would step a copy nobody draws."""
    import threading
    import time

    class SlowStore(dict):  # a session-state read takes a while after it looked (a yield check, ...)
        def get(self, k: str, default: Any = None) -> Any:
            got = super().get(k, default)
            time.sleep(0.001)
            return got

    for _ in range(5):
        store = SlowStore()
        start, got = threading.Barrier(4), []

        def make() -> None:
            start.wait()
            got.append(ag.GenerationSession(store, "gen").live)

        threads = [threading.Thread(target=make) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 4 and all(x is store["gen_live"] for x in got)
