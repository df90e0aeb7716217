"""Patching: gpt.patching.sweep against a per-cell loop of Edits, and against TransformerLens 2.x.

Goals (issue 14), CPU, 1 torch thread, full `resid_pre` and `head` sweeps (logit difference of the
clean and corrupted runs' top tokens at the last position):
  - against a per-cell Python loop doing the same work with our own Edits (record the clean run,
    run the corrupted one, then one forward per cell under Edits().patch): >= 10x faster, values
    equal to 1e-5;
  - against TransformerLens's patching.get_act_patch_resid_pre and
    get_act_patch_attn_head_out_all_pos on the same weights (a HookedTransformer loaded with our state
    dict through its nanoGPT conversion; logits checked first): >= 5x faster, values equal to 1e-4.
Cases: the bundled model (checkpoints/shakespeare-char) at T=64, and a GPT-2-small-shaped random
model at T=32. The corrupted prompt swaps one token in the middle (the usual setup: a shared prefix),
and, as the worst case for sweep (the loop and TransformerLens cost the same wherever it is), at
position 0.

TransformerLens runs in its own virtual environment ($TRANSFORMERLENS_VENV, else /tmp/tlvenv; see
bench/peers.py), as a worker process this script starts (`-m bench.bench_patching --tl-worker`) and
talks to in JSON lines; the worker times each of its sweeps on its own CPU clock. Every variant is
timed interleaved in one run (the order rotates every repetition); ratios are medians of
per-repetition ratios. Without the venv the TransformerLens goals are skipped with a message.

    .venv/bin/python -m bench.bench_patching [--quick] [--only bundled|gpt2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench import DEFAULT_THREADS, case_args, goal, machine, ratio, set_threads, table, verdict
from bench.peers import transformerlens_how_to_get, transformerlens_python
from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.model import GPT
from gpt.patching import logit_diff, sweep
from gpt.record import Recorder

ROOT = Path(__file__).resolve().parent.parent
GOAL_LOOP, GOAL_TL = 10.0, 5.0
TOL_LOOP, TOL_TL = 1e-5, 1e-4
SITES = {"resid_pre": "hook_resid_pre", "head": "attn.hook_z"}
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east"


# -- cases --------------------------------------------------------------------------------------------
def case(name: str) -> tuple[GPT, torch.Tensor, dict[str, torch.Tensor]]:
    """(model, clean ids (T,), {label: corrupted ids}) for "bundled" or "gpt2"."""
    if name == "bundled":
        from gpt.checkpoint import load  # the checkpoint loader (tokenizers, safetensors) only here
        model, tok, _ = load(ROOT / "checkpoints" / "shakespeare-char")
        clean = torch.tensor(tok.encode(TEXT)[:64])
        swap = tok.encode("x")[0]
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("gpt2")).eval()
        clean = torch.randint(model.config.vocab_size, (32,), generator=torch.Generator().manual_seed(1))
        swap = 50000
    T = clean.numel()
    out = {}
    for at in (T // 2, 0):
        c = clean.clone()
        c[at] = swap if clean[at] != swap else swap - 1
        out[f"corrupted at {at}"] = c
    return model.eval(), clean, out


def answers(model: GPT, clean: torch.Tensor, corrupt: torch.Tensor) -> tuple[int, int]:
    """The clean run's top next token, and the corrupted run's (the clean run's second if equal)."""
    with torch.no_grad():
        lc, lx = model(clean[None])[0][0, -1], model(corrupt[None])[0][0, -1]
    a, b = int(lc.argmax()), int(lx.argmax())
    return (a, b) if a != b else (a, int(lc.topk(2).indices[1]))


def loop_sweep(model: GPT, clean: torch.Tensor, corrupt: torch.Tensor, site: str, a: int, b: int,
               cells: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """The same result one forward per cell: record the clean run, run the corrupted one (its metric
    is the baseline), then patch each cell with Edits().patch. Cells not in `cells` stay NaN."""
    L, H, T = model.config.n_layer, model.config.n_head, clean.numel()
    metric = logit_diff(a, b)
    with torch.no_grad():
        rec = Recorder([f"blocks.*.{SITES[site]}"], compact=False)
        metric(model(clean[None], rec=rec)[0])  # the clean metric
        metric(model(corrupt[None])[0])  # the corrupted metric
        out = torch.full((L, H if site == "head" else T), float("nan"))
        for l, j in cells or [(l, j) for l in range(L) for j in range(out.size(1))]:
            name = f"blocks.{l}.{SITES[site]}"
            edit = Edits().patch(name, rec[name], heads=[j]) if site == "head" else \
                Edits().patch(name, rec[name], positions=[j])
            out[l, j] = metric(model(corrupt[None], edit=edit)[0])[0]
    return out


# -- the TransformerLens worker (runs in the other venv) --------------------------------------------------
def tl_worker() -> None:
    """Serve JSON-line requests on stdin: load a case folder, then run TransformerLens sweeps."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the protocol
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    from importlib.metadata import version

    from transformer_lens import HookedTransformer, HookedTransformerConfig, patching
    from transformer_lens.pretrained.weight_conversions.nanogpt import convert_nanogpt_weights
    proto.write(json.dumps({"ready": version("transformer-lens")}) + "\n")
    proto.flush()
    model = None
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "load":
            d = Path(req["dir"])
            c = json.loads((d / "config.json").read_text())
            cfg = HookedTransformerConfig(
                n_layers=c["n_layer"], d_model=c["n_embd"], n_heads=c["n_head"], d_head=c["n_embd"] // c["n_head"],
                d_mlp=4 * c["n_embd"], d_vocab=c["vocab_size"], n_ctx=c["block_size"], normalization_type="LN",
                act_fn="gelu" if c["activation"] == "gelu" else "gelu_new", eps=1e-5, device="cpu",
                default_prepend_bos=False)
            model = HookedTransformer(cfg)
            model.load_and_process_state_dict(
                convert_nanogpt_weights(load_file(str(d / "weights.safetensors")), cfg), fold_ln=False,
                center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                refactor_factored_attn_matrices=False)
            model.eval()
            ref = load_file(str(d / "logits.safetensors"))
            with torch.no_grad():
                diff = (model(ref["ids"]) - ref["logits"]).abs().max().item()
            reply: dict[str, Any] = {"max_logit_diff": diff}
        elif req["op"] == "sweep":
            clean, corrupt = torch.tensor([req["clean"]]), torch.tensor([req["corrupt"]])
            a, b = req["a"], req["b"]

            def metric(logits: torch.Tensor) -> torch.Tensor:
                return logits[0, -1, a] - logits[0, -1, b]
            hook = "hook_resid_pre" if req["site"] == "resid_pre" else "hook_z"
            c0, t0 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(hook))
                corrupt_logits = model(corrupt)
                fn = patching.get_act_patch_resid_pre if req["site"] == "resid_pre" else \
                    patching.get_act_patch_attn_head_out_all_pos
                values = fn(model, corrupt, cache, metric)
            t1, c1 = time.perf_counter(), time.process_time()
            reply = {"wall": t1 - t0, "cpu": c1 - c0, "values": values.tolist(),
                     "clean": float(metric(clean_logits)), "corrupt": float(metric(corrupt_logits))}
        else:
            return
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


class TLPeer:
    """The worker process, seen from here: load(model, ids) then sweep(...) -> (wall, cpu, values)."""

    def __init__(self, python: Path, tmp: Path) -> None:
        self.tmp, self.log = tmp, open(tmp / "worker.log", "w")
        self.proc = subprocess.Popen([str(python), "-m", "bench.bench_patching", "--tl-worker"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        try:
            self.version = self.read()["ready"]  # raises, with the worker's log, when it cannot start
        except RuntimeError:
            self.close()
            raise

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = (self.tmp / "worker.log").read_text()[-3000:]
            raise RuntimeError(f"the TransformerLens worker stopped:\n{tail}")
        return json.loads(line)

    def load(self, model: GPT, ids: torch.Tensor, name: str) -> float:
        """Hand our weights to the worker; returns max |logit difference| on `ids` (B, T)."""
        from safetensors.torch import save_file
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
                  str(d / "weights.safetensors"))  # clones: safetensors refuses tied (shared) tensors
        (d / "config.json").write_text(json.dumps(model.config.to_dict()))
        with torch.no_grad():
            save_file({"ids": ids, "logits": model(ids, ids)[0]}, str(d / "logits.safetensors"))
        return self.ask({"op": "load", "dir": str(d)})["max_logit_diff"]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- timing --------------------------------------------------------------------------------------------
Timed = Callable[[], tuple[float, float, Any]]  # -> (wall s, cpu s, result)


def local(fn: Callable[[], Any]) -> Timed:
    def timed() -> tuple[float, float, Any]:
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, time.process_time() - c0, out
    return timed


def interleave(fns: dict[str, Timed], reps: int, warmup: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """CPU seconds per variant and repetition (order rotated, reversed on odd repetitions), and each
    variant's last result. As bench.interleaved, but a variant may report a time measured elsewhere."""
    names, last = list(fns), {}
    for _ in range(warmup):
        for n in names:
            last[n] = fns[n]()[2]
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order[::-1] if r % 2 else order:
            _, c, last[n] = fns[n]()
            cpu[n].append(c)
    return cpu, last


def bench_case(name: str, reps: int, warmup: int, peer: TLPeer | None) -> list[dict[str, Any]]:
    model, clean, corrupted = case(name)
    (mid, c_mid), (worst, c_worst) = corrupted.items()
    a, b = answers(model, clean, c_mid)
    print(f"\n-- {name}: T={clean.numel()}, answer tokens {a} vs {b}; {mid} (timed against the loop and "
          f"TransformerLens), {worst} (sweep's worst case)")
    tl_diff = None if peer is None else peer.load(model, torch.stack([clean, c_mid]), name)
    if tl_diff is not None:
        print(f"   TransformerLens logits vs ours: max |diff| {tl_diff:.2e}")
        if tl_diff > TOL_TL:
            raise AssertionError(f"{name}: TransformerLens and our model disagree (max |dlogit| {tl_diff:.2e})")
    rows = []
    metric = logit_diff(a, b)
    for site in SITES:
        fns: dict[str, Timed] = {  # called within this iteration: `site` is the current one
            "sweep": local(lambda: sweep(model, clean, c_mid, site, metric)),
            "sweep worst": local(lambda: sweep(model, clean, c_worst, site, metric)),
            "loop": local(lambda: loop_sweep(model, clean, c_mid, site, a, b))}
        if peer is not None:
            def tl(site: str = site) -> tuple[float, float, Any]:
                r = peer.ask({"op": "sweep", "site": site, "clean": clean.tolist(), "corrupt": c_mid.tolist(),
                              "a": a, "b": b})
                return r["wall"], r["cpu"], torch.tensor(r["values"])
            fns["TransformerLens"] = tl
        cpu, last = interleave(fns, reps, warmup)
        res, ref = last["sweep"], last["loop"]
        worst_res = last["sweep worst"]
        L, n = ref.shape
        sample = [(l, j) for l in range(L) for j in range(n)]
        if len(sample) > 48:  # a GPT-2 loop is a minute: check the worst case on every 8th cell
            sample = sample[::8]
        worst_ref = loop_sweep(model, clean, c_worst, site, a, b, sample)
        ok = ~worst_ref.isnan()
        diffs = {"loop": (res.values - ref).abs().max().item(),
                 "worst": (worst_res.values[ok] - worst_ref[ok]).abs().max().item()}
        if peer is not None:
            diffs["TransformerLens"] = (res.values - last["TransformerLens"]).abs().max().item()
        for variant, peer_name, against in [("sweep", "loop", mid), ("sweep worst", "loop", worst),
                                            ("sweep", "TransformerLens", mid)]:
            if peer_name not in cpu:
                rows.append({"case": name, "site": site, "against": peer_name, "corrupted": against, "skipped": True})
                continue
            r = ratio(cpu[peer_name], cpu[variant])
            result = worst_res if variant == "sweep worst" else res
            diff = diffs["worst" if variant == "sweep worst" else peer_name]
            rows.append({"case": name, "site": site, "against": peer_name, "corrupted": against, "reps": reps,
                         "ours_ms": 1000 * statistics.median(cpu[variant]),
                         "peer_ms": 1000 * statistics.median(cpu[peer_name]), "speedup": r["median_of_ratios"],
                         "q25": r["q25"], "q75": r["q75"], "max_abs_diff": diff, "computed": result.computed,
                         "cells": result.values.numel(), "skipped": False})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = case_args("python -m bench.bench_patching", __doc__, DEFAULT_THREADS).parse_args(argv)
    set_threads(args.threads)
    python = transformerlens_python()
    print(f"== bench_patching: sweep vs a per-cell Edits loop and TransformerLens; torch threads {args.threads}")
    if python is None:
        print(transformerlens_how_to_get())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nanolens-tl-") as tmp:
        peer = None
        if python is not None:
            try:
                peer = TLPeer(python, Path(tmp))
                print(f"TransformerLens {peer.version} in {python}")
            except RuntimeError as e:  # a venv without transformer_lens, say: skip the comparison
                print(f"{e}\n{transformerlens_how_to_get()}")
        try:
            for name in [args.only] if args.only else ["bundled", "gpt2"]:
                reps = {"bundled": 3 if args.quick else 7, "gpt2": 1 if args.quick else 2}[name]
                rows += bench_case(name, reps, 1 if name == "bundled" else 0, peer)
        finally:
            if peer is not None:
                peer.close()
    goals = []
    for r in rows:
        target, tol = (GOAL_TL, TOL_TL) if r["against"] == "TransformerLens" else (GOAL_LOOP, TOL_LOOP)
        what = f"{r['site']} sweep vs {'TransformerLens' if r['against'] != 'loop' else 'per-cell Edits loop'}, " \
               f"{r['case']}, {r['corrupted']}"
        if r["skipped"]:
            goals.append(goal(what, None, None, None, f">= {target}x", None, "TransformerLens venv not found: skipped"))
            continue
        ok = r["speedup"] >= target and r["max_abs_diff"] <= tol
        goals.append(goal(what, f"{r['ours_ms']:.0f} ms", f"{r['peer_ms']:.0f} ms", round(r["speedup"], 1),
                          f">= {target}x, values within {tol:g}", ok,
                          f"cpu time, 1 thread; median of {r['reps']} interleaved ratios (IQR {r['q25']:.1f}-"
                          f"{r['q75']:.1f}); max |dvalue| {r['max_abs_diff']:.1e}; {r['computed']} of {r['cells']} "
                          "cells needed a forward"))
    print()
    print(table(["case", "site", "corrupted", "against", "reps", "sweep ms", "peer ms", "speedup", "IQR",
                 "max|dvalue|", "cells run", "goal"],
                [[r["case"], r["site"], r["corrupted"], r["against"], "-", "-", "-", "-", "-", "-", "-", "skipped"]
                 if r["skipped"] else
                 [r["case"], r["site"], r["corrupted"], r["against"], r["reps"], r["ours_ms"], r["peer_ms"],
                  r["speedup"], f"{r['q25']:.1f}-{r['q75']:.1f}", f"{r['max_abs_diff']:.1e}",
                  f"{r['computed']}/{r['cells']}", verdict(g["passed"])] for r, g in zip(rows, goals)]))
    return {"script": "bench_patching", "machine": machine(), "peer": str(python) if python else "not found",
            "rows": rows, "goals": goals}


if __name__ == "__main__":
    if "--tl-worker" in sys.argv:
        tl_worker()
    else:
        main()
