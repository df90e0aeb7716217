"""The values every inspector page works on, and the small controllers beside them, without Streamlit:
app/inspection.py (Inspection.of, clamp, edit_key), app/playback.py (the Timeline's player),
app/views/events.py (the one selection decoder), app.resources.model_views (the Layers page's
per-checkpoint part), and run discovery for the Timeline (gpt.checkpoint.run_of,
app.catalog.timeline_runs) where tests/test_catalog.py leaves it open."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from app import catalog
from app.inspection import Inspection, Loaded, clamp, edit_key
from app.playback import ITER_KEY, Playback
from app.views.events import int_fields, last_selected
from app.views.tokens import unique_labels
from gpt.checkpoint import best_dir, latest_dir, run_of, snapshot_dir
from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import CharTokenizer

torch.set_num_threads(1)
TOK = CharTokenizer(list("\n !$&',-.:;?*_<>abcdefghijklmnopqrstuvwxyz"))


@pytest.fixture(scope="module")
def loaded() -> Loaded:
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=TOK.vocab_size)).eval()  # 2 layers x 2 heads
    return Loaded(model=model, tokenizer=TOK, meta={}, ref="test", label="test", config=model.config)


def recorded(loaded: Loaded, ids: list[int], names: tuple[str, ...]) -> Recorder:
    rec = Recorder(list(names))
    with torch.no_grad():
        loaded.model(torch.tensor([ids]), rec=rec)
    return rec


def zero_head(head: int) -> Edits:
    return Edits({"blocks.0.attn.hook_z": lambda z: z.index_fill(2, torch.tensor([head]), 0.0)})


# -- Inspection ------------------------------------------------------------------------------------------
def test_clamp_keeps_valid_indices_and_sends_the_rest_to_zero() -> None:
    assert [clamp(i, 3) for i in (0, 1, 2, "2", 1.0)] == [0, 1, 2, 2, 1]
    for bad in (3, -1, 99, None, "x", "", object(), [1]):
        assert clamp(bad, 3) == 0, bad


def test_inspection_of_computes_strings_and_labels_and_clamps(loaded: Loaded) -> None:
    text = "to be, or not"
    ids = TOK.encode(text)
    names = ("logits",)
    rec = recorded(loaded, ids, names)
    insp = Inspection.of(loaded, [torch.tensor(i) for i in ids], rec, list(names), layer=1, head="1")
    assert insp.ids == tuple(ids) and all(type(i) is int for i in insp.ids)
    assert insp.strs == [TOK.token_str(i) for i in ids] and len(insp.strs) == len(text)
    assert insp.strs[2] == TOK.token_str(TOK.encode(" ")[0])
    assert insp.labels == unique_labels(insp.strs) and insp.labels[3] == f"3:{insp.strs[3]}"
    assert (insp.layer, insp.head) == (1, 1) and insp.names == names and insp.rec is rec
    assert insp.T == len(ids) and insp.model is loaded.model and insp.config is loaded.config
    assert insp.token_str(ids[0]) == TOK.token_str(ids[0]) and insp.edit is None
    L, H = loaded.config.n_layer, loaded.config.n_head
    for layer, head in ((L, H), (-1, -1), ("x", None), (99, 2.5), ([0], {})):
        out = Inspection.of(loaded, tuple(ids), rec, names, layer, head)
        assert (out.layer, out.head) == (0, 0), (layer, head)
    assert Inspection.of(loaded, tuple(ids), None, ()).rec is None


def test_inspection_key_tells_edits_apart(loaded: Loaded) -> None:
    ids = tuple(TOK.encode("abc"))

    def key(edit: Edits | None, **kw: Any) -> tuple:
        return Inspection.of(loaded, ids, None, ("logits",), edit=edit, **kw).key
    a, b = zero_head(0), zero_head(1)
    assert key(a) != key(b) and key(a) != key(None)
    assert key(None) == key(Edits()) and edit_key(None) == edit_key(Edits()) == ()
    assert key(a) == key(a) and edit_key(a) == a.key
    same_key = Edits({"blocks.0.attn.hook_z": lambda z: z}, key="noop")
    assert key(same_key) == key(Edits({"blocks.0.attn.hook_z": lambda z: z * 1}, key="noop"))  # the key's promise
    assert key(None, layer=1) != key(None, layer=0) and key(None, head=1) != key(None)
    assert key(None, layer=7) == key(None)  # clamped first: the same view


# -- app.resources.model_views ------------------------------------------------------------------------
def test_resources_model_views_is_computed_once_per_checkpoint(app_root: Path) -> None:
    from app import resources
    from app.views import layers as vl

    loaded = resources.load_model(str(app_root / "tiny-run"))
    first = resources.model_views(loaded)
    assert resources.model_views(loaded) is first
    assert resources.model_views(resources.load_model(str(app_root / "tiny-run"))) is first
    fresh = vl.model_views(loaded.model)
    torch.testing.assert_close(first[0], fresh[0])
    torch.testing.assert_close(first[1], fresh[1])
    other = resources.model_views(resources.load_model(str(best_dir(app_root / "tiny-run"))))
    assert other is not first  # another checkpoint has its own


# -- the Timeline's player ----------------------------------------------------------------------------
ITERS = [0, 10, 25]


def test_playback_plays_to_the_end_once() -> None:
    store: dict[str, Any] = {}
    pb = Playback(store, ITERS)
    keys = [pb.slider_key]
    assert pb.tick() is False and pb.current == 25 and not pb.playing  # unknown -> the last snapshot
    keys.append(pb.slider_key)
    pb.show(0)
    keys.append(pb.slider_key)
    pb.toggle()
    assert pb.playing and pb.current == 0 and pb.slider_key == keys[-1]  # Play mid-way: no jump
    assert pb.tick() is False and pb.current == 0  # the toggle's own rerun shows the current one
    assert pb.tick() is False and pb.current == 10 and pb.playing
    keys.append(pb.slider_key)
    assert pb.tick() is True and pb.current == 25 and not pb.playing  # stopped at the last
    keys.append(pb.slider_key)
    assert pb.tick() is False and pb.current == 25  # True only once
    assert pb.slider_key == keys[-1]
    assert len(set(keys)) == len(keys)  # every server move gave the slider a new key


def test_playback_holds_after_a_toggle_or_a_slide_and_starts_over_at_the_end() -> None:
    store: dict[str, Any] = {}
    pb = Playback(store, ITERS)
    pb.tick()
    assert pb.current == 25
    key = pb.slider_key
    pb.toggle()  # Play at the end: start over
    assert pb.playing and pb.current == 0 and pb.slider_key != key
    assert pb.tick() is False and pb.current == 0  # held once
    assert pb.tick() is False and pb.current == 10
    key = pb.slider_key
    store[key] = 0  # the user drags the slider back while playing
    pb.slid(key)
    assert pb.current == 0 and pb.slider_key == key  # the user's move keeps the slider's key
    assert pb.tick() is False and pb.current == 0  # held: the chosen snapshot shows first
    assert pb.tick() is False and pb.current == 10  # then playing goes on from there
    pb.toggle()  # Pause
    assert not pb.playing
    assert pb.tick() is False and pb.tick() is False and pb.current == 10
    store[ITER_KEY] = 7  # a snapshot that is gone (another run): the last one instead
    assert pb.tick() is False and pb.current == 25


# -- the selection decoder --------------------------------------------------------------------------
A, B = {"layer": 0, "head": 1}, {"layer": 1.0, "head": 0.0}


class AttrDict(dict):  # Streamlit's selection state answers both ["selection"] and .selection
    __getattr__ = dict.__getitem__


@pytest.mark.parametrize("event, want", [
    ({"selection": {"points": [A, B]}}, B),  # the event dict a chart call returns
    ({"points": [A]}, A),  # its .selection only
    (AttrDict(selection=AttrDict(points=[B, A])), A),  # session-state object
    (SimpleNamespace(selection=SimpleNamespace(points=[A, B])), B),  # attributes only, no mapping
    ([A, B], B),  # the bare item list
    (A, A),  # a single point given as a dict
    ({"selection": {"rows": [3, 5]}}, 5),  # a table's rows under its own name
], ids=["event", "selection", "attr-dict", "attributes", "list", "single", "other-name"])
def test_last_selected_unwraps_every_form(event: Any, want: Any) -> None:
    name = "rows" if want == 5 else "points"
    assert last_selected(event, name) == want


@pytest.mark.parametrize("event", [None, [], (), "points", {"selection": {"points": []}}, {"points": []},
                                   SimpleNamespace(), SimpleNamespace(selection=SimpleNamespace(points=[]))])
def test_last_selected_is_none_for_nothing(event: Any) -> None:
    assert last_selected(event, "points") is None


@pytest.mark.parametrize("event", [{}, {"selection": {}}], ids=["empty", "empty-selection"])
def test_last_selected_is_none_for_an_empty_event(event: Any) -> None:
    assert last_selected(event, "points") is None


def test_int_fields_reads_numbers_or_nothing() -> None:
    assert int_fields(B, "layer", "head") == (1, 0)
    assert int_fields({"layer": "2"}, "layer") == (2,)
    for bad in (None, "L1H0", [1, 2], {"layer": 1}, {"layer": "x", "head": 0}, {"layer": None, "head": 0}):
        assert int_fields(bad, "layer", "head") is None, bad


# -- run discovery for the Timeline (beyond tests/test_catalog.py) --------------------------------------
def test_run_of_finds_the_run_of_every_checkpoint(app_root: Path, tmp_path: Path) -> None:
    run = app_root / "tiny-run"
    iters = [it for it, _ in catalog.snapshots(run)]
    for ref in (run, str(run), latest_dir(run), best_dir(run), snapshot_dir(run, iters[0]),
                str(snapshot_dir(run, iters[-1]))):
        assert run_of(ref) == run, ref
    assert run_of(None) is None and run_of("") is None
    assert run_of(tmp_path / "nothing-here") is None and run_of(app_root) is None  # not runs
    assert run_of(tmp_path) is None


def test_timeline_runs_current_model_first_then_bundled_each_once(app_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 point 18: the Timeline opens on the model being inspected, not on the bundled one."""
    run = app_root / "tiny-run"
    other, bare = app_root / "other-run", app_root / "bare-run"
    shutil.copytree(run, other)
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("snapshots"))
    monkeypatch.setenv("NANOLENS_BUNDLED", str(best_dir(run)))
    got = catalog.timeline_runs(str(snapshot_dir(other, 10)))
    assert [(s.path, s.label) for s in got] == [(other, "other-run (current model)"), (run, "bundled · tiny-run")]
    # the current model in the bundled run: one entry, as the bundled one; the bare run stays out
    got = catalog.timeline_runs(str(latest_dir(run)))
    assert [(s.path, s.label) for s in got] == [(run, "bundled · tiny-run"), (other, "other-run")]
    monkeypatch.setenv("NANOLENS_BUNDLED", "")
    got = catalog.timeline_runs(str(best_dir(run)))
    assert [(s.path, s.label) for s in got][0] == (run, "tiny-run (current model)")
    assert sorted(s.path.name for s in got) == ["other-run", "tiny-run"]
    with_bare = catalog.timeline_runs(str(bare))  # the current model's run has no snapshots: not listed
    assert bare not in [s.path for s in with_bare] and with_bare == catalog.timeline_runs(None)
