"""Attention at long context: the Attention page's server-side time and payload for a GPT-2-small-
shaped model (12 layers, 12 heads, 768 wide, vocab 50257, random weights) at T=1024.

Goals (issue 17, part 3): the page's first figures ready in <= 5 s server-side on this CPU (<= 1 s
on a GPU), and <= 5 MB sent to the browser for the whole page.

Timed, as the page runs them after a prompt change (app/screens/attention.py), on a fresh trace:
  first figures   AttentionTrace to the open layer (the blocks before it fused, nothing recorded;
                  the open layer's block up to its pattern, digested), the overview PNG, the zoomed
                  pattern and scores heatmaps (serialised as st.plotly_chart does); for layer 0 (the
                  page's default) and the last layer (the worst case: every other block runs first);
  whole page      first figures plus the rest: the second pass (every other layer's digest), the
                  grid PNG and its Vega spec, the strip, the overlays, the summary; with the bytes of
                  what the server sends, counted here (figure JSON, PNGs, HTML), which the Chromium
                  measurement below checks;
  other layer     then, on the same (cached) trace, opening the other end layer (last or 0): its
                  pattern and the first figures again, as the page's rerun after a layer change.
--profile prints torch.profiler's table of the last layer's first figures (CPU, and CUDA kernels on
a GPU): where the time goes.
With --browser, the page is opened in Chromium on a saved checkpoint of the same model and every
websocket frame received is summed (page.on("websocket") -> framereceived). Where `circuitsvis` is
importable, the size of circuitsvis.attention.attention_heads' HTML for the same 12 heads at the same
T is reported beside it; otherwise that comparison is skipped. Without plotly/PIL (a bare GPU box)
only the trace and the pooling are timed.

    .venv/bin/python -m bench.bench_long_context [--quick] [--T 1024] [--threads 2] [--device cpu|cuda] [--browser]
        [--profile]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from bench import browser_missing, goal, machine, set_threads, table
from gpt.attention_trace import AttentionTrace, block_max
from gpt.config import GPTConfig
from gpt.model import GPT

PAYLOAD_MB = 5.0
CPU_S, GPU_S = 5.0, 1.0


def gpt2_small(T: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=max(1024, T),
                         dropout=0.0)).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def first_figures(tr: AttentionTrace, layer: int, full: bool) -> int:
    """The page's first figures for `layer` from the trace: bytes counted (0 without plotly/PIL,
    where only the overview's pooling runs)."""
    T = tr.T
    p = tr.pattern(layer)  # (H, T, T)
    top = float(tr.digest(layer).tops[0])
    if not full:
        block_max(p[0], 256)
        return 0
    import plotly.io as pio

    from app.views import attention_long as val
    labels = [f"{i}:t" for i in range(T)]
    window = val.zoom_window(T, T - 1)
    ov = val.overview(p[0], top, window)
    figs = [val.crop_figure(p[0], labels, window, "p", "pattern", top),
            val.crop_figure(tr.scores(layer)[0], labels, window, "s", "scores")]
    return len(ov.png) + sum(len(pio.to_json(f, validate=False)) for f in figs)


def page_parts(model: GPT, ids: list[int], layer: int, device: str, full: bool) -> Callable[[], dict[str, float]]:
    """fn() -> {first_s, page_s, other_s, bytes}: one prompt change's work on the page, opened at
    `layer`, then the other end layer opened on the same trace (full=False: only the trace and
    pooling, for a machine without the app's packages)."""
    T = len(ids)
    other = model.config.n_layer - 1 if layer == 0 else 0

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        tr = AttentionTrace(model, ids)
        n = first_figures(tr, layer, full)
        _sync(device)
        t1 = time.perf_counter()
        digests = tr.digests()
        if full:
            import plotly.io as pio

            from app.views import attention as va
            from app.views import attention_heads as vah
            from app.views import attention_long as val
            p = tr.pattern(layer)  # (H, T, T), kept from the first figures
            labels = [f"{i}:t" for i in range(T)]
            png, px = val.grid_png(val.grid_levels(digests, T))
            summ = {k: torch.stack([getattr(d, k) for d in digests]) for k in ("entropy", "prev_token", "first_token")}
            import json
            cfg = model.config
            n += len(json.dumps(val.grid_image_spec(png, cfg.n_layer, cfg.n_head, px, selected=(layer, 0),
                                                    summary=summ)))
            row = p[0, T - 1]
            figs = [vah.token_strip([f"t{i}" for i in range(128)], row[-128:], T - 1, start=T - 128),
                    va.attention_bar_figure(labels, row, T - 1),
                    vah.overlay_figure(vah.head_rows(p, [0, 1], T - 1), labels, "r", "key"),
                    vah.overlay_figure(vah.head_columns(p, [0, 1], T - 1), labels, "c", "query"),
                    va.head_summary_figure(summ["entropy"], summ["prev_token"], summ["first_token"], (layer, 0))]
            n += sum(len(pio.to_json(f, validate=False)) for f in figs)
            n += len(va.attention_html([f"t{i}" for i in range(T)], row, T - 1))
        _sync(device)
        t2 = time.perf_counter()
        first_figures(tr, other, full)
        _sync(device)
        return {"first_s": t1 - t0, "page_s": t2 - t0, "other_s": time.perf_counter() - t2, "bytes": n}
    return run


