"""Timeline speed: moving the snapshot slider to a new snapshot has its figures ready within 300 ms
server-side, for a model of the bundled model's shape (char, 4 layers x 4 heads, n_embd 128,
block 256, vocab 65) with random weights, saved as a run folder with 10 snapshots.

The goal counts what the user waits for before the figures appear: the page draws the figures
before it computes the greedy sample below them (app/screens/timeline.py), so the sample is
reported beside the goal, not in it.

Times what the Timeline page's fragment runs when the slider lands on a snapshot
(app/screens/timeline.py): load the snapshot (resources.load_model; cold = cache cleared, warm = a
cache hit), the recorded forward of app.views.timeline.NAMES (a new snapshot misses the trace
cache), the Inspection and snapshot_view (pattern heatmap, logit lens, loss), Streamlit's serialisation of the two
plotly figures, and the 40-token greedy sample (computed on the first visit of a snapshot, then
memoised). The one-time history cost (head scores of every snapshot, the history chart) is
reported beside. Medians over snapshots x repetitions, on the CPU clock with one torch thread
(wall clock printed beside: the machine is shared).

    .venv/bin/python -m bench.bench_timeline [--quick] [--T 56] [--reps 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import plotly.io as pio
import torch

from bench import DEFAULT_THREADS, goal, machine, set_threads, table
from gpt.config import GPTConfig
from gpt.tokenizer import CharTokenizer

BUDGET_MS = 300.0
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # shakespeare_char's 65
SNAPSHOT_ITERS = (0, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)  # the trainer's schedule to 5000
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."


def bundled_shape() -> GPTConfig:
    return GPTConfig(block_size=256, vocab_size=len(CHARS), n_layer=4, n_head=4, n_embd=128,
                     dropout=0.0, bias=False)


def make_run(root: Path, iters: tuple[int, ...] = SNAPSHOT_ITERS) -> Path:
    """A run folder <root>/bench-run with snapshots/iter_* of random-weight models (one seed per
    snapshot, so every snapshot differs as real ones do)."""
    from gpt.checkpoint import save
    from gpt.model import GPT

    run = root / "bench-run"
    tok = CharTokenizer(list(CHARS))
    for i, it in enumerate(iters):
        torch.manual_seed(1000 + i)
        save(run / "snapshots" / f"iter_{it:07d}", GPT(bundled_shape()), tok, meta={"iter": it})
    return run


def _quiet() -> None:
    """Silence Streamlit's per-call warnings about running without a server (bare-mode caches)."""
    from app import resources  # noqa: F401  (imports streamlit, which creates its loggers)

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("streamlit")]:
        logging.getLogger(name).setLevel(logging.ERROR)


def _serialize(fig: Any) -> int:
    """What st.plotly_chart does before sending: re-validate, then JSON."""
    from plotly.tools import return_figure_from_figure_or_data

    return len(pio.to_json(return_figure_from_figure_or_data(fig, validate_figure=True), validate=False))


