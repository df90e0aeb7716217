"""app/export_generation.py: the Generate (default and Steer), Compare and Walkthrough pages' tables
hold the numbers an independent recompute gives (full forwards, hand-written KL, loss, LayerNorm),
survive the NPZ and CSV round trips with their labels, and each page's notebook runs as a plain
script in a subprocess and saves the same arrays (1e-5). Teacher forcing is checked too: each
KV-cached step's logits equal the full forward's at that position (1e-4)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from app import components
from app import export_generation as eg
from app import exporting as ex
from app.catalog import REPO
from app.generation import GenerationSession, Settings
from app.inspection import Inspection, Loaded
from app.steering_pair import SteeringPair
from app.tracecache import record_forward
from app.views import compare as vc
from gpt.checkpoint import load, snapshot_dir
from gpt.edit import Edits
from gpt.generate import Generator, sampling_distribution
from gpt.record import Recorder
from gpt.steering import steering_edit, token_direction
from tests.test_notebooks import loaded, run_notebook, same  # noqa: F401 (loaded: a fixture)

torch.set_num_threads(1)
BUNDLED = REPO / "checkpoints" / "shakespeare-char"
TEXT = "ROMEO:\nBut soft, what light"


def round_trips(tables: list[ex.Table]) -> dict[str, ex.Table]:
    """NPZ (values and labels) and CSV (numeric tables, exactly) give the tables back; by name."""
    back = ex.read_npz(ex.to_npz(tables))
    with zipfile.ZipFile(io.BytesIO(components._csv_zip(tables))) as z:
        csvs = {n[:-4]: z.read(n) for n in z.namelist()}
    for t in tables:
        assert back[t.name].tolist() == t.values.tolist() or np.array_equal(back[t.name], t.values, equal_nan=True)
        for axis, labels in t.axes:
            assert back[f"{t.name}.{axis}"].tolist() == list(labels)
        if t.values.dtype.kind not in "US":
            labels, vals = ex.read_csv(csvs[t.name], t.values.ndim)
            assert labels == [list(ls) for _, ls in t.axes], t.name
            assert np.array_equal(vals, t.values.astype(float), equal_nan=True), t.name
    return {t.name: t for t in tables}


def full_logits(loaded: Loaded, ids, edit=None) -> torch.Tensor:
    rec = Recorder(["logits"])
    with torch.no_grad():
        loaded.model(torch.tensor([list(ids)]), rec=rec, edit=edit)
    return rec["logits"][0].float()  # (T, V)


def insp_of(loaded: Loaded, ids, names=(), edit=None, layer=0, head=0) -> Inspection:
    rec = record_forward(loaded.model, ids, names, edit) if names else None
    return Inspection.of(loaded, tuple(ids), rec, tuple(names), layer, head, edit)


# -- Generate ---------------------------------------------------------------------------------------------
def test_kv_cached_steps_see_the_full_forwards_logits(loaded: Loaded) -> None:
    """Teacher forcing, which the notebook relies on: the logits a cached step drew from are the full
    forward's at the position before the token (1e-4), past the context window too (own window)."""
    B = loaded.config.block_size
    prompt = loaded.tokenizer.encode((TEXT + " ") * 12)[: B - 3]
    gen = Generator(loaded.model, prompt, temperature=0.9, seed=3)
    steps = [gen.step() for _ in range(6)]  # three inside the window, three after it slid
    seq = gen.ids
    inside = full_logits(loaded, seq[:B])  # (B, V)
    for s in steps:
        want = inside[s.pos - 1] if s.pos <= B else full_logits(loaded, seq[s.pos - B:s.pos])[-1]
        torch.testing.assert_close(s.logits, want, atol=1e-4, rtol=0)
    assert steps[-1].cropped and not steps[0].cropped


def generation(loaded: Loaded, prompt, settings: Settings, edit=None, n: int = 5):
    session = GenerationSession({}, "gen", top_k_shown=10)
    session.sync(loaded, prompt, settings, edit)
    session.step(n)
    alt = next(i for i in session.state.steps[-1].top_ids.tolist() if i != session.state.ids[-1])
    session.force(alt)  # the last token forced
    return session.sync(loaded, prompt, settings, edit)


def test_generate_tables_are_the_steps_and_a_full_forward_recomputes_them(loaded: Loaded) -> None:
    prompt = loaded.tokenizer.encode(TEXT)
    settings = Settings(temperature=0.8, top_k=5, top_p=0.95, seed=7)
    gs = generation(loaded, prompt, settings)
    insp = insp_of(loaded, gs.ids)
    t = round_trips(eg.page_tables("generate", insp, {"state": gs, "sampling": settings, "k": 10}))
    assert t["sequence_id"].values.tolist() == gs.ids
    assert t["step_forced"].values.tolist() == [0] * 4 + [1]  # force replaced the fifth token
    assert t["step_token_id"].axes[0][1][0] == f"{len(prompt)}:{loaded.tokenizer.token_str(gs.ids[len(prompt)])}"
    logits = full_logits(loaded, gs.ids)  # (T, V): independent of the KV cache
    probs = sampling_distribution(logits[len(prompt) - 1:-1], 0.8, 5, 0.95)  # (n, V)
    chosen = torch.tensor(gs.ids[len(prompt):])
    np.testing.assert_allclose(t["step_prob"].values, probs.gather(1, chosen[:, None])[:, 0].numpy(), atol=1e-5)
    top = t["step_top_id"].values
    assert (top[:, 5:] == -1).all() and (t["step_top_token"].values[:, 5:] == "").all()  # top-k 5: the rest undrawable
    np.testing.assert_allclose(t["step_top_prob"].values[:, :5], torch.topk(probs, 5).values.numpy(), atol=1e-5)
    att = t["last_step_attention"]
    assert att.values.shape == (loaded.config.n_layer, loaded.config.n_head, len(gs.ids) - 1)
    np.testing.assert_allclose(att.values.sum(-1), 1.0, atol=1e-5)  # each head's row is a distribution


