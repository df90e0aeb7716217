"""app/exporting.py: labelled arrays to CSV and NPZ and back, and each page's tables equal to the
recorder's values (the same numbers the page draws)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app import exporting as ex
from app.inspection import Inspection, Loaded
from app.tracecache import record_forward
from app.views import attention as va
from app.views import layers as vl
from app.views import tokens as vt
from gpt import analysis, attribution, patching
from gpt.checkpoint import load
from gpt.edit import Edits
from gpt.generate import sampling_distribution
from app.catalog import REPO

BUNDLED = REPO / "checkpoints" / "shakespeare-char"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def loaded() -> Loaded:
    model, tok, meta = load(BUNDLED)
    return Loaded(model.eval(), tok, meta, str(BUNDLED), "bundled", model.config)


def insp_of(loaded: Loaded, names, text: str = "ROMEO:\nBut soft", layer: int = 2, head: int = 1,
            edit: Edits | None = None) -> Inspection:
    ids = tuple(loaded.tokenizer.encode(text))
    return Inspection.of(loaded, ids, record_forward(loaded.model, ids, names, edit), names, layer, head, edit)


# -- files ------------------------------------------------------------------------------------------------
def test_npz_round_trip_keeps_values_labels_and_needs_no_pickle() -> None:
    vals = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    toks = np.array([["a", "é"], ["⏎", "·x"]])
    t1 = ex.table("pattern", vals, ("query", ["0:a", "1:b", "2:c"]), ("key", list("wxyz")))
    t2 = ex.table("tokens", toks, ("row", ["r0", "r1"]), ("rank", ["1", "2"]))
    back = ex.read_npz(ex.to_npz([t1, t2]))  # read with allow_pickle=False
    assert np.array_equal(back["pattern"], vals) and back["pattern"].dtype == np.float32
    assert back["pattern.query"].tolist() == ["0:a", "1:b", "2:c"] and back["pattern.key"].tolist() == list("wxyz")
    assert back["tokens"].tolist() == toks.tolist()


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_csv_round_trip_is_exact_with_labels(shape: tuple[int, ...]) -> None:
    vals = np.random.default_rng(1).standard_normal(shape)
    vals.flat[0] = -np.inf  # masked scores above the diagonal are -inf
    axes = [(f"ax{i}", [f"{i}:{j}," for j in range(n)]) for i, n in enumerate(shape)]  # commas get quoted
    t = ex.table("x", vals, *axes)
    labels, back = ex.read_csv(ex.to_csv(t), len(shape))
    assert labels == [list(ls) for _, ls in t.axes]
    assert np.array_equal(back, vals)


def test_bad_tables_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="needs 2 axes|need 2 axes"):
        ex.table("x", np.zeros((2, 2)), ("a", ["0", "1"]))
    with pytest.raises(ValueError, match="has 1 labels for 2 values"):
        ex.table("x", np.zeros(2), ("a", ["0"]))
    with pytest.raises(ValueError, match="identifier"):
        ex.table("a.b", np.zeros(1), ("a", ["0"]))
    with pytest.raises(ValueError, match="no tables for page"):
        ex.page_tables("home", None, {})
    assert ex.filename("next_token", "layer_patterns", "csv") == "nanolens-next-token-layer-patterns.csv"


def close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float rounding: a recording of other names takes another (equally exact) path."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- each page's tables against the recorder ----------------------------------------------------------------
def test_attention_tables_are_the_recorded_pattern_and_scores(loaded: Loaded) -> None:
    insp = insp_of(loaded, va.NAMES)
    got = ex.read_npz(ex.to_npz(ex.page_tables("attention", insp, {"query": 3})))
    rec = record_forward(loaded.model, insp.ids, ["blocks.2.attn.hook_pattern", "blocks.2.attn.hook_attn_scores"])
    pat = rec["blocks.2.attn.hook_pattern"][0]  # (H, T, T)
    close(got["pattern"], pat[1].numpy())
    close(got["scores"], rec["blocks.2.attn.hook_attn_scores"][0, 1].numpy())
    close(got["query_row"], pat[1, 3].numpy())
    close(got["layer_patterns"], pat.numpy())
    assert got["pattern.query"].tolist() == insp.labels and got["layer_patterns.head"].tolist() == ["H0", "H1", "H2", "H3"]
    assert np.allclose(got["pattern"].sum(-1), 1.0, atol=1e-5)  # rows of a softmax
    lazy = Inspection.of(loaded, insp.ids, None, va.NAMES, 2, 1)  # a page that records nothing up front
    again = ex.read_npz(ex.to_npz(ex.page_tables("attention", lazy, {"query": 3})))
    assert sorted(again) == sorted(got)
    for k in got:
        close(again[k], got[k]) if got[k].dtype.kind == "f" else np.testing.assert_array_equal(again[k], got[k])


def test_layers_tables_are_the_norms_and_the_lens(loaded: Loaded) -> None:
    insp = insp_of(loaded, vl.NAMES)
    got = ex.read_npz(ex.to_npz(ex.page_tables("layers", insp, {})))
    full = record_forward(loaded.model, insp.ids, None)
    resid = full["blocks.3.hook_resid_post"][0]  # (T, C): the norm by hand
    assert np.allclose(got["norm_resid_post"][3], resid.norm(dim=-1).numpy(), atol=1e-5)
    lens = analysis.logit_lens(loaded.model, full, k=5, ids=insp.ids)
    assert np.allclose(got["lens_top_prob"], lens.top_probs.numpy(), atol=1e-5)
    last = torch.softmax(full["logits"][0].float(), -1)  # the last row of the lens is the model's output
    assert np.allclose(got["lens_top_prob"][-1, :, 0], last.max(-1).values.numpy(), atol=1e-5)
    assert got["lens_top_token"][-1, 0, 0] == loaded.tokenizer.token_str(int(last[0].argmax()))
    assert got["lens_top_prob.row"].tolist()[0] == "embed"


def test_next_token_tables_are_the_distribution(loaded: Loaded) -> None:
    insp = insp_of(loaded, vt.NAMES)
    got = ex.read_npz(ex.to_npz(ex.page_tables("next_token", insp, {"pos": 4, "temperature": 0.7})))
    logits = insp.rec["logits"][0]
    assert np.allclose(got["distribution"], sampling_distribution(logits[4], 0.7).numpy(), atol=1e-7)
    assert got["distribution.token"][0].startswith("0:") and len(got["distribution"]) == loaded.config.vocab_size
    p = torch.softmax(logits.float(), -1)[torch.arange(insp.T - 1), torch.tensor(insp.ids[1:])]
    assert np.allclose(got["surprise_bits"], (-torch.log2(p)).numpy(), atol=1e-4)


def test_attribution_tables_sum_to_the_logit_under_an_edit(loaded: Loaded) -> None:
    edit = Edits().ablate_heads(1, [0])
    insp = insp_of(loaded, tuple(attribution.NEEDS), edit=edit)
    tok = int(insp.rec["logits"][0, -1].argmax())
    got = ex.read_npz(ex.to_npz(ex.page_tables("attribution", insp, {"pos": insp.T - 1, "token": tok})))
    assert got["dla"].sum() == pytest.approx(float(insp.rec["logits"][0, -1, tok]), abs=1e-3)
    assert got["dla_heads"][1, 0] == 0.0  # the ablated head wrote nothing
    assert "L1H0" in got["dla.component"].tolist()


def test_patch_tables_are_the_sweep(loaded: Loaded) -> None:
    tok = loaded.tokenizer
    clean, corrupt = tok.encode("ROMEO: but"), tok.encode("JULIET: but")[:10]
    res = patching.sweep(loaded.model, clean, corrupt, "head", patching.metric_named("loss", 0, 0))
    got = ex.read_npz(ex.to_npz(ex.page_tables("patch", None, {"result": res, "labels": [str(i) for i in clean],
                                                              "n_head": loaded.config.n_head})))
    assert np.array_equal(got["patch"], res.values.numpy()) and got["patch.layer"].tolist()[0] == "L0"
    assert np.allclose(got["patch_normalized"], res.normalized().numpy())
