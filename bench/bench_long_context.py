"""Attention at long context: the Attention page's server-side time and payload for a GPT-2-small-
shaped model (12 layers, 12 heads, 768 wide, vocab 50257, random weights) at T=1024.

Goals (issue 17, part 3): the page's first figures ready in <= 5 s server-side on this CPU (<= 1 s
on a GPU), and <= 5 MB sent to the browser for the whole page.

Timed, as the page runs them after a prompt change (app/screens/attention.py):
  first figures   AttentionTrace up to the open layer, the overview PNG, the zoomed pattern and
                  scores heatmaps (serialised as st.plotly_chart does); for layer 0 (the page's
                  default) and the last layer (the worst case: every block runs first);
  whole page      the rest: every layer's digest, the grid PNG and its Vega spec, the strip, the
                  overlays, the summary; with the bytes of what the server sends, counted here
                  (figure JSON, PNGs, HTML), which the Chromium measurement below checks.
With --browser, the page is opened in Chromium on a saved checkpoint of the same model and every
websocket frame received is summed (page.on("websocket") -> framereceived). Where `circuitsvis` is
importable, the size of circuitsvis.attention.attention_heads' HTML for the same 12 heads at the same
T is reported beside it; otherwise that comparison is skipped. Without plotly/PIL (a bare GPU box)
only the trace and the pooling are timed.

    .venv/bin/python -m bench.bench_long_context [--quick] [--T 1024] [--threads 2] [--device cpu|cuda] [--browser]
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


def page_parts(model: GPT, ids: list[int], layer: int, device: str, full: bool) -> Callable[[], dict[str, float]]:
    """fn() -> {first_s, page_s, bytes}: one prompt change's work on the page, opened at `layer`
    (full=False: only the trace and pooling, for a machine without the app's packages)."""
    T = len(ids)

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        tr = AttentionTrace(model, ids)
        p = tr.pattern(layer)  # (H, T, T)
        top = float(tr.digest(layer).tops[0])
        n = 0
        if full:
            import plotly.io as pio

            from app.views import attention_long as val
            labels = [f"{i}:t" for i in range(T)]
            window = val.zoom_window(T, T - 1)
            ov = val.overview(p[0], top, window)
            figs = [val.crop_figure(p[0], labels, window, "p", "pattern", top),
                    val.crop_figure(tr.scores(layer)[0], labels, window, "s", "scores")]
            n += len(ov.png) + sum(len(pio.to_json(f, validate=False)) for f in figs)
        else:
            block_max(p[0], 256)
        _sync(device)
        t1 = time.perf_counter()
        digests = tr.digests()
        if full:
            import plotly.io as pio

            from app.views import attention as va
            from app.views import attention_heads as vah
            from app.views import attention_long as val
            png, px = val.grid_png(val.grid_levels(digests, T))
            summ = {k: torch.stack([getattr(d, k) for d in digests]) for k in ("entropy", "prev_token", "first_token")}
            import json
            n += len(json.dumps(val.grid_image_spec(png, 12, 12, px, selected=(layer, 0), summary=summ)))
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
        return {"first_s": t1 - t0, "page_s": t2 - t0, "bytes": n}
    return run


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
    for layer in (0, 11):
        fn = page_parts(model, ids, layer, args.device, full)
        fn()  # warm-up
        samples = [fn() for _ in range(reps)]
        first = statistics.median(s["first_s"] for s in samples)
        whole = statistics.median(s["page_s"] for s in samples)
        res[f"layer {layer}"] = {"first_s": first, "page_s": whole, "bytes": samples[-1]["bytes"]}
        rows.append([f"layer {layer}", first, whole, round(samples[-1]["bytes"] / 1e3)])
        goals.append(goal(f"first figures at T={args.T}, layer {layer} open ({args.device}, {args.threads} threads)",
                          f"{first:.2f} s", None, None, f"<= {budget:g} s", first <= budget,
                          f"whole page {whole:.2f} s; median of {reps}, wall clock"))
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
    print(table(["open layer", "first figures s", "whole page s", "KB sent (server-side count)"], rows))
    print(f"Chromium payload: {res.get('browser_mb', 'not measured (--browser)')}; "
          f"CircuitsVis attention_heads HTML: {cv if isinstance(cv, str) else f'{cv:.1f} MB'}")
    return {"machine": m, "T": args.T, "device": args.device, "results": res, "goals": goals}


if __name__ == "__main__":
    main()
