"""Page speed: every figure of an inspector page is ready within 150 ms server-side after the prompt
changes, for the `baby` model (random weights) at T=256 on this CPU.

For each page this times exactly what the page runs after a prompt change (the page calls the same
app.views.*.build function): the recorded forward of the names the page records (no cache: a new
prompt misses it), all view functions, and the serialisation Streamlit does before sending
(plotly.io.to_json for plotly figures, Arrow for the Vega-Lite grid's table). The Generate page is
timed per step: one KV-cached Generator step with attention recording plus its figures.
Median of N repetitions after warm-up. With one torch thread (the default: what the app has while a
training run holds the other core) the goal is judged on the process CPU clock, since the machine
is shared and the wall clock counts other people's work too; with more threads (--threads 2: what
the app has on this machine when nothing trains, torch's default) on the wall clock, since CPU time
then sums the threads. Both clocks are printed.

    .venv/bin/python -m bench.bench_pages [--quick] [--preset baby] [--T 256] [--reps 15] [--threads 1]
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable

import plotly.io as pio
import torch

from bench import DEFAULT_THREADS, goal, machine, page_args, set_threads, table
from gpt.config import GPTConfig
from gpt.generate import Generator
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import CharTokenizer

BUDGET_MS = 150.0
# nanoGPT's shakespeare_char vocabulary (65 characters), so the bench needs no data file
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _arrow(frame: Any) -> bytes:
    try:
        from streamlit.dataframe_util import convert_anything_to_arrow_bytes
    except ImportError:  # older/newer Streamlit: plain pyarrow does the same work
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        table_ = pa.Table.from_pandas(frame)
        with pa.ipc.new_stream(sink, table_.schema) as w:
            w.write_table(table_)
        return sink.getvalue().to_pybytes()
    return convert_anything_to_arrow_bytes(frame)


def serialize(view: Any) -> int:
    """Serialise every figure of a view as Streamlit does; returns the bytes sent (for the table)."""
    import plotly.graph_objects as go
    from plotly.tools import return_figure_from_figure_or_data

    n = 0
    for v in vars(view).values():
        if isinstance(v, go.Figure):  # st.plotly_chart re-validates the figure, then writes JSON
            n += len(pio.to_json(return_figure_from_figure_or_data(v, validate_figure=True), validate=False))
        elif isinstance(v, str):
            n += len(v)
    if hasattr(view, "grid_frame"):
        n += len(_arrow(view.grid_frame)) + len(json.dumps(view.grid_spec))
    return n


def time_it(fn: Callable[[], Any], reps: int, warmup: int = 2) -> tuple[float, float, Any]:
    """(median CPU ms, median wall ms, last result) of `fn`."""
    for _ in range(warmup):
        out = fn()
    cpu, wall = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1000 * statistics.median(cpu), 1000 * statistics.median(wall), out


def trace(model: GPT, ids: list[int], names: tuple[str, ...]) -> Recorder:
    """What app.resources.trace does on a cache miss: one recorded forward of batch 1."""
    rec = Recorder(list(names))
    with torch.no_grad():
        model(torch.tensor([ids], dtype=torch.long), rec=rec)  # (1, T)
    return rec


def page_runs(model: GPT, tok: CharTokenizer, ids: list[int]) -> dict[str, Callable[[], dict[str, float]]]:
    """page -> fn() that does one prompt change's work and returns its parts in seconds: the traced
    forward (a cache miss), the Inspection (strings, labels) and the page's build, the serialisation."""
    from app.inspection import Inspection, Loaded
    from app.views import attention as va
    from app.views import layers as vl
    from app.views import tokens as vt

    cfg = model.config
    T = len(ids)
    loaded = Loaded(model=model, tokenizer=tok, meta={}, ref="bench", label="bench", config=cfg)
    # the Layers page's prompt-independent part: app.resources.model_views computes it once per
    # checkpoint, so a prompt change does not pay for it (as the old per-model cache did here)
    per_model = vl.model_views(model)

    def parts(names: tuple[str, ...], layer: int, head: int, build: Callable[[Inspection], Any]) -> dict[str, float]:
        t0 = time.process_time()
        rec = trace(model, ids, names)
        t1 = time.process_time()
        view = build(Inspection.of(loaded, tuple(ids), rec, names, layer, head))
        t2 = time.process_time()
        nbytes = serialize(view)
        t3 = time.process_time()
        return {"trace": t1 - t0, "views": t2 - t1, "serialize": t3 - t2, "bytes": nbytes}

    def attention() -> dict[str, float]:
        return parts(va.NAMES, cfg.n_layer - 1, 0, lambda insp: va.build(insp, T - 1))

    def layers() -> dict[str, float]:
        return parts(vl.NAMES, 0, 0, lambda insp: vl.build(insp, "resid_post", vl.lens_window(T, T - 32), per_model))

    def next_token() -> dict[str, float]:
        return parts(vt.NAMES, 0, 0, lambda insp: vt.build_next_token(insp, T - 2, 1.0, 10))

    return {"attention": attention, "layers": layers, "next_token": next_token}


