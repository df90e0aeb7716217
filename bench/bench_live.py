"""Live chart: the Train page runs at most 2 s behind the trainer, and the Streamlit server's memory
stays flat over 30 minutes of a live chart.

One invocation does it end to end, on this machine, in real processes:
  1. a Streamlit server for app/main.py (tests/e2e/server.py's StreamlitServer: its own process
     group, NANOLENS_CHECKPOINTS = a temp root, NANOLENS_BUNDLED="", one torch thread);
  2. a long background run there through trainers.runs.start (preset tiny, python-docs, a huge
     max_iters, log_interval 5, eval_interval 500, 1 thread), so metrics rows keep arriving;
  3. headless Chromium (Playwright) on /train, which selects the newest run and polls it live;
  4. a MutationObserver in the page stamps (Date.now()) every change of the live caption
     "<state> · iter N / M · P points", a thread here notes when each metrics.jsonl row appears,
     and every --sample-s seconds we drain the page's log and read the server's RSS (VmRSS of the
     server and its children), its CPU time, Chromium's RSS and JS heap, and websocket bytes;
  5. after --minutes: lag, memory slope, verdicts; 6. the run, the browser and the server are
     always stopped (finally), and any process left in our tree is killed and reported.

Lag: the caption's "iter N" comes from status.json, which the trainer rewrites right after appending
the metrics row of iteration N-1; a row's write time is elapsed_s plus the run's start, calibrated as
min(first seen - elapsed_s) over all rows (so sub-poll exact). For every train row written after the
warm-up, lag = (first time the page showed an iter > that row) - (the row's write time): how long the
trainer's news took to reach the screen. Both clocks are this machine's wall clock.

Memory: least-squares slope of the server's RSS after the warm-up, in MiB per 10 minutes. Threshold
5 MiB/10 min: it is ~1.5 % of the server's ~330 MiB and above allocator noise (a few MiB), yet it
catches a leak of one 8 KiB object per 1 s tick (600 ticks/10 min), well under one loss figure.

    .venv/bin/python -m bench.bench_live [--minutes 30] [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import browser_missing, goal, machine, table
from tests.e2e.server import StreamlitServer, descendants, kill_all

LAG_GOAL_S = 2.0
SLOPE_GOAL_MIB = 5.0  # per 10 minutes
CHROMIUM = os.environ.get("NANOLENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CAPTION = re.compile(r"· iter (\d+) / (\d+) · (\d+) points")
# stamps every change of the live caption: window.__nl.log = [[ms since epoch, iter, points], ...]
OBSERVER_JS = r"""() => {
  if (window.__nl) return;
  window.__nl = {log: [], last: null};
  const re = /· iter (\d+) \/ (\d+) · (\d+) points/;
  const check = () => {
    for (const el of document.querySelectorAll("[data-testid='stCaptionContainer']")) {
      const m = re.exec(el.textContent);
      if (!m) continue;
      const key = m[1] + "/" + m[3];
      if (key !== window.__nl.last) { window.__nl.last = key; window.__nl.log.push([Date.now(), +m[1], +m[3]]); }
      return;
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true});
  check();
}"""
DRAIN_JS = "() => { const l = window.__nl ? window.__nl.log : []; if (window.__nl) window.__nl.log = []; return l; }"


# -- processes ---------------------------------------------------------------------------------------
def _status_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def family_rss_mib(pid: int) -> float:
    """VmRSS of `pid` and all its descendants, MiB (shared pages counted once per process)."""
    return sum(_status_kib(p) for p in [pid, *(c for c, _ in descendants(pid))]) / 1024


def cpu_s(pid: int) -> float:
    """utime + stime of `pid`, seconds."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def chromium_rss_mib() -> float:
    """Summed VmRSS of the Chromium processes this process started (through Playwright's driver)."""
    total = 0
    for pid, _ in descendants(os.getpid()):
        if "chromium" in _cmdline(pid):
            total += _status_kib(pid)
    return total / 1024


