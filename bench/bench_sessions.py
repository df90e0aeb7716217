"""Six browser sessions pressing Step on the Generate page while a run trains (issue 13.1): every
click must count, no exception may show, and the server's memory must stay flat over rounds. Also
what the fix costs: click-to-render latency with Streamlit's fast reruns (kept) and without.

One invocation, real processes on this machine:
  1. load: a Streamlit server (tests/e2e/server.py) whose NANOLENS_CHECKPOINTS is a temp root where
     trainers.runs.start trains the tiny preset (1 thread) all along; the page's model is the
     bundled one. Each round opens --sessions new Chromium sessions (one browser, one context
     each) on /generate, and all of them press "Step" --clicks times at once. A session then
     reads its count (data-new-tokens) and must have exactly --clicks tokens; an exception box
     seen after any click counts against it. The server's RSS is read after each round.
  2. --baseline-rev REV: the same rounds on the code of git revision REV (git archive into a temp
     folder, its own server, the same run going on), so "before" is measured in the same run.
  3. latency: one session on a server with runner.fastReruns on (the default, kept) and one on a
     server with it off, interleaved: a single Step (click -> its token on screen) and a double
     click on "Step x10" (second click -> 20 tokens on screen).

Pacing: the next Step goes as soon as the page shows the previous one's token, while that rerun
is still drawing, so every click lands in a running rerun (the fast-rerun race). A click whose
token does not show within --stuck-s is counted lost and the session goes on. The double click
sends its second click 40 ms after the first, once the server has begun the first one's run: two
clicks of one button that reach the server before that are one click to Streamlit whatever the
app does (the newer rerun replaces the older before its callbacks run).

    .venv/bin/python -m bench.bench_sessions [--rounds 4] [--baseline-rev REV] [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import browser_missing, goal, machine, table
from bench.bench_live import CHROMIUM, CHROMIUM_ARGS, _stop_run, family_rss_mib, pct, reap
from tests.e2e.helpers import _IDLE_JS
from tests.e2e.server import REPO, StreamlitServer

BUNDLED = REPO / "checkpoints" / "shakespeare-char"
EXC = "[data-testid='stException']"
# stamps each click and each change of the page's token count: window.__nl = {clicks, counts}
OBSERVER_JS = r"""() => {
  window.__nl = {clicks: [], counts: [], last: null};
  document.addEventListener("click", () => window.__nl.clicks.push(Date.now()), true);
  const check = () => {
    const el = document.querySelector("[data-new-tokens]");
    const v = el ? +el.getAttribute("data-new-tokens") : null;
    if (v !== window.__nl.last) { window.__nl.last = v; window.__nl.counts.push([Date.now(), v]); }
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true, attributes: true});
}"""
COUNT_JS = ("() => { const el = document.querySelector('[data-new-tokens]');"
            " return el ? +el.getAttribute('data-new-tokens') : -1; }")
STATE_JS = (f"() => ({{count: ({COUNT_JS})(), exc: !!document.querySelector(\"{EXC}\"),"
            f" idle: ({_IDLE_JS.strip()})()}})")
RUNNING_JS = ("(before) => document.querySelector(\"[data-testid='stApp']\").getAttribute('data-test-script-state')"
              f" === 'running' || ({COUNT_JS})() !== before")


def start_server(root: Path, log: Path, env: dict[str, str], cwd: Path = REPO) -> StreamlitServer:
    """tests/e2e/server.py's server, run from `cwd` (another checkout for the baseline)."""
    import tests.e2e.server as srv

    old, srv.REPO = srv.REPO, cwd  # StreamlitServer runs `streamlit run app/main.py` in srv.REPO
    try:
        server = StreamlitServer(root, log, env)
    finally:
        srv.REPO = old
    server.wait_healthy(120)
    return server


async def idle(page: Any, timeout_ms: float = 120_000) -> None:
    await page.wait_for_timeout(150)  # let a rerun begin before asking whether it ended
    await page.wait_for_function(_IDLE_JS, timeout=timeout_ms)