def generate_run(model: GPT, tok: CharTokenizer, ids: list[int]) -> Callable[[], dict[str, float]]:
    """One Generate-page step at a context of len(ids)-1 tokens: back() then step() (so every call
    does the same work: one cached position), then the page's figures."""
    from app import generation as ag
    from app.views import generate as vg

    gen = Generator(model, ids[:-1], temperature=1.0, seed=0, record=True)
    state = ag.GenState(ref="bench", prompt=tuple(ids[:-1]), ids=list(ids[:-1]))
    first = gen.step()
    ag.record_step(state, first, 0.0)

    def run() -> dict[str, float]:
        t0 = time.process_time()
        gen.back()
        ag.undo_step(state)
        step = gen.step()
        t1 = time.process_time()
        ag.record_step(state, step, (t1 - t0) * 1000)
        view = vg.build(state, tok.token_str)
        t2 = time.process_time()
        nbytes = serialize(view)
        t3 = time.process_time()
        return {"trace": t1 - t0, "views": t2 - t1, "serialize": t3 - t2, "bytes": nbytes}
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = page_args(__doc__, DEFAULT_THREADS).parse_args(argv)
    reps = 5 if args.quick else args.reps
    set_threads(args.threads)
    torch.manual_seed(0)
    tok = CharTokenizer(list(CHARS))
    cfg = GPTConfig.preset(args.preset, vocab_size=tok.vocab_size, dropout=0.0)
    if not 1 <= args.T <= cfg.block_size:
        ap.error(f"--T must be in 1..{cfg.block_size} for {args.preset}")
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(tok.vocab_size, (args.T,), generator=g).tolist()

    runs = page_runs(model, tok, ids)
    runs["generate (per step)"] = generate_run(model, tok, ids)
    rows, results, goals = [], {}, []
    for name, fn in runs.items():
        samples: list[dict[str, float]] = []

        def once(fn: Callable[[], dict[str, float]] = fn) -> None:
            samples.append(fn())
        cpu, wall, _ = time_it(once, reps)
        samples = samples[-reps:]
        med = {k: 1000 * statistics.median(s[k] for s in samples) for k in ("trace", "views", "serialize")}
        kib = samples[-1]["bytes"] / 1024
        # the 150 ms goal is stated for baby at T=256; other shapes are measured, not judged
        judged = cpu if args.threads == 1 else wall  # see the docstring
        passed = judged <= BUDGET_MS if (args.preset, args.T) == ("baby", 256) else None
        results[name] = {"cpu_ms": cpu, "wall_ms": wall, **{f"{k}_ms": v for k, v in med.items()}, "kib": kib}
        rows.append([name, med["trace"], med["views"], med["serialize"], cpu, wall, round(kib), passed])
        clock = "CPU" if args.threads == 1 else "wall"
        goals.append(goal(f"{name}: figures ready after a prompt change ({args.threads} thread"
                          f"{'s' if args.threads > 1 else ''})", f"{judged:.0f} ms {clock}", None, None,
                          f"<= {BUDGET_MS:.0f} ms", passed, f"{args.preset} T={args.T}, median of {reps}"))
    m = machine()
    print(f"page timings: {args.preset} ({cfg.n_layer} layers x {cfg.n_head} heads, C={cfg.n_embd}), "
          f"T={args.T}, {args.threads} torch thread(s), median of {reps} (CPU clock; wall beside it), "
          f"load average {m['loadavg_1m']} on {m['cores']} cores")
    print(table(["page", "trace ms", "views ms", "serialize ms", "total cpu ms", "total wall ms",
                 "KiB sent", f"<= {BUDGET_MS:.0f} ms"], rows))
    return {"machine": m, "preset": args.preset, "T": args.T, "reps": reps, "pages": results,
            "goals": goals}


if __name__ == "__main__":
    main()
