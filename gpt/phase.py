"""Phase-change markers: where in training something changed fast, said in words.

Two kinds, both pure (numbers in, `Marker`s and sentences out; no torch model, no files):
  score jumps  for one head score tracked over a run's snapshots, (S, L, H) values at S iterations
               (gpt.score_history.ScoreHistory.scores[name], or the Timeline's per-snapshot head
               scores), the interval between snapshots with the largest change of any one head:
               "L1H2's induction score rose from 0.01 to 0.13 between iter 1000 and 2500".
  loss bumps   from a run's logged losses (trainers.metrics.Metrics.series: name -> (iters, losses)):
               a loss that rose between two evals, or one that fell sharply, faster per iteration than
               in the interval before (a healthy loss curve falls ever more slowly; a mechanism
               forming breaks that, as in Olsson et al. 2022's induction bump).

A score jump is the largest single step between consecutive snapshots, widened over the neighbouring
steps where the same head keeps moving the same way by at least `spread` of that step, so a change
spread over densely kept snapshots is reported whole. It is a marker only when the change reaches a
threshold (THRESHOLDS: 0.05 for the attention-mass scores, whose range is 0..1; 0.5 bits for
entropy); below it `quiet_note` says in words that nothing moved.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

# How a score reads in a sentence ("L1H2's <words> rose ..."). Both the analysis job's names
# (gpt.score_history) and the Timeline's per-snapshot head scores (gpt.heads.HeadScores) are known.
SCORE_WORDS: dict[str, str] = {
    "prev_token": "previous-token score",
    "induction_random": "induction score",
    "induction_natural": "induction score on natural repeats",
    "induction": "induction score",
    "sink": "first-token (sink) score",
    "first_token": "first-token (sink) score",
    "self": "self-attention score",
    "entropy": "attention entropy",
}
UNITS: dict[str, str] = {"entropy": " bits"}
DEFAULT_THRESHOLD = 0.05  # attention-mass scores are mean weights in 0..1
THRESHOLDS: dict[str, float] = {"entropy": 0.5}  # bits
SPREAD = 0.25  # a neighbouring step counts as part of the jump from this fraction of the largest step
LOSS_WORDS: dict[str, str] = {"val": "val loss", "train (eval)": "train loss (eval)", "train": "train loss"}
RISE = 0.02  # nats: a loss that rises this much between two evals is more than eval noise
DROP = 0.05  # nats: the least fall that can count as a sharp drop ...
ACCEL = 2.0  # ... when it is this many times faster per iteration than the interval before
SMOOTH_BINS = 20  # a per-batch train loss is averaged into this many bins before looking for bumps


@dataclass(frozen=True)
class Marker:
    """One change: `kind` "score" (a head's score) or "loss" (a logged loss); `name` the score name
    or the loss series ("val", "train (eval)", "train"); from iteration `start` to `end` the value
    went from `before` to `after`; `head` is (layer, head) for a score, None for a loss; `text`
    says it in one sentence."""
    kind: str
    name: str
    start: int
    end: int
    before: float
    after: float
    head: tuple[int, int] | None
    text: str

    @property
    def change(self) -> float:
        return self.after - self.before


def _num(x: float, name: str) -> str:
    return f"{x:.2f}{UNITS.get(name, '')}"


def _check(iters: Sequence[float], n: int, what: str) -> None:
    if len(iters) != n:
        raise ValueError(f"{what}: {len(iters)} iterations but {n} values")
    if any(b <= a for a, b in zip(iters, iters[1:])):
        raise ValueError(f"{what}: iterations must increase, got {list(iters)}")


def _widen(steps: torch.Tensor, i: int, spread: float) -> tuple[int, int]:
    """The run of steps around step i (steps: (S-1,) of one head) moving the same way as step i by
    at least `spread` of it: (first step, last step), inclusive."""
    d = float(steps[i])
    ok = [float(s) * d > 0 and abs(float(s)) >= spread * abs(d) for s in steps]
    a = b = i
    while a > 0 and ok[a - 1]:
        a -= 1
    while b < len(ok) - 1 and ok[b + 1]:
        b += 1
    return a, b


def largest_jump(iters: Sequence[int], values: torch.Tensor, name: str, spread: float = SPREAD) -> Marker | None:
    """The largest change of any one head between consecutive snapshots, widened (see the module
    docstring), as a Marker whatever its size; None with fewer than two snapshots.
    values: (S, L, H) float, the score `name` of layer l head h at iters[s]."""
    v = torch.as_tensor(values).detach().float().cpu()
    if v.dim() != 3:
        raise ValueError(f"{name}: expected (snapshots, layers, heads) scores, got shape {tuple(v.shape)}")
    _check(iters, v.shape[0], name)
    S, L, H = v.shape
    if S < 2:
        return None
    steps = (v[1:] - v[:-1]).reshape(S - 1, L * H)  # (S-1, L*H): change of each head per interval
    flat = int(steps.abs().nan_to_num(-1.0).argmax())  # layer-major head index over (interval, head)
    i, k = divmod(flat, L * H)
    a, b = _widen(steps[:, k], i, spread)
    l, h = divmod(k, H)
    before, after = float(v[a, l, h]), float(v[b + 1, l, h])
    start, end = int(iters[a]), int(iters[b + 1])
    verb = "rose" if after >= before else "fell"
    words = SCORE_WORDS.get(name, f"{name} score")
    text = f"L{l}H{h}'s {words} {verb} from {_num(before, name)} to {_num(after, name)} between iter {start} and {end}"
    return Marker("score", name, start, end, before, after, (l, h), text)


def threshold_of(name: str) -> float:
    """The least change of a head's `name` score that makes a marker."""
    return THRESHOLDS.get(name, DEFAULT_THRESHOLD)


def score_marker(iters: Sequence[int], values: torch.Tensor, name: str, threshold: float | None = None,
                 spread: float = SPREAD) -> Marker | None:
    """largest_jump when its change is at least `threshold` (default threshold_of(name)); else None."""
    jump = largest_jump(iters, values, name, spread)
    thr = threshold_of(name) if threshold is None else threshold
    return jump if jump is not None and abs(jump.change) >= thr else None


def quiet_note(iters: Sequence[int], values: torch.Tensor, name: str, threshold: float | None = None) -> str:
    """In words, why there is no marker for `name`: "No head's induction score changed by 0.05 or
    more between snapshots (the largest change: L0H1's ... rose from 0.01 to 0.02 between iter 10
    and 25)." Also says when there are too few snapshots."""
    jump = largest_jump(iters, values, name)
    thr = threshold_of(name) if threshold is None else threshold
    words = SCORE_WORDS.get(name, f"{name} score")
    if jump is None:
        return f"One snapshot only: no change of the {words} to mark."
    return (f"No head's {words} changed by {_num(thr, name)} or more between snapshots (the largest "
            f"change: {jump.text}).")


def top_movers(values: torch.Tensor, k: int = 4) -> list[tuple[int, int]]:
    """The k heads whose score moved most over training (largest max - min over the snapshots),
    biggest first, as (layer, head). values: (S, L, H)."""
    v = torch.as_tensor(values).detach().float().cpu()
    S, L, H = v.shape
    span = (v.amax(0) - v.amin(0)).reshape(L * H).nan_to_num(-1.0)  # (L*H,) layer-major
    order = torch.argsort(span, descending=True, stable=True)[: min(k, L * H)]
    return [divmod(int(i), H) for i in order]


# -- loss bumps -------------------------------------------------------------------------------------
def smooth(iters: Sequence[float], losses: Sequence[float], bins: int = SMOOTH_BINS) -> tuple[list[int], list[float]]:
    """A noisy per-batch loss as the mean of `bins` equal spans of iterations: (the last iteration
    of each non-empty span, its mean loss)."""
    if len(iters) != len(losses):
        raise ValueError(f"{len(iters)} iterations but {len(losses)} losses")
    if not len(iters):
        return [], []
    lo, hi = float(min(iters)), float(max(iters))
    width = (hi - lo) / bins or 1.0
    groups: dict[int, list[tuple[float, float]]] = {}
    for it, x in zip(iters, losses):
        groups.setdefault(min(int((float(it) - lo) / width), bins - 1), []).append((float(it), float(x)))
    keys = sorted(groups)
    return ([int(max(i for i, _ in groups[g])) for g in keys],
            [sum(x for _, x in groups[g]) / len(groups[g]) for g in keys])


def loss_bumps(iters: Sequence[float], losses: Sequence[float], name: str = "val", rise: float = RISE,
               drop: float = DROP, accel: float = ACCEL) -> list[Marker]:
    """Bumps in one loss series (at increasing iterations): every rise of `rise` nats or more, from a
    low to the highest loss before it falls back by rise / 2 (smaller dips, eval noise, do not split
    one rise in two), and every interval in which it fell by `drop` or more at `accel` times (or
    more) the per-iteration rate of the interval before (or after a flat or rising one). In
    iteration order."""
    _check(list(iters), len(losses), name)
    its, xs = [int(i) for i in iters], [float(x) for x in losses]
    words = LOSS_WORDS.get(name, name)
    out: list[Marker] = []
    i = 0
    while i < len(xs) - 1:  # rises: from a low to the peak of what follows, across dips of < rise / 2
        if xs[i + 1] <= xs[i]:
            i += 1
            continue
        peak, j = i + 1, i + 1
        while j < len(xs) and xs[j] >= xs[peak] - rise / 2:
            peak = j if xs[j] > xs[peak] else peak
            j += 1
        if xs[peak] - xs[i] >= rise:
            out.append(Marker("loss", name, its[i], its[peak], xs[i], xs[peak], None,
                              f"The {words} rose from {xs[i]:.2f} to {xs[peak]:.2f} between iter {its[i]} and {its[peak]}"))
        i = peak
    rate = [(xs[k] - xs[k + 1]) / (its[k + 1] - its[k]) for k in range(len(xs) - 1)]  # nats fallen per iteration
    for k in range(1, len(rate)):
        fell = xs[k] - xs[k + 1]
        if fell >= drop and (rate[k - 1] <= 0 or rate[k] >= accel * rate[k - 1]):
            r = rate[k] / rate[k - 1] if rate[k - 1] > 0 else 0.0
            how = "after a plateau" if r == 0 or r >= 20 else f"{r:.1f}× as fast as just before"
            out.append(Marker("loss", name, its[k], its[k + 1], xs[k], xs[k + 1], None,
                              f"The {words} fell sharply from {xs[k]:.2f} to {xs[k + 1]:.2f} between iter "
                              f"{its[k]} and {its[k + 1]} ({how})"))
    return sorted(out, key=lambda m: (m.start, m.end))


def metric_bumps(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> list[Marker]:
    """loss_bumps of a run's logged losses (trainers.metrics.Metrics.series): the val loss, then the
    train loss measured at evals where it marks an interval the val loss does not; a run with no
    eval-time train loss has its per-batch "train" loss smoothed first. In iteration order."""
    found: list[Marker] = []
    names = [n for n in ("val", "train (eval)") if len(series.get(n, ((), ()))[0]) >= 3]
    for name in names or ["train"]:
        its, xs = series.get(name, ((), ()))
        if name == "train":
            its, xs = smooth(its, xs)
        for m in loss_bumps(its, xs, name):
            overlaps = any(o.start < m.end and m.start < o.end and (o.change > 0) == (m.change > 0) for o in found)
            if not overlaps:
                found.append(m)
    return sorted(found, key=lambda m: (m.start, m.end))
