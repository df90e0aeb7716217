"""gpt.tuned_lens: at initialization the tuned lens IS the logit lens (bit for bit, and against
gpt.analysis.logit_lens); KL, rank and entropy against slow per-position loops; the view's chunked
comparison against one pass; save/load round trip, a lens of another shape refused, damaged files."""
from __future__ import annotations

import json
import math

import pytest
import torch

from app.views import lens as vlens
from gpt import tuned_lens as tl
from gpt.analysis import lens_logits, logit_lens
from gpt.checkpoint import load
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder


@pytest.fixture(scope="module")
def traced(tiny_checkpoint):
    """(model, ids, recording, rows (L+1, T, C)) of a text window through the tiny run's latest."""
    model, tok, _ = load(tiny_checkpoint.latest)
    model.eval()
    ids = tok.encode(tiny_checkpoint.text[1000:1032])
    rec = Recorder(tl.NEEDS)
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec)
    return model, ids, rec, tl.residual_rows(rec, model.config.n_layer)


def random_lens(model: GPT, seed: int = 0, scale: float = 0.05) -> tl.TunedLens:
    g = torch.Generator().manual_seed(seed)
    lens = tl.TunedLens(model.config.n_layer, model.config.n_embd)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * scale)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g) * scale)
    return lens


def test_at_initialization_the_tuned_lens_is_the_logit_lens(traced):
    model, ids, rec, rows = traced
    lens = tl.TunedLens(model.config.n_layer, model.config.n_embd)
    assert torch.equal(lens.weight, torch.zeros_like(lens.weight)) and torch.equal(lens.bias, torch.zeros_like(lens.bias))
    with torch.no_grad():
        assert torch.equal(lens(rows), rows)  # identity, bit for bit
        tuned, logit = tl.lens_log_probs(model, rows, lens), tl.lens_log_probs(model, rows)
    assert torch.equal(tuned, logit)
    ref = logit_lens(model, rec, k=5, ids=ids)  # gpt.analysis's own logit lens, an independent path
    table = tl.lens_table(tuned, list(range(len(ids))), ids, k=5)
    assert table.layers == ref.layers and torch.equal(table.top_ids, ref.top_ids)
    torch.testing.assert_close(table.top_probs, ref.top_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(table.target_probs, ref.target_probs, atol=1e-6, rtol=0, equal_nan=True)
    # the last row is the model's own output distribution
    with torch.no_grad():
        x = torch.tensor([ids])
        logits, _ = model(x, torch.zeros_like(x))  # (targets: logits at every position)
    torch.testing.assert_close(tuned[-1], torch.log_softmax(logits[0], -1), atol=1e-5, rtol=0)
    assert tl.measures(tuned).kl[-1].abs().max() == 0


def test_translator_is_h_plus_Ah_plus_b(traced):
    model, _, _, rows = traced
    lens = random_lens(model)
    with torch.no_grad():
        out = lens(rows)
    L = model.config.n_layer
    for layer in range(L):
        for t in (0, 7, rows.size(1) - 1):
            h = rows[layer, t].double()
            want = h + lens.weight[layer].double() @ h + lens.bias[layer].double()
            torch.testing.assert_close(out[layer, t].double(), want, atol=1e-5, rtol=0)
    assert torch.equal(out[L], rows[L])  # no translator on the final row
    with pytest.raises(tl.LensError, match=r"takes \(L\+1, N, C\)"):
        lens(rows[:L])


def test_measures_against_per_position_loops(traced):
    model, _, _, rows = traced
    lens = random_lens(model, seed=1, scale=0.2)
    with torch.no_grad():
        logp = tl.lens_log_probs(model, rows, lens)
    m = tl.measures(logp)
    R, T, V = logp.shape
    for r in range(R):
        for t in range(T):
            x = lens_logits(model, lens(rows[:, t:t + 1])[r, 0]).double()  # (V,) independently from the logits
            p = torch.softmax(x, 0).tolist()
            f = torch.softmax(lens_logits(model, rows[R - 1, t]).double(), 0).tolist()
            kl = sum(fv * (math.log(fv) - math.log(pv)) for fv, pv in zip(f, p) if fv > 0)
            top = max(range(V), key=lambda v: f[v])
            rank = 1 + sum(1 for v in range(V) if p[v] > p[top])
            ent = -sum(pv * math.log(pv) for pv in p if pv > 0)
            assert m.kl[r, t].item() == pytest.approx(kl, abs=2e-4), (r, t)
            assert m.rank[r, t].item() == rank, (r, t)
            assert m.entropy[r, t].item() == pytest.approx(ent, abs=2e-4), (r, t)
    assert torch.all(m.rank[-1] == 1) and torch.all(m.kl[-1] == 0)


def test_view_compare_chunks_equal_one_pass(traced):
    model, ids, _, rows = traced
    lens = random_lens(model, seed=2)
    pos = [3, 4, 5, 30, 31]
    a = vlens.compare(model, rows, lens, pos, ids, chunk=7)  # chunks that split the window
    b = vlens.compare(model, rows, lens, pos, ids, chunk=1000)
    for x, y in ((a.logit, b.logit), (a.tuned, b.tuned)):
        assert torch.equal(x.top_ids, y.top_ids) and x.positions == pos
        torch.testing.assert_close(x.top_probs, y.top_probs, atol=1e-6, rtol=0)
    for f in ("kl", "rank", "entropy"):
        torch.testing.assert_close(getattr(a.tuned_m, f).float(), getattr(b.tuned_m, f).float(), atol=1e-5, rtol=0)
    assert vlens.compare(model, rows, None, pos, ids).tuned is None
    fig = vlens.measures_figure(a, a.logit.layers)
    import plotly.graph_objects as go

    go.Figure(fig.to_dict())  # valid plotly
    assert len(fig.data) == 6 and [d.name for d in fig.data[:2]] == ["logit lens", "tuned lens"]
    assert list(fig.data[0].y) == pytest.approx(a.logit_m.kl.mean(1).tolist())


def test_save_load_round_trip_and_refusals(traced, tmp_path, tiny_config):
    model, _, _, rows = traced
    lens = random_lens(model, seed=3)
    fp = tl.model_fingerprint(model)
    tl.save_lens(lens, tmp_path, {"model_sha256": fp, "checkpoint": "latest"})
    back = tl.load_lens(tmp_path, model)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert back.meta["n_layer"] == model.config.n_layer and tl.fits(back, model)
    with torch.no_grad():
        assert torch.equal(back(rows), lens(rows))
    assert not list(tmp_path.glob(".*.tmp")) and tl.load_lens(tmp_path / "none") is None
    # the same weights, another model: not this lens's
    other = GPT(tiny_config)
    assert not tl.fits(back, other)
    # another shape: refused with what to do
    wide = GPT(GPTConfig(**{**tiny_config.__dict__, "n_embd": 32, "n_head": 2}))
    with pytest.raises(tl.LensError, match="2 layers and width 64; this model has 2 layers and width 32: fit"):
        tl.load_lens(tmp_path, wide)
    assert not tl.fits(back, wide)
    # damaged files
    w = tmp_path / tl.WEIGHTS_FILE
    good = w.read_bytes()
    w.write_bytes(good[:-4] + b"\0\0\0\0")
    with pytest.raises(tl.LensError, match="sha256 differs"):
        tl.load_lens(tmp_path)
    w.write_bytes(good)
    meta = json.loads((tmp_path / tl.META_FILE).read_text())
    (tmp_path / tl.META_FILE).write_text(json.dumps(dict(meta, format="x")))
    with pytest.raises(tl.LensError, match="not a nanolens tuned lens"):
        tl.load_lens(tmp_path)
    (tmp_path / tl.META_FILE).write_text("{")
    with pytest.raises(tl.LensError, match="not readable JSON"):
        tl.load_lens(tmp_path)


def test_fingerprint_is_of_the_weights(tiny_checkpoint):
    a = load(tiny_checkpoint.latest)[0]
    b = load(tiny_checkpoint.latest)[0]
    c = load(tiny_checkpoint.snapshot(0))[0]
    assert tl.model_fingerprint(a) == tl.model_fingerprint(b) != tl.model_fingerprint(c)
    assert tl.lens_home(tiny_checkpoint.latest) == tiny_checkpoint.run_dir
    assert tl.lens_home(tiny_checkpoint.snapshot(10)) == tiny_checkpoint.run_dir
