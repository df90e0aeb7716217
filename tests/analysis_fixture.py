"""A run folder with analysis results whose answer is known by construction, for the Timeline 2.0
tests (AppTest and the browser): the analysis/ files are written with the job's own writers
(gpt.score_history.write_meta / write_windows / write_iter), with synthetic scores in which one
head's induction score jumps between two snapshots, real validation windows cut from the run's
text, and a metrics.jsonl whose val loss falls sharply once after a plateau.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt import score_history as sh
from gpt.checkpoint import load
from gpt.dataset_scores import SCORE_NAMES
from gpt.layout import analysis_dir

JUMP_HEAD = (1, 1)  # the head whose induction score jumps ...
JUMP_AT = 2  # ... between snapshot 1 and snapshot 2
N_WINDOWS, TOP_K = 6, 3


@dataclass(frozen=True)
class AnalysedRun:
    root: Path  # checkpoints root holding only this run
    run_dir: Path
    iters: tuple[int, ...]
    scores: dict[str, torch.Tensor]  # name -> (S, L, H), as written
    top: dict[str, list]  # name -> per snapshot [L][H] lists of (window, score), as written
    windows: list[list[int]]
    val: list[tuple[int, float]]  # the val losses written to metrics.jsonl


def synthetic_scores(S: int, L: int, H: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """{name: (S, L, H)}: small noise around a per-score level; JUMP_HEAD's induction scores rise by
    0.13 at snapshot JUMP_AT and stay up."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, name in enumerate(SCORE_NAMES):
        level = 3.0 if name == "entropy" else 0.01 + 0.05 * k
        out[name] = level + 0.004 * torch.rand(S, L, H, generator=g)
    for name in ("induction_random", "induction_natural"):
        out[name][JUMP_AT:, JUMP_HEAD[0], JUMP_HEAD[1]] += 0.13
    return out


def analysed_run(dest_root: Path, run_dir: Path, text: str) -> AnalysedRun:
    """A copy of the run at `run_dir` in `dest_root`, with analysis/ and a synthetic metrics.jsonl."""
    dest = dest_root / run_dir.name
    shutil.copytree(run_dir, dest)
    iters = tuple(sorted(int(p.name.split("_")[1]) for p in (dest / "snapshots").iterdir()))
    model, tok, _ = load(dest / "snapshots" / f"iter_{iters[-1]:07d}")
    L, H, T = model.config.n_layer, model.config.n_head, model.config.block_size
    ids = tok.encode(text[: 20 * T])
    windows = [ids[i * T: (i + 1) * T] for i in range(N_WINDOWS)]
    scores = synthetic_scores(len(iters), L, H)
    g = torch.Generator().manual_seed(1)
    top: dict[str, list] = {}
    for name in SCORE_NAMES:  # k windows per head, best first, scores near the head's mean
        top[name] = []
        for s in range(len(iters)):
            per = []
            for l in range(L):
                row = []
                for h in range(H):
                    pick = torch.randperm(N_WINDOWS, generator=g)[:TOP_K].tolist()
                    row.append([] if name == "induction_random" else  # as the job: random repeats are no window
                               [(w, float(scores[name][s, l, h]) + 0.01 * (TOP_K - r)) for r, w in enumerate(pick)])
                per.append(row)
            top[name].append(per)
    analysis_dir(dest).mkdir(exist_ok=True)
    sh.write_meta(dest, {"n_windows": N_WINDOWS, "block": T, "seed": 0, "data": "test", "scores": list(SCORE_NAMES),
                         "top_k": TOP_K, "created_at": "2026-12-03T00:00:00"})
    sh.write_windows(dest, windows)
    for s, it in enumerate(iters):
        sh.write_iter(dest, it, {n: scores[n][s] for n in SCORE_NAMES}, {n: top[n][s] for n in SCORE_NAMES})
    val = [(it, 4.0 - 0.3 * k if k < 4 else 3.0 - 0.001 * k) for k, it in enumerate(range(0, iters[-1] + 1, 2))]
    val[11:] = [(it, x - 0.5) for it, x in val[11:]]  # a sharp fall after a plateau, between iter 20 and 22
    with open(dest / "metrics.jsonl", "w", encoding="utf-8") as f:
        for it, x in val:
            f.write(json.dumps({"iter": it, "val_loss": x}) + "\n")
    return AnalysedRun(dest_root, dest, iters, scores, top, windows, val)
