"""The bundled model (checkpoints/shakespeare-char) loads, has its snapshots, fits the size budget,
and meets its val-loss bound on the last 10% of Tiny Shakespeare."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gpt.checkpoint import list_snapshots, load

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "checkpoints" / "shakespeare-char"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
VAL_LOSS_BOUND = 1.70


def test_bundled_folder_shape() -> None:
    assert (BUNDLED / "latest" / "model.safetensors").is_file(), "the bundled model is missing"
    snaps = list_snapshots(BUNDLED)
    iters = [it for it, _ in snaps]
    assert len(snaps) >= 8 and iters[0] == 0, iters
    assert not (BUNDLED / "latest" / "optimizer.pt").exists()  # the shipped copy leaves it out
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"bundled folder is {size / 2**20:.1f} MiB, budget 25 MiB"


def test_bundled_weights_are_fp16_on_disk() -> None:
    from safetensors import safe_open
    with safe_open(str(BUNDLED / "latest" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}


def test_bundled_val_loss_on_last_tenth() -> None:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (../shared absent): cannot check the val loss")
    model, tok, meta = load(BUNDLED)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    val = ids[int(0.9 * len(ids)):]  # nanoGPT's split: the last 10%
    T = model.config.block_size
    n = (len(val) - 1) // T
    x = val[: n * T].view(n, T)  # (n, T) non-overlapping windows covering the whole split
    y = val[1: n * T + 1].view(n, T)
    losses = []
    with torch.no_grad():
        for i in range(0, n, 64):
            _, loss = model(x[i:i + 64], targets=y[i:i + 64])
            losses.append(loss.item() * x[i:i + 64].size(0))
    val_loss = sum(losses) / n
    assert val_loss <= VAL_LOSS_BOUND, f"val loss {val_loss:.4f} > {VAL_LOSS_BOUND}"
    # the recorded training figure and this independent evaluation agree
    assert abs(val_loss - meta["val_loss"]) < 0.05, (val_loss, meta["val_loss"])


def test_bundled_generates_shakespeare_like_text() -> None:
    from gpt.generate import generate
    model, tok, _ = load(BUNDLED)
    out = tok.decode(generate(model, tok.encode("ROMEO:\n"), 200, temperature=0.8, top_k=40, seed=0))
    words = out.split()
    common = {"the", "and", "to", "I", "of", "my", "a", "you", "that", "in", "is", "not", "me", "with", "be"}
    assert sum(w.strip(",.;:!?'").lower() in {c.lower() for c in common} for w in words) >= 5, out
    assert any(re.fullmatch(r"[A-Z][A-Z ]+:", line.strip()) for line in out.splitlines()[1:]), out  # "PETRUCHIO:"
