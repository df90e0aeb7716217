"""The second bundled model (checkpoints/shakespeare-induction), trained on shakespeare-repeats:
it fits the size budget, keeps snapshots dense through its phase change, and shows the change on
held-out data. At its first snapshot no head does induction (max score <= 0.02) and a repeated
passage is no easier the second time; at its last an induction head scores >= 0.10 and the second
copy of a held-out passage costs at least 0.3 nats less than the first."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt.checkpoint import list_snapshots, load
from gpt.heads import induction_scores
from trainers.data import REPEAT_MARK, TRAIN_FRACTION

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "checkpoints" / "shakespeare-induction"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
SIZE_BUDGET = 25 * 10 ** 6  # bytes: "<= 25 MB", read strictly (25 MiB would allow 26.2e6)
FIRST_MAX, LAST_MIN, COPY_GAIN = 0.02, 0.10, 0.3  # the bounds
PASSAGE, N_PASSAGES = 100, 16  # characters per held-out passage, passages averaged


@pytest.fixture(scope="module")
def induction() -> dict[int, float]:
    """{iter: the largest induction score of any head} at every snapshot (random repeated tokens,
    gpt.heads.induction_scores' defaults: 100 tokens twice, 4 sequences, seed 0; no corpus needed)."""
    out = {}
    for it, path in list_snapshots(BUNDLED):
        model, _, _ = load(path)
        out[it] = float(induction_scores(model).max())
    return out


def held_out_passages() -> list[str]:
    """N_PASSAGES passages of PASSAGE characters, evenly spread over the raw last 10% of Tiny
    Shakespeare, which shakespeare-repeats keeps out of training (it splits before it repeats)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (../shared absent): cannot check "
                    "the copy loss on held-out text")
    raw = SHAKESPEARE.read_text(encoding="utf-8")
    val = raw[int(len(raw) * TRAIN_FRACTION):]
    return [val[i * (len(val) - PASSAGE) // N_PASSAGES:][:PASSAGE] for i in range(N_PASSAGES)]


@torch.no_grad()
def copy_losses(path: Path, passages: list[str], sep: str) -> tuple[float, float]:
    """(mean loss on the first copy, on the second) of each passage p given as p + sep + p; both
    over the same targets, p's characters 1..n-1, so the two numbers compare like with like."""
    model, tok, _ = load(path)
    n, k = PASSAGE, len(sep)
    ids = torch.tensor([tok.encode(p + sep + p) for p in passages])  # (P, 2n+k)
    x, y = ids[:, :-1], ids[:, 1:].contiguous()  # (P, 2n+k-1) each
    logits, _ = model(x, targets=y)  # with targets: logits at every position, (P, 2n+k-1, V)
    ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (P, 2n+k-1)
    return ce[:, :n - 1].mean().item(), ce[:, n + k:].mean().item()


def test_folder_shape_size_and_corpus() -> None:
    assert (BUNDLED / "latest" / "model.safetensors").is_file(), "the induction model is missing"
    assert not (BUNDLED / "latest" / "optimizer.pt").exists()  # the shipped copy leaves it out
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert size <= SIZE_BUDGET, f"{BUNDLED.name} is {size / 1e6:.1f} MB, budget {SIZE_BUDGET / 1e6:.0f} MB"
    from safetensors import safe_open
    with safe_open(str(BUNDLED / "latest" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    model, tok, _ = load(BUNDLED)
    run_config = json.loads((BUNDLED / "config.json").read_text(encoding="utf-8"))
    assert run_config["data"]["name"] == "shakespeare-repeats" and tok.kind == "char"
    assert tok.encode(REPEAT_MARK) and model.config.n_layer == 4  # the mark is a plain character


def test_induction_appears_between_first_and_last_snapshot(induction: dict[int, float]) -> None:
    iters = sorted(induction)
    assert iters[0] == 0 and len(iters) >= 10, iters
    assert induction[iters[0]] <= FIRST_MAX, induction
    assert induction[iters[-1]] >= LAST_MIN, induction
    # dense through the jump: from the last snapshot still without induction to the first with it,
    # snapshots are at most 250 iterations apart
    before = max(it for it in iters if induction[it] <= FIRST_MAX)
    after = min(it for it in iters if it > before and induction[it] >= LAST_MIN)
    inside = [it for it in iters if before <= it <= after]
    assert all(b - a <= 250 for a, b in zip(inside, inside[1:])), (inside, induction)


@pytest.mark.parametrize("sep", ["", REPEAT_MARK], ids=["plain-repeat", "marked-repeat"])
def test_second_copy_of_a_held_out_passage_is_cheaper(sep: str) -> None:
    passages = held_out_passages()
    iters = [it for it, _ in list_snapshots(BUNDLED)]
    first0, second0 = copy_losses(dict(list_snapshots(BUNDLED))[iters[0]], passages, sep)
    first, second = copy_losses(dict(list_snapshots(BUNDLED))[iters[-1]], passages, sep)
    assert abs(first0 - second0) < 0.05, (first0, second0)  # untrained: no copying at all
    assert first - second >= COPY_GAIN, (first, second)
    assert first < first0  # and it learned the language too