def test_generate_notebook_replays_past_the_window_under_an_edit(loaded: Loaded, tmp_path: Path) -> None:
    B = loaded.config.block_size
    prompt = loaded.tokenizer.encode((TEXT + " ") * 12)[: B - 3]
    edit = Edits().ablate_heads(1, [0, 2])
    settings = Settings(temperature=1.0, top_k=0, top_p=1.0, seed=11)
    gs = generation(loaded, prompt, settings, edit, n=6)  # the last steps slid the window
    assert gs.steps[-1].cropped
    insp = insp_of(loaded, gs.ids, edit=edit)
    s = {"state": gs, "sampling": settings, "k": 10}
    text = eg.page_notebook("generate", insp, s, loaded)
    assert "ablate_heads" in text.decode() and str(BUNDLED.resolve()) in text.decode()
    same(eg.page_tables("generate", insp, s), run_notebook(text, tmp_path))


def test_steer_mode_exports_both_columns_and_the_kl(loaded: Loaded, tmp_path: Path) -> None:
    prompt = loaded.tokenizer.encode(TEXT)
    settings = Settings(temperature=0.9, seed=5)
    sv = token_direction(loaded.model, loaded.tokenizer.encode("e")[0])
    pair = SteeringPair({}, "steer", top_k_shown=8)
    steer = steering_edit(loaded.model, sv, 6.0, 2, "resid_pre")
    pair.sync(loaded, prompt, settings, None, steer)
    pair.step(4)
    pair.force("steered", loaded.tokenizer.encode("x")[0])
    gd, gs, kl = pair.sync(loaded, prompt, settings, None, steer)
    s = {"state": gd, "steered": gs, "kl": kl, "sampling": settings, "k": 8,
         "steer": {"vector": sv.vector, "alpha": 6.0, "layer": 2, "site": "resid_pre"}}
    insp = insp_of(loaded, gd.ids)
    t = round_trips(eg.page_tables("generate", insp, s))
    assert t["steered_step_forced"].values.tolist() == [0, 0, 0, 1] and t["default_step_forced"].values.sum() == 0
    # KL(steered || default) by hand, each column's distribution on its own text
    ld, ls = full_logits(loaded, gd.ids)[len(prompt) - 1:-1], full_logits(loaded, gs.ids, steer)[len(prompt) - 1:-1]
    want = (F.softmax(ls.double(), -1) * (F.log_softmax(ls.double(), -1) - F.log_softmax(ld.double(), -1))).sum(-1)
    np.testing.assert_allclose(t["kl"].values, want.numpy(), atol=1e-5)
    assert float(want.min()) > 0  # the steering changed every distribution
    same(eg.page_tables("generate", insp, s), run_notebook(eg.page_notebook("generate", insp, s, loaded), tmp_path))


# -- Compare -------------------------------------------------------------------------------------------------
def sides(loaded: Loaded, two_prompts: bool) -> tuple[Inspection, Inspection]:
    """A: the bundled model; B: its snapshot at iter 1000 on the same prompt, or the bundled model on a
    longer second prompt. A recorded for the DLA tab (no patterns: the export records them itself)."""
    other = loaded
    if not two_prompts:
        m, t, meta = load(snapshot_dir(BUNDLED, 1000))
        other = Loaded(m.eval(), t, meta, str(snapshot_dir(BUNDLED, 1000)), "iter 1000", m.config)
    ids_b = loaded.tokenizer.encode(TEXT + " through yonder" if two_prompts else TEXT)
    a = insp_of(loaded, loaded.tokenizer.encode(TEXT), vc.DLA_NAMES, layer=2, head=1)
    return a, insp_of(other, ids_b, vc.NAMES, layer=2, head=1)