async def open_generate(browser: Any, url: str) -> tuple[Any, Any]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    page.set_default_timeout(120_000)
    await page.goto(url + "/generate", wait_until="domcontentloaded")
    await idle(page)
    await page.evaluate(OBSERVER_JS)
    return ctx, page


async def centre(page: Any, name: str) -> tuple[float, float]:
    box = await page.get_by_role("button", name=name, exact=True).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


async def shown(page: Any, before: int, stuck_s: float) -> bool:
    """True once the count differs from `before`; False when it has not after `stuck_s`, or when
    the page stopped on an exception box with the count unchanged."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < stuck_s:
        st = await page.evaluate(STATE_JS)
        if st["count"] != before:
            return True
        if st["exc"] and st["idle"] and time.monotonic() - t0 > 1.0:
            return False
        await asyncio.sleep(0.03)
    return False


async def press_steps(browser: Any, url: str, clicks: int, stuck_s: float) -> dict[str, Any]:
    """One session: `clicks` presses of Step, each as soon as the previous token shows."""
    ctx, page = await open_generate(browser, url)
    try:
        x, y = await centre(page, "Step")
        stuck, exc_text, ms = 0, "", []
        for _ in range(clicks):
            before = await page.evaluate(COUNT_JS)
            t0 = time.monotonic()
            await page.mouse.click(x, y)
            if await shown(page, before, stuck_s):
                ms.append((time.monotonic() - t0) * 1000)
            else:
                stuck += 1
            if not exc_text and await page.locator(EXC).count():
                exc_text = (await page.locator(EXC).first.inner_text()).split("\n")[0][:160]
        await idle(page)
        if not exc_text and await page.locator(EXC).count():
            exc_text = (await page.locator(EXC).first.inner_text()).split("\n")[0][:160]
        return {"tokens": await page.evaluate(COUNT_JS), "stuck": stuck, "exception": exc_text, "click_ms": ms}
    finally:
        await ctx.close()


async def load_rounds(browser: Any, server: StreamlitServer, args: argparse.Namespace, label: str
                      ) -> dict[str, Any]:
    rounds = []
    rss0 = family_rss_mib(server.proc.pid)
    for r in range(args.rounds):
        t0 = time.monotonic()
        got = await asyncio.gather(*(press_steps(browser, server.url, args.clicks, args.stuck_s)
                                     for _ in range(args.sessions)))
        await asyncio.sleep(2)  # the closed sessions' last messages
        rounds.append({"sessions": got, "rss_mib": round(family_rss_mib(server.proc.pid), 1),
                       "seconds": round(time.monotonic() - t0, 1)})
        bad = sum(s["tokens"] != args.clicks or bool(s["exception"]) for s in got)
        print(f"  {label} round {r + 1}: tokens {[s['tokens'] for s in got]}, {bad} session(s) wrong, "
              f"RSS {rounds[-1]['rss_mib']:.0f} MiB, {rounds[-1]['seconds']:.0f} s", flush=True)
    sessions = [s for rd in rounds for s in rd["sessions"]]
    clicks = [m for s in sessions for m in s["click_ms"]]
    return {"label": label, "rss_start_mib": round(rss0, 1), "rounds": rounds,
            "sessions": len(sessions), "clicks": len(sessions) * args.clicks,
            "tokens": sum(max(0, s["tokens"]) for s in sessions),
            "exact_sessions": sum(s["tokens"] == args.clicks and not s["exception"] for s in sessions),
            "exception_sessions": sum(bool(s["exception"]) for s in sessions),
            "exceptions": sorted({s["exception"] for s in sessions if s["exception"]}),
            "short_sessions": sum(s["tokens"] < args.clicks for s in sessions),
            "click_ms": {"p50": pct(clicks, 50), "p90": pct(clicks, 90), "max": max(clicks, default=float("nan"))}}


async def render_ms(page: Any, name: str, target: int, double: bool) -> float | None:
    """Click `name` (twice, 40 ms apart, once the first run began, when `double`); ms from the
    last click to the count reaching `target` on screen, by the page's own clock; None when the
    page went idle at another count (a click lost)."""
    x, y = await centre(page, name)
    before = await page.evaluate(COUNT_JS)
    await page.evaluate("() => { window.__nl.clicks = []; window.__nl.counts = []; }")
    await page.mouse.click(x, y)
    if double:
        t0 = time.monotonic()
        await page.wait_for_function(RUNNING_JS, arg=before, polling=5)
        await page.wait_for_timeout(max(0.0, 40 - (time.monotonic() - t0) * 1000))
        await page.mouse.click(x, y)
    t0 = time.monotonic()
    while (st := await page.evaluate(STATE_JS))["count"] != target:
        if st["idle"] and time.monotonic() - t0 > 3.0 or time.monotonic() - t0 > 120:
            return None
        await asyncio.sleep(0.03)
    log = await page.evaluate("() => window.__nl")
    shown = next(t for t, v in log["counts"] if v == target)
    return float(shown - log["clicks"][-1])


async def latency(browser: Any, urls: dict[str, str], reps: int) -> dict[str, dict[str, list[float]]]:
    """Per mode: "single" and "double" render times (ms), and "lost": clicks that never showed."""
    pages = {m: (await open_generate(browser, u)) for m, u in urls.items()}
    out: dict[str, dict[str, list[float]]] = {m: {"single": [], "double": [], "lost": []} for m in urls}
    try:
        for rep in range(reps):
            order = list(urls) if rep % 2 == 0 else list(reversed(urls))  # rotate: drift cancels
            for m in order:
                page = pages[m][1]
                for kind, name, n in (("single", "Step", 1), ("double", "Step ×10", 20)):
                    before = await page.evaluate(COUNT_JS)
                    got = await render_ms(page, name, before + n, kind == "double")
                    await idle(page)
                    if got is None:
                        out[m]["lost"].append(before + n - await page.evaluate(COUNT_JS))
                        print(f"  latency, {m}: {kind} click lost ({out[m]['lost'][-1]} tokens short)")
                    else:
                        out[m][kind].append(got)
    finally:
        for ctx, _ in pages.values():
            await ctx.close()
    return out


async def run(args: argparse.Namespace, root: Path, tmp: Path, servers: list[StreamlitServer]) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    env = {"NANOLENS_BUNDLED": str(BUNDLED)}
    res: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            servers.append(start_server(root, tmp / "now.log", env))
            res["now"] = await load_rounds(browser, servers[-1], args, "now")
            if args.baseline_rev:
                old = tmp / "baseline"
                old.mkdir()
                tar = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_rev, "app", "gpt",
                                      "trainers", ".streamlit"], check=True, capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(old)], input=tar, check=True)
                servers.append(start_server(root, tmp / "baseline.log", env, cwd=old))
                res["baseline"] = await load_rounds(browser, servers[-1], args, f"baseline {args.baseline_rev}")
                servers.pop().stop()
            servers.append(start_server(root, tmp / "slow.log", {**env, "STREAMLIT_RUNNER_FAST_RERUNS": "false"}))
            urls = {"fastReruns on": servers[0].url, "fastReruns off": servers[-1].url}
            res["latency_ms"] = await latency(browser, urls, args.reps)
        finally:
            await browser.close()
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_sessions", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--clicks", type=int, default=10, help="Step presses per session and round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=8, help="latency repetitions per mode")
    ap.add_argument("--stuck-s", type=float, default=20.0, help="a click not shown by then is lost")
    ap.add_argument("--baseline-rev", help="also run the rounds on this git revision's app (e.g. the commit "
                    "before the fix)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 3 latency repetitions")
    ap.add_argument("--json", type=Path, help="also write the result dict here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.reps = 2, 3
    if why := browser_missing(CHROMIUM):
        return {"skipped": why}
    from trainers import runs

    info = machine()
    print(f"bench_sessions: {args.sessions} sessions x {args.clicks} Steps x {args.rounds} rounds while a "
          f"run trains; load {info['loadavg_1m']}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="nanolens-bench-sessions-"))
    root = tmp / "ckpts"
    root.mkdir()
    old_cache = os.environ.get("NANOLENS_CACHE")
    os.environ["NANOLENS_CACHE"] = str(tmp / "cache")
    servers: list[StreamlitServer] = []
    name: str | None = None
    try:
        name = runs.start({"preset": "tiny", "data": "python-docs", "max_iters": 100_000_000, "log_interval": 5,
                           "eval_interval": 500, "threads": 1, "name": "sessions-bench"}, root=root)
        res = asyncio.run(run(args, root, tmp, servers))
        res["run_state_at_end"] = runs.status(name, root)["state"]
    finally:
        if name is not None:
            _stop_run(runs, name, root)
        for s in servers:
            s.stop()
        stray = reap(old_cache, tmp)
    res.update(machine=info, args=vars(args) | {"json": str(args.json)}, stray_processes=stray)
    return report(res, args)


def report(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for key in ("now", "baseline"):
        if key in res:
            r = res[key]
            rss = [r["rss_start_mib"]] + [rd["rss_mib"] for rd in r["rounds"]]
            rows.append([r["label"], f"{r['tokens']} / {r['clicks']}", f"{r['exact_sessions']} / {r['sessions']}",
                         r["exception_sessions"], r["short_sessions"],
                         f"{r['click_ms']['p50']:.0f} / {r['click_ms']['p90']:.0f}",
                         " -> ".join(f"{x:.0f}" for x in rss)])
    print(table(["code", "tokens / clicks", "exact sessions", "with exception", "short", "click->token p50/p90 ms",
                 "server RSS MiB (start, each round)"], rows))
    for key in ("now", "baseline"):
        for e in res.get(key, {}).get("exceptions", []):
            print(f"  {key}: {e}")
    lat = res["latency_ms"]
    med = {m: {k: statistics.median(v) if v else float("nan") for k, v in d.items() if k != "lost"}
           for m, d in lat.items()}
    on, off = med["fastReruns on"], med["fastReruns off"]
    print(table(["runner", "single Step: click -> token (ms, median)", "double Step x10: 2nd click -> 20 tokens",
                 "clicks lost"], [[m, f"{d['single']:.0f}", f"{d['double']:.0f}", len(lat[m]["lost"])]
                                  for m, d in med.items()]))
    now = res["now"]
    rss = [now["rss_start_mib"]] + [rd["rss_mib"] for rd in now["rounds"]]
    growth = rss[-1] - rss[1] if len(rss) > 2 else float("nan")
    res["goals"] = [
        goal(f"every click counts ({args.sessions} sessions, a run training)", f"{now['tokens']} / {now['clicks']} tokens",
             f"baseline {res['baseline']['tokens']} / {res['baseline']['clicks']}" if "baseline" in res else None,
             None, "all", now["tokens"] == now["clicks"] and now["exact_sessions"] == now["sessions"]),
        goal("no exception shown", now["exception_sessions"],
             f"baseline {res['baseline']['exception_sessions']}" if "baseline" in res else None, None, "0",
             now["exception_sessions"] == 0),
        goal("server RSS after round 1 -> last", f"{growth:+.0f} MiB", " -> ".join(f"{x:.0f}" for x in rss), None,
             "< 50 MiB", growth < 50 if len(rss) > 2 else None),
        goal("click -> token, fastReruns on / off (single Step)", f"{on['single']:.0f} / {off['single']:.0f} ms",
             f"double: {on['double']:.0f} / {off['double']:.0f} ms", round(on["single"] / off["single"], 2),
             "report", None),
        goal("no process left behind", len(res["stray_processes"]), None, None, "0", not res["stray_processes"]),
    ]
    print(table(["goal", "measured", "peer", "ratio", "target", "result"],
                [[g["goal"], g["measured"], g["peer"], g["ratio"], g["target"], g["status"] or g["passed"]]
                 for g in res["goals"]]))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    def _interrupt(*_: Any) -> None:
        raise KeyboardInterrupt  # so a SIGTERM still runs main's finally (no stray processes)

    signal.signal(signal.SIGTERM, _interrupt)
    main()
