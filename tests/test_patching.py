"""Activation patching: sweep against a per-cell loop of plain Edits (every site, both directions, a
source model, every metric), the clean-logits identity, one cell's logits, and each bad input's message."""
from __future__ import annotations

import copy

import pytest
import torch

from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.model import GPT
from gpt.patching import METRICS, SITES, logit_diff, loss, metric_named, patched_logits, prob, sweep
from gpt.record import Recorder

torch.set_num_threads(1)
T = 10
HOOK = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
        "head": "attn.hook_z", "head_pos": "attn.hook_z"}


def lively(seed: int, **over) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig.preset("tiny", **{"n_layer": 3, **over})).eval()
    with torch.no_grad():  # non-trivial biases and gains and lively weights, so that mistakes show
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.05))
    return m


@pytest.fixture(scope="module")
def model() -> GPT:
    return lively(0)


@pytest.fixture(scope="module")
def other(model: GPT) -> GPT:
    """Another 'checkpoint' of the same shape: the model with its weights moved a little."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.03)
    return m


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """A clean prompt and a corrupted one that differs at positions 4 and 6."""
    clean = torch.randint(0, 65, (T,), generator=torch.Generator().manual_seed(3))
    corrupt = clean.clone()
    corrupt[4], corrupt[6] = (clean[4] + 7) % 65, (clean[6] + 11) % 65
    return clean, corrupt


def loop_sweep(model: GPT, clean: torch.Tensor, corrupt: torch.Tensor, site: str, metric,
               source: GPT | None = None, direction: str = "denoise") -> torch.Tensor:
    """The reference: one full forward per cell, with a hand-written Edits function."""
    src_ids, tgt_ids = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    L, H, n = model.config.n_layer, model.config.n_head, clean.numel()
    rec = Recorder([f"blocks.*.{HOOK[site]}"], compact=False)
    with torch.no_grad():
        (source or model)(src_ids[None], rec=rec)
    cells = {"head": [(l, h) for l in range(L) for h in range(H)],
             "head_pos": [(l, h, p) for l in range(L) for h in range(H) for p in range(n)]}.get(
        site, [(l, p) for l in range(L) for p in range(n)])
    out = torch.zeros({"head": (L, H), "head_pos": (L, H, n)}.get(site, (L, n)))
    for cell in cells:
        name = f"blocks.{cell[0]}.{HOOK[site]}"
        s = rec[name]

        def fn(a, cell=cell, s=s):
            a = a.clone()
            if site == "head":
                a[:, :, cell[1]] = s[:, :, cell[1]]
            elif site == "head_pos":
                a[:, cell[2], cell[1]] = s[:, cell[2], cell[1]]
            else:
                a[:, cell[1]] = s[:, cell[1]]
            return a
        with torch.no_grad():
            logits, _ = model(tgt_ids[None], edit=Edits({name: fn}))
        out[cell] = value(metric, logits, clean)[0]
    return out


def value(metric, logits: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """A built-in Metric reads the clean ids (loss does); a plain callable takes logits alone."""
    return metric(logits, clean[None]) if hasattr(metric, "fn") else metric(logits)


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_sweep_equals_the_per_cell_loop(model: GPT, prompts, site: str, direction: str) -> None:
    clean, corrupt = prompts
    metric = logit_diff(5, 9)
    res = sweep(model, clean, corrupt, site, metric, direction=direction)
    ref = loop_sweep(model, clean, corrupt, site, metric, direction=direction)
    assert res.values.shape == ref.shape == {"head": (3, 2), "head_pos": (3, 2, T)}.get(site, (3, T))
    assert res.dims == SITES[site][1] and res.site == site and res.direction == direction
    torch.testing.assert_close(res.values, ref, atol=1e-5, rtol=1e-5)
    assert res.values.std() > 1e-3  # the patches matter
    # cells before the first corrupted position patch in what is there: not recomputed, still equal
    assert res.computed < res.values.numel() or site == "head"


@pytest.mark.parametrize("site", list(SITES))
def test_sweep_with_a_source_model_equals_the_loop(model: GPT, other: GPT, prompts, site: str) -> None:
    clean, corrupt = prompts
    metric = logit_diff(5, 9)
    for direction in ("denoise", "noise") if site == "resid_pre" else ("denoise",):
        res = sweep(model, clean, corrupt, site, metric, source_model=other, direction=direction)
        ref = loop_sweep(model, clean, corrupt, site, metric, source=other, direction=direction)
        torch.testing.assert_close(res.values, ref, atol=1e-5, rtol=1e-5)
        plain = sweep(model, clean, corrupt, site, metric, direction=direction)
        assert (res.values - plain.values).abs().max() > 1e-3  # the source model's values were used
        assert res.computed == res.values.numel()  # another model's activations differ everywhere
        assert (res.clean, res.corrupt) == (plain.clean, plain.corrupt)  # both baselines are `model`'s


@pytest.mark.parametrize("metric", [prob(7), loss(), logit_diff(3, 8, pos=5),
                                    lambda lg: lg[:, -3:, 2].sum(1) - lg[:, 0, 4]],
                         ids=["prob", "loss", "pos5", "callable"])
def test_every_metric_equals_the_loop(model: GPT, prompts, metric) -> None:
    clean, corrupt = prompts
    for site in ("resid_pre", "head"):
        res = sweep(model, clean, corrupt, site, metric)
        torch.testing.assert_close(res.values, loop_sweep(model, clean, corrupt, site, metric), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        lc, _ = model(clean[None], clean[None])
        lx, _ = model(corrupt[None], corrupt[None])
    assert res.clean == pytest.approx(float(value(metric, lc, clean)[0]), abs=1e-5)
    assert res.corrupt == pytest.approx(float(value(metric, lx, clean)[0]), abs=1e-5)
    if getattr(metric, "name", "") == "loss":  # loss() scores the clean prompt's next tokens
        assert res.clean == pytest.approx(float(torch.nn.functional.cross_entropy(lc[0, :-1], clean[1:])), abs=1e-5)


def test_normalized_and_the_single_token_identity(model: GPT) -> None:
    """One corrupted token: patching layer 0's residual at that position is the whole difference, so
    denoising it gives the clean run (normalized 1) and every other layer-0 cell changes nothing (0)."""
    clean = torch.arange(T) * 5 % 65
    corrupt = clean.clone()
    corrupt[6] = 40
    metric = logit_diff(5, 9)
    res = sweep(model, clean, corrupt, "resid_pre", metric)
    norm = res.normalized()
    torch.testing.assert_close(norm, (res.values - res.corrupt) / (res.clean - res.corrupt))
    assert norm[0, 6] == pytest.approx(1.0, abs=1e-4) and torch.all(norm[0, torch.arange(T) != 6] == 0)
    assert torch.all(norm[:, :6] == 0)  # before the corrupted token nothing differs
    noised = sweep(model, clean, corrupt, "resid_pre", metric, direction="noise")
    assert noised.values[0, 6] == pytest.approx(res.corrupt, abs=1e-5) and noised.normalized()[0, 0] == 1
    torch.testing.assert_close(res.clean_logits, model(clean[None], clean[None])[0][0].detach())
    torch.testing.assert_close(res.corrupt_logits, model(corrupt[None], corrupt[None])[0][0].detach())
    same = sweep(model, clean, clean, "head", metric)
    assert torch.all(same.values == same.clean) and same.computed == 0
    with pytest.raises(ValueError, match="same metric.*nothing to normalize against"):
        same.normalized()


@pytest.mark.parametrize("site, cell", [("resid_pre", (1, 7)), ("attn_out", (2, 4)), ("mlp_out", (0, 6)),
                                        ("head", (1, 0)), ("head_pos", (2, 1, 8))])
def test_patched_logits_of_one_cell(model: GPT, other: GPT, prompts, site: str, cell) -> None:
    clean, corrupt = prompts
    metric = prob(11)
    for source in (None, other):
        res = sweep(model, clean, corrupt, site, metric, source_model=source)
        logits = patched_logits(model, clean, corrupt, site, cell, source_model=source)
        assert logits.shape == (T, model.config.vocab_size)
        assert float(metric(logits[None])[0]) == pytest.approx(float(res.values[cell]), abs=1e-6)
        assert (logits - res.corrupt_logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match=f"a {site} cell is"):
        patched_logits(model, clean, corrupt, site, (9,) * len(cell))


def test_training_mode_is_restored_and_dropout_is_off(prompts) -> None:
    m = lively(1, dropout=0.5).train()
    clean, corrupt = prompts
    a = sweep(m, clean, corrupt, "head", prob(3))
    b = sweep(m, clean, corrupt, "head", prob(3))
    assert m.training and torch.equal(a.values, b.values)


def _vocab65(c: torch.Tensor) -> torch.Tensor:
    return torch.cat([c[:-1], torch.tensor([65])])


# name -> (clean, corrupted -> sweep's arguments after the model), the message it must give
BAD = {
    "different lengths": (lambda c, x: (c, x[:-1], "resid_pre"),
                          "clean prompt has 10 tokens and the corrupted prompt 9"),
    "id past the vocabulary": (lambda c, x: (c, _vocab65(x), "resid_pre"),
                               "corrupted prompt has token id 65 at position 9, outside the model's vocabulary 0..64"),
    "negative id": (lambda c, x: (torch.cat([torch.tensor([-1]), c[1:]]), x, "resid_pre"),
                    "clean prompt has token id -1 at position 0"),
    "unknown site": (lambda c, x: (c, x, "resid_post"), "unknown site 'resid_post'; choose one of resid_pre, attn_out"),
    "unknown direction": (lambda c, x: (c, x, "head", {"direction": "sideways"}), "direction must be 'denoise'"),
    "a batch of prompts": (lambda c, x: (c[None].expand(2, -1), x, "head"), r"shape \(T,\) or \(1, T\), got \(2, 10\)"),
    "float ids": (lambda c, x: (c.float(), x, "head"), "must be token ids"),
    "empty prompts": (lambda c, x: (c[:0], x[:0], "head"), "clean prompt is empty"),
    "longer than block_size": (lambda c, x: (torch.zeros(40, dtype=torch.long),) * 2 + ("head",),
                               "40 tokens; the model's block_size is 32"),
    "answer token past the vocabulary": (lambda c, x: (c, x, "head", {"metric": logit_diff(5, 70)}),
                                         "answer token 70 is outside the vocabulary"),
    "metric position past the prompt": (lambda c, x: (c, x, "head", {"metric": prob(5, pos=12)}),
                                        "reads position 12; the prompts have 10 tokens"),
    "metric returns one number": (lambda c, x: (c, x, "head", {"metric": lambda lg: lg[:, -1, 3].sum()}),
                                  r"one value per row, shape \(2,\); it returned \(\)"),
    "metric is not callable": (lambda c, x: (c, x, "head", {"metric": "logit_diff"}), "metric must be logit_diff"),
    "loss of one token": (lambda c, x: (c[:1], x[:1], "head", {"metric": loss()}),
                          r"loss\(\) needs a prompt of at least 2 tokens"),
    "source with fewer layers": (lambda c, x: (c, x, "head", {"source_model": lively(2, n_layer=2)}),
                                 r"source_model has a different shape: n_layer 2 \(source\) vs 3"),
    "source with other heads and width": (lambda c, x: (c, x, "head", {"source_model": lively(2, n_embd=32, n_head=4)}),
                                          r"n_head 4 \(source\) vs 2; n_embd 32 \(source\) vs 64"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_its_message(model: GPT, prompts, name: str) -> None:
    make, message = BAD[name]
    args = make(*prompts)
    kw = dict(args[3]) if len(args) > 3 else {}
    with pytest.raises(ValueError, match=message):
        sweep(model, *args[:3], kw.pop("metric", logit_diff(5, 9)), **kw)


def test_metric_named_builds_each_metric_and_refuses_others(model: GPT) -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits = model(ids, targets=ids)[0]  # (1, T, V)
    for name, want in (("logit_diff", logit_diff(5, 7)), ("prob", prob(5)), ("loss", loss())):
        got = metric_named(name, 5, 7)
        assert got.name == want.name and name in METRICS
        assert torch.equal(got(logits, ids), want(logits, ids))
    with pytest.raises(ValueError, match="unknown metric 'kl'; choose one of logit_diff, prob, loss"):
        metric_named("kl", 5, 7)