def profile_first(model: GPT, ids: list[int], layer: int, device: str, full: bool) -> None:
    """torch.profiler's table (top 15 by self time) of one fresh trace's first figures at `layer`."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        first_figures(AttentionTrace(model, ids), layer, full)
        _sync(device)
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    try:
        print(prof.key_averages().table(sort_by=key, row_limit=15))
    except (AttributeError, KeyError):  # an older torch names device time self_cuda_time_total
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def browser_payload(model: GPT, T: int) -> float | str:
    """MB of websocket frames Chromium receives for the Attention page at T tokens, or why not."""
    why = browser_missing("/usr/bin/chromium")
    if why:
        return f"skipped: {why}"
    import random
    import tempfile
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from bench.bench_live import CHROMIUM, CHROMIUM_ARGS
    from gpt.checkpoint import save
    from gpt.tokenizer import GPT2Tokenizer
    from tests.e2e.helpers import wait_for_app
    from tests.e2e.server import StreamlitServer

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save(Path(tmp) / "gpt2-small-random", model, GPT2Tokenizer(), dtype=torch.float16)
        (Path(tmp) / "root").mkdir()
        server = StreamlitServer(Path(tmp) / "root", Path(tmp) / "server.log", {"NANOLENS_BUNDLED": str(ckpt)})
        try:
            server.wait_healthy()
            rng = random.Random(0)
            words = "the of and to in is was for on that with as by at from his her it be are".split()
            text = " ".join(rng.choice(words) for _ in range(T + 200))
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = b.new_page(viewport={"width": 1280, "height": 900})
                got: list[int] = []
                page.on("websocket", lambda ws: ws.on("framereceived", lambda m: got.append(len(m))))
                page.goto(server.url + "/attention", timeout=600_000)
                wait_for_app(page, timeout_ms=600_000)
                box = page.get_by_label("Prompt")
                box.fill(text)
                box.press("Control+Enter")
                wait_for_app(page, timeout_ms=600_000)
                b.close()
            return sum(got) / 1e6
        finally:
            server.stop()


def circuitsvis_mb(model: GPT, ids: list[int]) -> float | str:
    """MB of circuitsvis.attention.attention_heads' HTML for the last layer's 12 heads, or why not."""
    try:
        from circuitsvis.attention import attention_heads
    except ImportError:
        return "skipped: circuitsvis is not installed"
    p = AttentionTrace(model, ids).pattern(model.config.n_layer - 1)  # (H, T, T)
    return len(str(attention_heads(attention=p, tokens=[f"t{i}" for i in ids]))) / 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repetition, no browser")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the app's default here: 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--browser", action="store_true", help="also measure the payload in Chromium")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of the last layer's first figures")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    reps = 1 if args.quick else args.reps
    try:
        import PIL  # noqa: F401
        import plotly  # noqa: F401
        full = True
    except ImportError:
        full = False
    model = gpt2_small(args.T).to(args.device)
    ids = torch.randint(50257, (args.T,), generator=torch.Generator().manual_seed(1)).tolist()
    rows, res, goals = [], {}, []
    budget = GPU_S if args.device.startswith("cuda") else CPU_S
    last = model.config.n_layer - 1
    for layer in (0, last):
        fn = page_parts(model, ids, layer, args.device, full)
        fn()  # warm-up
        samples = [fn() for _ in range(reps)]
        first = statistics.median(s["first_s"] for s in samples)
        whole = statistics.median(s["page_s"] for s in samples)
        other = statistics.median(s["other_s"] for s in samples)
        res[f"layer {layer}"] = {"first_s": first, "page_s": whole, "other_s": other, "bytes": samples[-1]["bytes"]}
        rows.append([f"layer {layer}", first, whole, other, round(samples[-1]["bytes"] / 1e3)])
        goals.append(goal(f"first figures at T={args.T}, layer {layer} open ({args.device}, {args.threads} threads)",
                          f"{first:.2f} s", None, None, f"<= {budget:g} s", first <= budget,
                          f"whole page {whole:.2f} s, then layer {last if layer == 0 else 0} opened in "
                          f"{other:.2f} s; median of {reps}, wall clock"))
    if args.profile:
        profile_first(model, ids, last, args.device, full)
    if args.browser and not args.quick:
        mb = browser_payload(model.cpu(), args.T)
        res["browser_mb"] = mb
        goals.append(goal(f"payload of the whole page in Chromium at T={args.T}", mb if isinstance(mb, str) else
                          f"{mb:.2f} MB", None, None, f"<= {PAYLOAD_MB:g} MB",
                          None if isinstance(mb, str) else mb <= PAYLOAD_MB, "websocket frames received, summed"))
    cv = circuitsvis_mb(model.cpu(), ids)
    res["circuitsvis_mb"] = cv
    m = machine()
    print(f"Attention page, GPT-2-small shape, T={args.T}, {args.device}, {args.threads} torch thread(s), "
          f"median of {reps}, load average {m['loadavg_1m']} on {m['cores']} cores"
          + ("" if full else " (no plotly/PIL here: trace and pooling only)"))
    print(table(["open layer", "first figures s", "whole page s", "other end layer s",
                 "KB sent (server-side count)"], rows))
    print(f"Chromium payload: {res.get('browser_mb', 'not measured (--browser)')}; "
          f"CircuitsVis attention_heads HTML: {cv if isinstance(cv, str) else f'{cv:.1f} MB'}")
    return {"machine": m, "T": args.T, "device": args.device, "results": res, "goals": goals}


if __name__ == "__main__":
    main()