class MetricsWatcher(threading.Thread):
    """Polls <run>/metrics.jsonl every `poll_s`, reading only what was appended, and keeps
    (iter, elapsed_s, first_seen, is_train) per row. No torch here, so it may run beside Playwright."""

    def __init__(self, path: Path, poll_s: float = 0.1) -> None:
        super().__init__(name="bench-live-metrics", daemon=True)
        self.path, self.poll_s = path, poll_s
        self.rows: list[tuple[int, float, float, bool]] = []
        self.bytes = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        buf, off = b"", 0
        while not self._stop_evt.wait(self.poll_s):
            try:
                with open(self.path, "rb") as f:
                    f.seek(off)
                    chunk = f.read()
            except OSError:
                continue
            now = time.time()
            off += len(chunk)
            self.bytes = off
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r.get("iter"), int) and isinstance(r.get("elapsed_s"), (int, float)):
                    self.rows.append((r["iter"], float(r["elapsed_s"]), now, "train_loss" in r))

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)


# -- figures -----------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def lags(rows: list[tuple[int, float]], covered: list[tuple[float, int]], t_from: float, t_to: float,
         t_now: float) -> tuple[list[float], int]:
    """Per train row (iter, write time) written in [t_from, t_to]: the first time the page covered
    it (showed a status whose rows reach that iter) minus the write time. A row never shown counts
    with t_now - write time (a lower bound). Returns (lags, how many were never shown)."""
    best: list[tuple[float, int]] = []  # (time, highest row covered so far), both increasing
    for t, it in sorted(covered):
        if not best or it > best[-1][1]:
            best.append((t, it))
    out, unshown, j = [], 0, 0
    for it, tw in sorted(rows, key=lambda r: r[1]):  # write order = iter order
        if not t_from <= tw <= t_to:
            continue
        while j < len(best) and best[j][1] < it:
            j += 1
        if j == len(best):
            unshown += 1
            out.append(t_now - tw)
        else:
            out.append(best[j][0] - tw)
    return out, unshown


