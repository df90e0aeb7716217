"""Phase-change markers (gpt/phase.py) on synthetic series whose answer is known by construction,
checked against brute-force loops, and a head's per-query score terms (gpt/head_examples.py)
against their definitions written out position by position."""
from __future__ import annotations

import math

import pytest
import torch

from gpt import phase
from gpt.head_examples import focus_query, query_terms

ITERS = [0, 10, 25, 50, 100, 250, 500, 1000, 2500]


def noise(S: int, L: int, H: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.01 + scale * torch.rand(S, L, H, generator=g)  # (S, L, H) near 0.01


def test_the_marker_finds_the_jump_and_says_it_in_words() -> None:
    v = noise(len(ITERS), 2, 3, 0.004)
    v[7:, 1, 2] += 0.12  # L1H2 forms between iter 500 and 1000
    m = phase.score_marker(ITERS, v, "induction_random")
    assert m is not None and m.kind == "score" and m.head == (1, 2)
    assert (m.start, m.end) == (500, 1000)
    assert m.before == pytest.approx(float(v[6, 1, 2])) and m.after == pytest.approx(float(v[7, 1, 2]))
    assert m.text == (f"L1H2's induction score rose from {float(v[6, 1, 2]):.2f} to {float(v[7, 1, 2]):.2f} "
                      "between iter 500 and 1000")


def test_a_jump_over_several_dense_snapshots_is_reported_whole() -> None:
    iters = [0, 1000, 1100, 1200, 1300, 1400, 2500]
    v = noise(len(iters), 4, 4, 0.003, seed=1)
    rise = torch.tensor([0.0, 0.0, 0.03, 0.08, 0.11, 0.12, 0.12])  # steps 0.03, 0.05, 0.03, 0.01
    v[:, 1, 2] += rise
    m = phase.score_marker(iters, v, "induction_random")
    # the largest step (1100 -> 1200) widened over the neighbours moving up by >= 25% of it (0.0125)
    assert m is not None and m.head == (1, 2) and (m.start, m.end) == (1000, 1300)
    assert m.change == pytest.approx(float(v[4, 1, 2] - v[1, 1, 2]))
    only_step = phase.score_marker(iters, v, "induction_random", spread=1.01)  # no neighbour qualifies
    assert only_step is not None and (only_step.start, only_step.end) == (1100, 1200)


def test_flat_noise_below_the_threshold_gives_no_marker_and_says_why() -> None:
    v = noise(len(ITERS), 2, 2, 0.02, seed=2)  # steps of at most 0.02 < 0.05
    assert phase.score_marker(ITERS, v, "induction_random") is None
    note = phase.quiet_note(ITERS, v, "induction_random")
    jump = phase.largest_jump(ITERS, v, "induction_random")
    assert note.startswith("No head's induction score changed by 0.05 or more between snapshots")
    assert jump is not None and jump.text in note
    # a lower threshold turns the same largest step into a marker
    assert phase.score_marker(ITERS, v, "induction_random", threshold=abs(jump.change)) == jump
    assert "One snapshot only" in phase.quiet_note([0], v[:1], "sink")


def test_largest_step_matches_a_brute_force_search() -> None:
    for seed in range(5):
        v = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(seed))
        iters = [0, 5, 7, 20, 21, 40]
        best = max(((abs(float(v[s + 1, l, h] - v[s, l, h])), s, l, h)
                    for s in range(5) for l in range(3) for h in range(2)))
        m = phase.largest_jump(iters, v, "self", spread=1.01)
        _, s, l, h = best
        assert m is not None and m.head == (l, h) and (m.start, m.end) == (iters[s], iters[s + 1])
        assert ("rose" in m.text) == (float(v[s + 1, l, h]) > float(v[s, l, h]))


def test_entropy_falls_in_bits_with_its_own_threshold() -> None:
    v = 3.0 + noise(5, 2, 2, 0.1, seed=3)
    v[3:, 0, 1] -= 2.0  # L0H1 focuses: entropy falls 2 bits between iter 25 and 50
    m = phase.score_marker(ITERS[:5], v, "entropy")
    assert m is not None and m.head == (0, 1) and m.change < 0
    assert "L0H1's attention entropy fell from" in m.text and m.text.endswith("bits between iter 25 and 50")
    assert phase.score_marker(ITERS[:5], noise(5, 2, 2, 0.4, seed=4), "entropy") is None  # 0.4 < 0.5 bits


def test_top_movers_rank_by_range_over_training() -> None:
    v = torch.rand(7, 3, 4, generator=torch.Generator().manual_seed(5))
    span = {(l, h): float(v[:, l, h].max() - v[:, l, h].min()) for l in range(3) for h in range(4)}
    want = sorted(span, key=lambda k: -span[k])[:4]
    assert phase.top_movers(v, 4) == want