@pytest.mark.parametrize("two_prompts", [False, True])
def test_compare_tables_equal_a_recompute_and_the_notebook(loaded: Loaded, tmp_path: Path, two_prompts: bool) -> None:
    a, b = sides(loaded, two_prompts)
    s = {"b": b, "pos": 4}
    t = round_trips(eg.page_tables("compare", a, s))
    la, lb = full_logits(a.loaded, a.ids), full_logits(b.loaded, b.ids)
    n = min(a.T, b.T)
    want_kl = (F.softmax(la[:n].double(), -1) * (F.log_softmax(la[:n].double(), -1) - F.log_softmax(lb[:n].double(), -1))).sum(-1)
    np.testing.assert_allclose(t["kl"].values, want_kl.numpy(), atol=1e-5)
    np.testing.assert_allclose(t["loss_b"].values, F.cross_entropy(lb[:-1], torch.tensor(b.ids[1:]), reduction="none"),
                               atol=1e-5)
    np.testing.assert_allclose(t["next_a"].values, F.softmax(la[4], -1).numpy(), atol=1e-5)
    pa = record_forward(a.model, a.ids, ["blocks.2.attn.hook_pattern"])["blocks.2.attn.hook_pattern"][0]  # (H, T, T)
    pb = record_forward(b.model, b.ids, ["blocks.2.attn.hook_pattern"])["blocks.2.attn.hook_pattern"][0]
    np.testing.assert_allclose(t["pattern_diff"].values, (pb[1, :n, :n] - pa[1, :n, :n]).numpy() * np.where(
        np.tril(np.ones((n, n))) > 0, 1, np.nan), atol=1e-5)
    tv = 0.5 * (pa[:, 1:n, :n] - pb[:, 1:n, :n]).abs().sum(-1).mean(-1)  # (H,) total variation, queries 1..n-1
    np.testing.assert_allclose(t["head_distance"].values[2], tv.numpy(), atol=1e-5)
    assert t["kl"].axes[0][1] == tuple(a.labels[:n])  # the tokens agree on the compared positions
    assert ("lens_target_diff" in t) and t["lens_target_diff"].values.shape == (a.config.n_layer + 1, n)
    text = eg.page_notebook("compare", a, s, a.loaded)
    assert "CHECKPOINT_B" in text.decode()
    same(eg.page_tables("compare", a, s), run_notebook(text, tmp_path))


# -- Walkthrough ---------------------------------------------------------------------------------------------
def test_walkthrough_tables_equal_the_models_own_maths(loaded: Loaded) -> None:
    ids = loaded.tokenizer.encode(TEXT)
    full = record_forward(loaded.model, ids, None)  # every name, independent of the page's recording
    blk = loaded.model.transformer.h[1]

    def tables(stage: str) -> dict[str, ex.Table]:
        return round_trips(eg.page_tables("walkthrough", insp_of(loaded, ids, layer=1, head=3), {"stage": stage}))

    ln2 = tables("ln2")
    want = F.layer_norm(full["blocks.1.hook_resid_mid"][0], (loaded.config.n_embd,), blk.ln_2.weight, blk.ln_2.bias)
    np.testing.assert_allclose(ln2["values"].values, want.detach().numpy(), atol=1e-5)
    post = tables("resid_post")
    np.testing.assert_allclose(post["values"].values, (full["blocks.1.hook_resid_mid"] + full["blocks.1.hook_mlp_out"])[0],
                               atol=1e-5)
    np.testing.assert_allclose(post["norm_before"].values, full["blocks.1.hook_resid_mid"][0].norm(dim=-1), atol=1e-5)
    attn = tables("attn")
    np.testing.assert_allclose(attn["attn_pattern"].values, full["blocks.1.attn.hook_pattern"][0, 3], atol=1e-5)
    assert attn["head_norms"].values.shape == (len(ids), loaded.config.n_head)
    logits = tables("logits")
    assert logits["values"].axes[1][1][0] == f"0:{loaded.tokenizer.token_str(0)}"
    np.testing.assert_allclose(logits["values"].values, full["logits"][0], atol=1e-5)
    with torch.no_grad():
        loss = loaded.model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))[1]  # forward(x, y)
    assert abs(float(logits["train_loss"].values.mean()) - float(loss)) < 1e-5
    assert list(tables("ids")) == ["ids", "train_loss", "train_target_prob", "train_target_rank"]


@pytest.mark.parametrize("stage", ["attn", "ln1", "resid_mid", "mlp"])
def test_walkthrough_notebook_recomputes_the_stage(loaded: Loaded, tmp_path: Path, stage: str) -> None:
    ids = loaded.tokenizer.encode(TEXT)
    edit = Edits().ablate_mlp(0) if stage == "mlp" else None
    insp = insp_of(loaded, ids, edit=edit, layer=2, head=1)
    text = eg.page_notebook("walkthrough", insp, {"stage": stage}, loaded)
    same(eg.page_tables("walkthrough", insp, {"stage": stage}), run_notebook(text, tmp_path))


def test_bad_requests_say_what_to_do(loaded: Loaded) -> None:
    with pytest.raises(ValueError, match="needs the page's Inspection"):
        ex.page_tables("generate", None, {})
    with pytest.raises(ValueError, match="no notebook here"):
        eg.page_notebook("home", insp_of(loaded, [1, 2]), {})
    tensor_edit = Edits().add("blocks.0.hook_resid_post", torch.ones(loaded.config.n_embd))
    with pytest.raises(ValueError, match="turn it off in the sidebar"):
        eg.page_notebook("walkthrough", insp_of(loaded, [1, 2], edit=tensor_edit), {"stage": "ids"})