def slope_per_10min(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 3:
        return float("nan")
    return statistics.linear_regression(ts, ys).slope * 600.0


# -- the run -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_live", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to watch (default 30)")
    ap.add_argument("--quick", action="store_true", help="3 minutes")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "cpu-small"])
    ap.add_argument("--log-interval", type=int, default=5)
    ap.add_argument("--eval-interval", type=int, default=500)
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between samples (default 2)")
    ap.add_argument("--warmup-s", type=float, default=None,
                    help="excluded from the figures (default: 10%% of the run, 30..120 s)")
    ap.add_argument("--json", type=Path, help="also write the result dict (with every sample) here")
    args = ap.parse_args(argv)
    minutes = 3.0 if args.quick else args.minutes
    duration = minutes * 60
    warmup = args.warmup_s if args.warmup_s is not None else min(120.0, max(30.0, 0.1 * duration))
    if why := browser_missing(CHROMIUM):
        return {"skipped": why}
    from playwright.sync_api import sync_playwright
    from tests.e2e.helpers import open_app
    from trainers import runs

    info = machine()
    print(f"bench_live: {minutes:g} min of a live chart (warm-up {warmup:.0f} s), preset {args.preset}, "
          f"log every {args.log_interval} iters; load {info['loadavg_1m']}")
    tmp = Path(tempfile.mkdtemp(prefix="nanolens-bench-live-"))
    root = tmp / "ckpts"
    root.mkdir()
    old_cache = os.environ.get("NANOLENS_CACHE")
    os.environ["NANOLENS_CACHE"] = str(tmp / "cache")  # hermetic token cache, trainer and server
    server = watcher = pw = browser = None
    name: str | None = None
    samples: list[dict[str, Any]] = []
    shown: list[tuple[float, int, int]] = []
    ws = {"bytes": 0, "max": 0}
    stray: list[str] = []
    try:
        server = StreamlitServer(root, tmp / "streamlit.log", {"NANOLENS_BUNDLED": ""})
        server.wait_healthy()
        name = runs.start({"preset": args.preset, "data": "python-docs", "max_iters": 100_000_000,
                           "log_interval": args.log_interval, "eval_interval": args.eval_interval,
                           "threads": 1, "name": "live-bench"}, root=root)
        watcher = MetricsWatcher(root / name / "metrics.jsonl")
        watcher.start()

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(120_000)

        def on_frame(payload: str | bytes) -> None:
            ws["bytes"] += len(payload)
            ws["max"] = max(ws["max"], len(payload))

        page.on("websocket", lambda sock: sock.on("framereceived", on_frame))
        open_app(page, server.url + "/train", timeout_ms=120_000)
        page.evaluate(OBSERVER_JS)
        page.get_by_text(CAPTION).first.wait_for(timeout=120_000)
        cdp = page.context.new_cdp_session(page)
        t_start = time.time()
        t_end, next_print = t_start + duration, 60.0
        cpu0 = cpu_s(server.proc.pid)
        while time.time() < t_end:
            page.wait_for_timeout(max(50, 1000 * (t_start + (len(samples) + 1) * args.sample_s - time.time())))
            shown += [(t / 1000, it, p) for t, it, p in page.evaluate(DRAIN_JS)]
            st = runs.status(name, root)
            s = {"t": time.time() - t_start, "rss_mib": round(family_rss_mib(server.proc.pid), 2),
                 "server_cpu_s": round(cpu_s(server.proc.pid) - cpu0, 2),
                 "chromium_rss_mib": round(chromium_rss_mib(), 1),
                 "js_heap_mib": round(cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20, 2),
                 "ws_bytes": ws["bytes"], "page_iter": shown[-1][1] if shown else None,
                 "file_iter": watcher.rows[-1][0] if watcher.rows else None, "metrics_bytes": watcher.bytes,
                 "state": st["state"], "exceptions": page.locator("[data-testid='stException']").count()}
            samples.append(s)
            if st["state"] not in runs.LIVE_STATES:
                raise RuntimeError(f"the training run ended early: {st['state']}: {st.get('message')}")
            if s["t"] >= next_print:
                next_print += 60
                print(f"  {s['t'] / 60:5.1f} min  page iter {s['page_iter']}  file iter {s['file_iter']}  "
                      f"server RSS {s['rss_mib']:.1f} MiB, CPU {s['server_cpu_s']:.0f} s  Chromium "
                      f"{s['chromium_rss_mib']:.0f} MiB, heap {s['js_heap_mib']:.1f} MiB", flush=True)
        shown += [(t / 1000, it, p) for t, it, p in page.evaluate(DRAIN_JS)]
    finally:
        if name is not None:
            _stop_run(runs, name, root)
        for closer in (browser.close if browser else None, pw.stop if pw else None,
                       server.stop if server else None, watcher.stop if watcher else None):
            try:
                if closer:
                    closer()
            except Exception as e:  # noqa: BLE001 -- whatever one raises, tear down the rest
                print(f"  (teardown: {type(e).__name__}: {e})")
        stray += reap(old_cache, tmp)
    return report(args, minutes, warmup, t_start, samples, shown, watcher.rows, ws, stray, info)


def reap(old_cache: str | None, tmp: Path) -> list[str]:
    """A bench's last teardown step: kill what it left running (there should be nothing; each is
    named in the returned list), put $NANOLENS_CACHE back and remove its temp folder."""
    left = descendants(os.getpid())
    stray = [f"{pid}: {_cmdline(pid)}" for pid, _ in left]
    kill_all(left)
    if old_cache is None:
        os.environ.pop("NANOLENS_CACHE", None)
    else:
        os.environ["NANOLENS_CACHE"] = old_cache
    shutil.rmtree(tmp, ignore_errors=True)
    return stray