def test_bad_series_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="3 iterations but 4"):
        phase.largest_jump([0, 1, 2], torch.zeros(4, 1, 1), "self")
    with pytest.raises(ValueError, match="must increase"):
        phase.loss_bumps([0, 5, 5], [1.0, 0.9, 0.8])
    with pytest.raises(ValueError, match="snapshots, layers, heads"):
        phase.largest_jump([0, 1], torch.zeros(2, 3), "self")


# -- loss bumps ------------------------------------------------------------------------------------
EVALS = list(range(0, 5001, 250))


def smooth_curve(its: list[int]) -> list[float]:
    return [1.5 + 2.5 * math.exp(-t / 800) for t in its]  # a healthy, ever-slower fall


def test_a_healthy_loss_curve_has_no_bump() -> None:
    assert phase.loss_bumps(EVALS, smooth_curve(EVALS)) == []


def test_a_sharp_drop_after_a_plateau_and_a_late_rise_are_found() -> None:
    loss = [4.0 - 0.002 * t if t <= 1000 else 2.0 - 0.00002 * (t - 1000) for t in EVALS]  # a plateau from 1000
    i = EVALS.index(2500)
    loss[i + 1:] = [x - 0.4 for x in loss[i + 1:]]  # a sharp fall between 2500 and 2750
    loss[-2:] = [loss[-3] + 0.03, loss[-3] + 0.06]  # and a rise at the end (overfitting)
    bumps = phase.loss_bumps(EVALS, loss, "val")
    drops = [m for m in bumps if m.change < 0]
    rises = [m for m in bumps if m.change > 0]
    assert [(m.start, m.end) for m in drops] == [(2500, 2750)]
    assert drops[0].text.startswith(f"The val loss fell sharply from {loss[i]:.2f} to {loss[i + 1]:.2f} "
                                    "between iter 2500 and 2750")
    assert [(m.start, m.end) for m in rises] == [(EVALS[-3], EVALS[-1])]
    assert rises[0].text == (f"The val loss rose from {loss[-3]:.2f} to {loss[-1]:.2f} between iter "
                             f"{EVALS[-3]} and {EVALS[-1]}")


def test_eval_noise_below_the_thresholds_is_not_a_bump() -> None:
    g = torch.Generator().manual_seed(6)
    loss = [x + 0.004 * float(torch.randn(1, generator=g)) for x in smooth_curve(EVALS)]
    assert phase.loss_bumps(EVALS, loss) == []


def test_metric_bumps_prefer_val_and_smooth_a_per_batch_train_loss() -> None:
    loss = [2.0 if t <= 2500 else 1.6 for t in EVALS]  # a step down at 2750
    series = {"val": (EVALS, loss), "train (eval)": (EVALS, [x - 0.05 for x in loss])}
    (m,) = phase.metric_bumps(series)  # the same drop in both: said once, by the val loss
    assert m.name == "val" and (m.start, m.end) == (2500, 2750) and "after a plateau" in m.text

    g = torch.Generator().manual_seed(7)
    its = list(range(0, 5000, 10))
    train = [(2.0 if t < 2600 else 1.6) + 0.05 * float(torch.randn(1, generator=g)) for t in its]
    (m,) = [b for b in phase.metric_bumps({"train": (its, train)}) if b.change < 0]
    assert m.name == "train" and m.start < 2600 <= m.end and "train loss fell sharply" in m.text
    assert phase.metric_bumps({}) == []


# -- a head's query terms --------------------------------------------------------------------------
def causal_pattern(T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(T, T, generator=g).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1)  # (T, T) rows sum to 1, zero above the diagonal


def test_query_terms_match_their_definitions() -> None:
    T, ids = 9, [3, 1, 4, 1, 5, 3, 1, 4, 1]
    p = causal_pattern(T, 8)
    want = {"prev_token": lambda t: p[t, t - 1], "sink": lambda t: p[t, 0], "self": lambda t: p[t, t],
            "entropy": lambda t: -sum(float(x) * math.log2(float(x)) for x in p[t, : t + 1] if x > 0),
            "induction_natural": lambda t: sum(float(p[t, j]) for j in range(1, t) if ids[j - 1] == ids[t])}
    for score, f in want.items():
        got = query_terms(p, ids, score)
        assert math.isnan(float(got[0])), score
        assert got[1:].tolist() == pytest.approx([float(f(t)) for t in range(1, T)], abs=1e-6), score
    with pytest.raises(ValueError, match="unknown score"):
        query_terms(p, ids, "nope")


def test_focus_query_opens_where_the_head_copies() -> None:
    ids = [7, 2, 9, 5, 7, 2, 9, 5]  # "7 2 9 5" twice
    T = len(ids)
    p = torch.eye(T)  # every query on itself ...
    p[6] = 0.0
    p[6, 3] = 1.0  # ... except position 6 (token 9), which looks at the token after its earlier 9
    assert focus_query(p, ids, "induction_natural") == 6
    assert focus_query(torch.eye(T), list(range(T)), "induction_natural") == T - 1  # no repeat: last
    assert focus_query(p, ids, "entropy") in range(1, T)
