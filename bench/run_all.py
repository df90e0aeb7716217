"""Run every benchmark in bench/ and print one summary of all goals.

Discovery: every module bench/bench_*.py that defines main(argv) -> dict (see bench/__init__.py for
the contract), in name order, so scripts added later (bench_pages, bench_train, bench_timeline, ...)
run without editing this file. A script that raises is reported and the others still run.

    .venv/bin/python -m bench.run_all [--quick] [--only NAME ...] [--json PATH] [--strict]

Exit status: 1 if a script crashed (or, with --strict, if a goal was missed), else 0; a missed
goal is printed as FAIL either way.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

from bench import machine, table, verdict

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names of bench/bench_*.py, sorted."""
    return sorted(f"bench.{p.stem}" for p in BENCH_DIR.glob("bench_*.py"))


def run_one(module: str, argv: list[str]) -> dict[str, Any]:
    """Import `module` and call its main(argv); the result dict, or {"error": ...}."""
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(module)
        main = getattr(mod, "main", None)
        if not callable(main):
            return {"skipped": "no main(argv) -> dict"}
        res = main(list(argv))
        if not isinstance(res, dict):
            res = {"error": f"main() returned {type(res).__name__}, not a dict"}
    except SystemExit as e:  # argparse rejecting a flag, or an explicit exit
        res = {"error": f"exited with status {e.code} (does it accept {argv}?)"}
    except Exception:  # a crash in one benchmark must not hide the others' results
        res = {"error": traceback.format_exc()}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    gc.collect()
    return res


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per goal: script, goal, measured, peer, ratio, target, result."""
    rows: list[list[Any]] = []
    for module, res in results.items():
        name = module.split(".")[-1]
        if "error" in res:
            rows.append([name, "CRASHED (see above)", "-", "-", "-", "-", "ERROR"])
        elif "skipped" in res:
            rows.append([name, res["skipped"], "-", "-", "-", "-", "skipped"])
        for g in res.get("goals", []):
            rows.append([name, g.get("goal"), g.get("measured"), g.get("peer"), g.get("ratio"), g.get("target"),
                         g.get("status") or verdict(g.get("passed"))])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script (fewer repetitions)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts, e.g. bench_kv")
    ap.add_argument("--json", type=Path, metavar="PATH", help="write every script's result dict here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)

    modules = discover()
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = wanted - {m.split(".")[-1] for m in modules}
        if unknown:
            ap.error(f"no such bench script(s): {sorted(unknown)}; found {[m.split('.')[-1] for m in modules]}")
        modules = [m for m in modules if m.split(".")[-1] in wanted]
    script_argv = ["--quick"] if args.quick else []
    info = machine()
    print(f"nanolens benchmarks, {info['date']}: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"load {info['loadavg_1m']}; scripts: {', '.join(m.split('.')[-1] for m in modules)}\n")

    results: dict[str, dict[str, Any]] = {}
    for module in modules:
        res = run_one(module, script_argv)
        results[module] = res
        if "error" in res:
            print(f"!! {module} failed:\n{res['error']}")
        print(f"-- {module}: {res['seconds']} s\n")

    rows = summary_rows(results)
    print("== summary")
    print(table(["script", "goal", "measured", "peer", "ratio", "target", "result"], rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "argv": script_argv, "results": results},
                                        indent=1, default=str))
        print(f"\nresults written to {args.json}")
    crashed = any("error" in r for r in results.values())
    missed = any(r[-1] == "FAIL" for r in rows)
    return 1 if crashed or (args.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