def _stop_run(runs: Any, name: str, root: Path) -> None:
    """Ask the trainer to stop (it saves first); SIGKILL its group if it has not after 30 s."""
    try:
        st = runs.stop(name, root, wait=True, timeout=30)
    except Exception:  # noqa: BLE001 -- any failure: fall back to the pid in status.json
        st = runs.read_json(root / name / "status.json") or {}
    pid = st.get("pid")
    if pid and runs.pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
        runs.pid_alive(pid)  # reaps it (our child)


def report(args: argparse.Namespace, minutes: float, warmup: float, t_start: float,
           samples: list[dict[str, Any]], shown: list[tuple[float, int, int]],
           rows: list[tuple[int, float, float, bool]], ws: dict[str, int], stray: list[str],
           info: dict[str, Any]) -> dict[str, Any]:
    """Figures and goals from what main() recorded; prints two tables."""
    t0 = min(seen - el for _it, el, seen, _tr in rows)  # the run's clock start (see docstring)
    train = [(it, t0 + el) for it, el, _seen, tr in rows if tr]
    covered = [(t, it - 1) for t, it, _p in shown]  # caption iter N: rows up to N-1 are written
    t_warm, t_last = t_start + warmup, t_start + samples[-1]["t"]
    lag, unshown = lags(train, covered, t_warm, t_last - 5.0, t_last)
    post = [s for s in samples if s["t"] >= warmup]
    ts, rss = [s["t"] for s in post], [s["rss_mib"] for s in post]
    span_s = ts[-1] - ts[0]
    slope = slope_per_10min(ts, rss)
    heap = [s["js_heap_mib"] for s in post]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(shown) if a[0] >= t_warm]
    cpu = [(b["server_cpu_s"] - a["server_cpu_s"]) / (b["t"] - a["t"]) for a, b in itertools.pairwise(post)]
    third = max(1, len(cpu) // 3)
    updates = sum(1 for t, _i, _p in shown if t >= t_warm)
    ws_bytes = post[-1]["ws_bytes"] - post[0]["ws_bytes"]
    lag_s = {"p50": pct(lag, 50), "p90": pct(lag, 90), "p99": pct(lag, 99),
             "max": max(lag, default=float("nan")), "rows": len(lag), "never_shown": unshown,
             "over_goal": sum(x > LAG_GOAL_S for x in lag)}
    res: dict[str, Any] = {
        "machine": info, "minutes": minutes, "warmup_s": warmup, "preset": args.preset,
        "log_interval": args.log_interval, "eval_interval": args.eval_interval,
        "command": "python -m bench.bench_live " + ("--quick" if args.quick else f"--minutes {minutes:g}"),
        "lag_s": lag_s,
        "rss_mib": {"start": rss[0], "end": rss[-1], "max": max(rss), "min": min(rss),
                    "slope_per_10min": slope, "span_min": span_s / 60},
        "chromium": {"rss_start": post[0]["chromium_rss_mib"], "rss_end": post[-1]["chromium_rss_mib"],
                     "js_heap_start": heap[0], "js_heap_end": heap[-1],
                     "js_heap_slope_per_10min": slope_per_10min(ts, heap)},
        "diagnostics": {
            "updates_shown": updates,
            "update_gap_s": {"p50": pct(gaps, 50), "p90": pct(gaps, 90), "max": max(gaps, default=0.0)},
            "ws_kib_per_s": ws_bytes / 1024 / span_s, "ws_kib_per_update": ws_bytes / 1024 / max(1, updates),
            "ws_max_frame_kib": ws["max"] / 1024,
            "metrics_rows": len(rows), "metrics_mib": samples[-1]["metrics_bytes"] / 2**20,
            "server_cpu_cores": {"first_third": statistics.fmean(cpu[:third]),
                                 "last_third": statistics.fmean(cpu[-third:])},
            "watcher_delay_s": statistics.median(seen - (t0 + el) for _it, el, seen, _tr in rows),
            "page_exceptions": max(s["exceptions"] for s in samples),
            "last_points": shown[-1][2] if shown else None,
            "iters_per_s": (train[-1][0] - train[0][0]) / max(1e-9, train[-1][1] - train[0][1]),
        },
        "stray_processes": stray, "samples": samples,
    }
    decided = span_s >= 8 * 60  # over a few minutes a slope is mostly allocator noise
    res["goals"] = [
        goal("live chart lag (trainer row -> page), max", f"{lag_s['max']:.2f} s",
             f"p50 {lag_s['p50']:.2f} / p90 {lag_s['p90']:.2f} / p99 {lag_s['p99']:.2f} s", None,
             f"<= {LAG_GOAL_S:g} s", bool(lag) and max(lag) <= LAG_GOAL_S and not unshown,
             f"{len(lag)} rows, {unshown} never shown"),
        goal(f"server RSS slope over {span_s / 60:.1f} min", f"{slope:+.2f} MiB/10 min",
             f"RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB (max {max(rss):.0f})", None,
             f"< {SLOPE_GOAL_MIB:g} MiB/10 min", (slope < SLOPE_GOAL_MIB) if decided else None,
             "" if decided else "run >= 10 min to decide", None if decided else "INCONCLUSIVE"),
        goal("no process left behind", len(stray), None, None, "0", not stray, "; ".join(stray)[:200]),
    ]
    print_report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


def print_report(res: dict[str, Any]) -> None:
    lg, r, c, d = res["lag_s"], res["rss_mib"], res["chromium"], res["diagnostics"]
    gap, cpu = d["update_gap_s"], d["server_cpu_cores"]
    rows = [
        ("lag p50 / p90 / p99 / max (s)", f"{lg['p50']:.2f} / {lg['p90']:.2f} / {lg['p99']:.2f} / {lg['max']:.2f}"),
        ("rows measured / never shown / over 2 s", f"{lg['rows']} / {lg['never_shown']} / {lg['over_goal']}"),
        ("server RSS start / end / max (MiB)", f"{r['start']:.1f} / {r['end']:.1f} / {r['max']:.1f}"),
        ("server RSS slope (MiB / 10 min)", f"{r['slope_per_10min']:+.2f} over {r['span_min']:.1f} min"),
        ("Chromium RSS start / end (MiB)", f"{c['rss_start']:.0f} / {c['rss_end']:.0f}"),
        ("JS heap start / end (MiB)", f"{c['js_heap_start']:.1f} / {c['js_heap_end']:.1f}"),
        ("JS heap slope (MiB / 10 min)", f"{c['js_heap_slope_per_10min']:+.2f}"),
        ("updates shown", d["updates_shown"]),
        ("update gap p50 / p90 / max (s)", f"{gap['p50']:.2f} / {gap['p90']:.2f} / {gap['max']:.2f}"),
        ("websocket KiB/s; KiB/update", f"{d['ws_kib_per_s']:.1f}; {d['ws_kib_per_update']:.1f}"),
        ("largest websocket frame (KiB)", f"{d['ws_max_frame_kib']:.1f}"),
        ("server CPU (cores) first / last third", f"{cpu['first_third']:.2f} / {cpu['last_third']:.2f}"),
        ("metrics rows / MiB; trainer it/s", f"{d['metrics_rows']} / {d['metrics_mib']:.1f}; {d['iters_per_s']:.0f}"),
        ("points on the chart at the end", d["last_points"]),
    ]
    print(table(["figure", "value"], [list(r) for r in rows]))
    print(table(["goal", "measured", "detail", "target", "result"],
                [[g["goal"], g["measured"], g["peer"], g["target"], g["status"] or g["passed"]]
                 for g in res["goals"]]))


if __name__ == "__main__":
    def _interrupt(*_: Any) -> None:
        raise KeyboardInterrupt  # so a SIGTERM still runs main's finally (no stray processes)

    signal.signal(signal.SIGTERM, _interrupt)
    main()
