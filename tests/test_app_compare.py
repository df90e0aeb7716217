"""The Compare page under AppTest with the tiny trained run (2 layers, 2 heads, snapshots at iters 0,
10, 25, 30): it opens on the run's first and last snapshot, and its differences (pattern, KL, lens,
head terms) equal the two checkpoints run directly; every tab renders; one model on two prompts is
compared on their common length; the sidebar's edit runs on both sides and is said; a model of
another shape or tokenizer is compared where that makes sense, with the reasons for the rest. Also
the page's pure helpers (choices, the default pair, where an edit applies)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.views import compare as vc
from tests.test_app_attribution import charts  # the plotly figures on the page by title
from gpt import attribution, compare
from gpt.checkpoint import load, save
from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGE = "screens/compare.py"
OTHER_PROMPT = "ROMEO:\nBut soft, what light"  # not a default prompt (those follow the tokenizer), under a block


def rerun(at: AppTest, **state) -> AppTest:
    """Set `state` in the session, run the page, and check it raised nothing."""
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(**state) -> AppTest:
    return rerun(AppTest.from_file(MAIN, default_timeout=120).switch_page(PAGE), **state)


def array(z) -> np.ndarray:
    """A trace's z as sent: plotly writes numpy arrays as base64 with their dtype and shape."""
    if isinstance(z, dict):
        a = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
        return a.reshape([int(s) for s in str(z.get("shape", a.size)).split(",")])
    return np.array(z, dtype=float)


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "info", "warning", "error", "caption")
                     for e in getattr(at, kind))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def run_direct(path: Path | str, text: str, names: list[str], edit: Edits | None = None):
    """The checkpoint at `path` on `text` (its last block), run here without the app: (model, ids, rec)."""
    model, tok, _ = load(path)
    ids = tok.encode(text)[-model.config.block_size:]
    rec = Recorder(names)
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec, edit=edit)
    return model, ids, rec


def test_opens_on_the_first_and_last_snapshot_and_the_diff_is_theirs(app_root: Path, tiny_checkpoint) -> None:
    at = open_page()
    run = app_root / "tiny-run"
    first, last = (run / "snapshots" / f"iter_{it:07d}" for it in (tiny_checkpoint.iters[0], tiny_checkpoint.iters[-1]))
    assert at.session_state["cmp_mode"] == vc.TWO_CHECKPOINTS
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == (str(first), str(last))
    prompt = at.session_state["prompt"]
    (_, ids, ra), (_, _, rb) = (run_direct(p, prompt, ["blocks.*.attn.hook_pattern", "logits"]) for p in (first, last))
    figs = charts(at)
    assert {"A · L0H0 pattern", "B · L0H0 pattern", "B − A · L0H0 pattern", "How differently each head attends (B vs A)"} <= set(figs)
    want = (rb["blocks.0.attn.hook_pattern"][0, 0] - ra["blocks.0.attn.hook_pattern"][0, 0]).numpy()  # (T, T)
    got = array(figs["B − A · L0H0 pattern"]["data"][0]["z"])
    lower = np.tril(np.ones_like(want, dtype=bool))
    assert got.shape == want.shape and np.allclose(got[lower], want[lower], atol=1e-6) and np.isnan(got[~lower]).all()
    kl = compare.kl_per_position(ra["logits"], rb["logits"])
    assert metric(at, "Mean KL(A ‖ B)") == f"{float(kl.mean()):.3f} nats" and float(kl.mean()) > 0.01
    assert metric(at, "Positions compared") == f"{len(ids)} of {len(ids)} / {len(ids)}"
    assert "cmp_a" in at.session_state and not at.info  # nothing skipped: one run, one shape, one tokenizer