def _clock(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(CPU ms, wall ms, result) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return 1000 * (time.process_time() - c0), 1000 * (time.perf_counter() - t0), out


def bench(run: Path, T: int, reps: int) -> dict[str, Any]:
    """Per-stage medians (CPU and wall ms) over every snapshot x reps; see the module docstring."""
    from app import resources
    from app.inspection import Inspection
    from app.views import timeline as vt
    from gpt.checkpoint import list_snapshots
    from gpt.generate import greedy_continuation
    from gpt.heads import head_scores

    snaps = [str(p) for _, p in list_snapshots(run)]
    tok = CharTokenizer(list(CHARS))
    ids = tuple(tok.encode((PROMPT * 8)[:T]))
    stages = ["load cold", "load warm", "trace", "figures", "serialize", "sample", "head scores"]
    cpu: dict[str, list[float]] = {s: [] for s in stages}
    wall: dict[str, list[float]] = {s: [] for s in stages}
    totals_cpu: dict[str, list[float]] = {"figures shown, cold model": [], "new snapshot": [],
                                             "new snapshot, cold model": [], "revisit": []}
    totals_wall: dict[str, list[float]] = {k: [] for k in totals_cpu}
    sent = 0
    with torch.no_grad():
        for rep in range(reps + 1):  # rep 0 warms up torch and the imports
            for ref in snaps:
                resources.clear_caches()
                got = {}
                for stage, fn in (
                        ("load cold", lambda: resources.load_model(ref)),
                        ("load warm", lambda: resources.load_model(ref)),
                        ("trace", lambda: resources.record_forward(got["load warm"].model, ids, vt.NAMES)),
                        ("figures", lambda: vt.snapshot_view(Inspection.of(got["load warm"], ids, got["trace"],
                                                                           vt.NAMES, 1, 2))),
                        ("serialize", lambda: sum(_serialize(f) for f in (got["figures"].pattern,
                                                                           got["figures"].lens))),
                        ("sample", lambda: greedy_continuation(got["load warm"].model, ids, vt.SAMPLE_TOKENS)),
                        ("head scores", lambda: head_scores(got["load warm"].model))):
                    c, w, got[stage] = _clock(fn)
                    if rep:
                        cpu[stage].append(c)
                        wall[stage].append(w)
                sent = got["serialize"]
                if rep:
                    for clock, totals in ((cpu, totals_cpu), (wall, totals_wall)):
                        view = sum(clock[s][-1] for s in ("load warm", "trace", "figures", "serialize"))
                        totals["revisit"].append(view - clock["trace"][-1])  # trace and sample cached
                        # the page draws the figures before it computes the sample (screens/timeline.py)
                        totals["figures shown, cold model"].append(view + clock["load cold"][-1])
                        totals["new snapshot"].append(view + clock["sample"][-1])
                        totals["new snapshot, cold model"].append(view + clock["sample"][-1]
                                                                  + clock["load cold"][-1])
        from app.views.timeline import history_chart, history_frame

        history = [(it, head_scores(resources.load_model(ref).model)) for it, ref in zip(SNAPSHOT_ITERS, snaps)]
        c, w, _ = _clock(lambda: history_chart(history_frame(history, "induction"), "induction", "L1H2").to_dict())
    med = statistics.median
    return {"T": len(ids), "snapshots": len(snaps), "reps": reps, "bytes_sent": sent,
            "stages_cpu_ms": {s: round(med(v), 2) for s, v in cpu.items()},
            "stages_wall_ms": {s: round(med(v), 2) for s, v in wall.items()},
            "totals_cpu_ms": {k: round(med(v), 1) for k, v in totals_cpu.items()},
            "totals_wall_ms": {k: round(med(v), 1) for k, v in totals_wall.items()},
            "history_chart_cpu_ms": round(c, 1), "history_chart_wall_ms": round(w, 1)}


def bench_apptest(root: Path, reps: int) -> dict[str, float]:
    """Wall ms of whole page runs under Streamlit's AppTest after the slider moves (AppTest runs
    the whole script, history chart and sidebar included, where the browser reruns only the
    fragment: an upper bound): to a snapshot not seen yet, and back to one seen before."""
    import os

    from streamlit.testing.v1 import AppTest

    from app import resources

    _quiet()  # AppTest's import adds loggers of its own
    old = {k: os.environ.get(k) for k in ("NANOLENS_CHECKPOINTS", "NANOLENS_BUNDLED")}
    os.environ.update(NANOLENS_CHECKPOINTS=str(root), NANOLENS_BUNDLED="")
    try:
        new, seen = [], []
        for _ in range(reps):
            resources.clear_caches()
            at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"),
                                   default_timeout=300)
            at.switch_page("screens/timeline.py")
            at.run()  # scores every snapshot once
            if at.exception:
                raise RuntimeError(f"the Timeline page failed: {at.exception[0].message}")
            for times in (new, seen):
                for it in at.select_slider[0].options[::-1]:
                    t0 = time.perf_counter()
                    at.select_slider[0].set_value(int(it.split()[-1])).run()
                    times.append(1000 * (time.perf_counter() - t0))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        resources.clear_caches()
    return {"new snapshot": round(statistics.median(new), 1), "revisit": round(statistics.median(seen), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_timeline", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition")
    ap.add_argument("--T", type=int, nargs="*", default=[56, 256], help="prompt lengths (default 56 256)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions over all snapshots (default 3)")
    ap.add_argument("--no-apptest", action="store_true", help="skip the whole-page AppTest timing")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    _quiet()
    reps = 1 if args.quick else args.reps
    out: dict[str, Any] = {"script": "bench_timeline", "machine": machine(), "cases": [], "goals": []}
    print(f"== bench_timeline: slider to a new snapshot, bundled shape 4x4x128 block 256, random weights; "
          f"torch threads {args.threads}")
    with tempfile.TemporaryDirectory(prefix="nanolens-bench-timeline-") as tmp:
        run = make_run(Path(tmp))
        for T in args.T:
            res = bench(run, T, reps)
            out["cases"].append(res)
            rows = [[s, res["stages_cpu_ms"][s], res["stages_wall_ms"][s]] for s in res["stages_cpu_ms"]]
            rows += [[f"TOTAL {k}", v, res["totals_wall_ms"][k]] for k, v in res["totals_cpu_ms"].items()]
            rows.append(["history chart (once)", res["history_chart_cpu_ms"], res["history_chart_wall_ms"]])
            print(f"\nT={res['T']}, {res['snapshots']} snapshots x {reps} reps, "
                  f"{res['bytes_sent'] / 1024:.0f} KiB of figures per move")
            print(table(["stage", "CPU ms (median)", "wall ms (median)"], rows))
            shown = res["totals_cpu_ms"]["figures shown, cold model"]
            whole = res["totals_cpu_ms"]["new snapshot, cold model"]
            out["goals"].append(goal(
                f"timeline: slider to a new snapshot, figures shown, T={res['T']} (cold model)",
                f"{shown:.0f} ms", None, None, f"<= {BUDGET_MS:.0f} ms", shown <= BUDGET_MS,
                f"CPU clock, median; wall {res['totals_wall_ms']['figures shown, cold model']:.0f} ms; "
                f"revisit {res['totals_cpu_ms']['revisit']:.0f} ms"))
            out["goals"].append(goal(
                f"timeline: ... and the greedy sample below them too, T={res['T']} (cold model)",
                f"{whole:.0f} ms", None, None, f"<= {BUDGET_MS:.0f} ms", whole <= BUDGET_MS,
                "the sample is drawn last, after the figures; computed once per snapshot and prompt"))
        if not args.no_apptest:
            out["apptest_wall_ms"] = at = bench_apptest(Path(tmp), reps)
            print(f"\nwhole page under AppTest (T=56 default prompt, wall ms, median): new snapshot "
                  f"{at['new snapshot']:.0f}, revisit {at['revisit']:.0f}")
    return out


if __name__ == "__main__":
    main()