def test_every_tab_renders_and_its_numbers_are_the_checkpoints(app_root: Path, tiny_checkpoint) -> None:
    at = open_page()
    a_ref, b_ref = at.session_state["cmp_a"], at.session_state["cmp_b"]
    prompt = at.session_state["prompt"]
    want_titles = {"Logit lens": "B − A · p(actual next token)", "Next token": "Per position: KL(A ‖ B)",
                   "Head scores": "B − A · previous-token", "Attribution (DLA)": "B − A · head terms"}
    for tab, title in want_titles.items():
        rerun(at, cmp_tab=tab)
        assert any(t.startswith(title) for t in charts(at)), (tab, list(charts(at)))
        assert [b.proto.label for b in at.get("download_button")][-3:] == ["Data (NPZ)", "Data (CSV)", "Open as notebook"]  # on every tab
    # Next token: the KL bars are the two checkpoints' KL at each position
    rerun(at, cmp_tab="Next token")
    (_, ids, ra), (_, _, rb) = (run_direct(p, prompt, ["logits"]) for p in (a_ref, b_ref))
    bars = next(f for t, f in charts(at).items() if t.startswith("Per position"))["data"][0]
    assert array(bars["y"]).tolist() == pytest.approx(compare.kl_per_position(ra["logits"], rb["logits"]).tolist(), rel=1e-5)
    # DLA: the head-term difference is dla(B) - dla(A) of A's top guess at the last position
    rerun(at, cmp_tab="Attribution (DLA)")
    token = at.selectbox(key=f"cmp_token_{len(ids) - 1}").value
    assert token == int(ra["logits"][0, -1].argmax())
    grids = []
    for ref in (a_ref, b_ref):
        model, ids, _ = run_direct(ref, prompt, ["logits"])
        grids.append(attribution.dla(model, ids, len(ids) - 1, token).heads(2, 2))
    got = array(charts(at)["B − A · head terms"]["data"][0]["z"])
    assert np.allclose(got, (grids[1] - grids[0]).numpy(), atol=1e-5)
    # Head scores: induction is per checkpoint and named as such
    rerun(at, cmp_tab="Head scores", cmp_score="induction")
    assert "B − A · induction" in charts(at) and "measured per checkpoint" in texts(at)


def test_one_model_two_prompts_compares_their_common_length(app_root: Path) -> None:
    at = open_page(prompt="To be, or not to be", cmp_mode=vc.TWO_PROMPTS, cmp_prompt_b="To be, or not")
    assert metric(at, "Positions compared") == "13 of 19 / 13"
    assert "first 13 positions" in texts(at)
    assert metric(at, "Mean KL(A ‖ B)") == "0.000 nats"  # one model, the same first 13 tokens
    rerun(at, cmp_prompt_b="So be, or not")
    assert float(metric(at, "Mean KL(A ‖ B)").split()[0]) > 0
    diff = charts(at)["B − A · L0H0 pattern"]
    assert diff["data"][0]["x"][0] == "0:T|S"  # both prompts' tokens where they differ
    rerun(at, cmp_tab="Head scores", cmp_score="induction")
    assert "One checkpoint on both sides" in texts(at)


def test_the_sidebar_edit_runs_on_both_sides(app_root: Path) -> None:
    at = open_page()
    at.checkbox(key="iv_h_0_0").check()
    rerun(at)
    assert "The sidebar edit (1 head ablated (zero)) applies to both sides." in texts(at)
    _, _, rec = run_direct(at.session_state["cmp_a"], at.session_state["prompt"], ["logits"],
                           Edits().ablate_heads(0, [0]))
    _, ids, _ = run_direct(at.session_state["cmp_a"], at.session_state["prompt"], ["logits"])
    want = float(compare.loss_per_position(rec["logits"], ids).mean())
    assert metric(at, "Loss A") == f"{want:.3f} nats"


def other_model(root: Path, kind: str) -> Path:
    """A random checkpoint outside the catalog (as a path or an upload would be): 3 layers x 4 heads,
    with GPT-2's BPE ("gpt2") or a smaller character vocabulary that splits text as the run's does."""
    tok = GPT2Tokenizer() if kind == "gpt2" else CharTokenizer(sorted(set(OTHER_PROMPT)))
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", n_layer=3, n_head=4, vocab_size=tok.vocab_size))
    return save(root / f"other-{kind}", model, tok)


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_a_model_of_another_shape_or_tokenizer_says_what_is_skipped(app_root: Path, kind: str) -> None:
    other = other_model(app_root.parent, kind)
    prompt, T = OTHER_PROMPT, len(OTHER_PROMPT)  # one token per character in the run's tokenizer
    at = open_page(model_ref=str(other), prompt=prompt)
    assert at.session_state["cmp_mode"] == vc.TWO_PROMPTS  # the current model has no snapshots
    rerun(at, cmp_mode=vc.TWO_CHECKPOINTS, cmp_a=str(app_root / "tiny-run"), cmp_b=str(other))
    assert at.selectbox(key="cmp_b").value == str(other)  # the current model is offered (an upload, a path)
    info = "\n".join(i.value for i in at.info)
    assert "Per-head differences (head scores, DLA head terms): the models have 2x2 and 3x4" in info
    if kind == "gpt2":
        assert f"split the prompt into {T} and" in info and metric(at, "Positions compared").startswith("0 of")
        assert metric(at, "Mean KL(A ‖ B)") == "—" and "B − A · L0H0 pattern" not in charts(at)
    else:
        assert "the tokenizers differ" in info and metric(at, "Mean KL(A ‖ B)") == "—"
        assert metric(at, "Positions compared") == f"{T} of {T} / {T}"
        assert "B − A · L0H0 pattern" in charts(at)  # positions line up: attention is differenced
    for tab in vc.TABS[1:]:
        rerun(at, cmp_tab=tab)
        assert not any(t.startswith("B − A · head terms") or t.startswith("B − A · previous") for t in charts(at))
    assert "each side attributes its own top guess" in texts(at)


# -- the page's pure helpers -------------------------------------------------------------------------
def test_choices_put_the_current_model_first_and_list_each_checkpoint_once() -> None:
    got = vc.choices(("/up/x", "upload · x"), [("run", [(0, "/r/s0"), (10, "/r/s10")])],
                     [("/r", "run · latest"), ("/r/s0", "run · iter 0"), ("/b", "bundled · b")])
    assert got == {"/up/x": "upload · x (current model)", "/r/s0": "run · iter 0", "/r/s10": "run · iter 10",
                   "/r": "run · latest", "/b": "bundled · b"}
    assert vc.default_pair([(0, "/r/s0"), (5, "/r/s5"), (10, "/r/s10")]) == ("/r/s0", "/r/s10")
    assert vc.default_pair([(0, "/r/s0")]) is None


def test_an_edit_applies_only_to_the_sides_it_was_made_for(tiny_checkpoint) -> None:
    from app.inspection import Loaded

    def loaded(model, tok) -> Loaded:
        return Loaded(model=model, tokenizer=tok, meta={}, ref="x", label="x", config=model.config)

    model, tok, _ = load(tiny_checkpoint.latest)
    cur = loaded(model, tok)
    wide = loaded(GPT(GPTConfig.preset("tiny", n_head=4)), tok)
    e = Edits().ablate_heads(0, [1])
    ea, eb, note = vc.side_edits(e, cur, cur, wide)
    assert ea is e and eb is None
    assert note.startswith("The sidebar edit (1 head ablated (zero)) applies to side A only.") and "2x2" in note
    assert vc.side_edits(None, cur, cur, cur) == (None, None, None)


def test_figures_are_valid_plotly() -> None:
    z = torch.tensor([[0.0, float("nan")], [0.2, -0.1]])
    for fig in (vc.diff_figure(z, ["a", "b"], ["a", "b"], "t", "Δ", "key", "query", [["", "x"], ["y", ""]]),
                vc.grid_figure(z.nan_to_num(), "t", "Δ"), vc.grid_figure(z.nan_to_num(), "t", "s", 0.0, 1.0, (1, 0))):
        go.Figure(fig.to_dict())  # validates every property
    assert vc.grid_figure(torch.full((2, 2), 0.001), "t", "Δ").data[0].zmax == 0.05  # tiny differences stay pale
