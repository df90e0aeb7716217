"""Compare page speed: after a prompt change, the Compare page is ready within 2x the time of one
Attention page for the same prompt, server-side, for two checkpoints of the `baby` model's shape
(random weights, two seeds) at T=256 on this CPU.

Both sides are timed as bench/bench_pages.py times a page: the recorded forward of the names the
page records (a new prompt misses the trace cache), the Inspection and the page's view builders
(the same app.views functions the page calls), and the serialisation Streamlit does before sending.
The Compare page's tabs are lazy, so each tab is one variant: two recorded forwards (one a side, of
the names that tab reads), the summary row (losses, KL) and that tab's figures. Head scores count
the prompt's scores only: induction is measured once per checkpoint on a repeated random sequence
(resources.model_scores), not on a prompt change. Every variant runs once per repetition, order
rotating (bench.interleaved); a ratio is the median of per-repetition ratios. One torch thread:
the process CPU clock; more: the wall clock (as bench_pages).

    .venv/bin/python -m bench.bench_compare [--quick] [--preset baby] [--T 256] [--reps 15] [--threads 1]
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bench import DEFAULT_THREADS, goal, interleaved, machine, ms, page_args, ratio, set_threads, table
from bench.bench_pages import CHARS, serialize, trace
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.tokenizer import CharTokenizer

GOAL = 2.0  # the Compare page's time over one Attention page's


class Cells:
    """The summary row as a view: its strings are what Streamlit sends."""

    def __init__(self, cells: list[tuple]) -> None:
        self.text = " ".join(str(c[1]) for c in cells)


def variants(models: tuple[GPT, GPT], tok: CharTokenizer, ids: list[int]) -> dict[str, Callable[[], Any]]:
    """name -> fn() doing one prompt change's work: the Attention page, and each Compare tab."""
    from app.inspection import Inspection, Loaded
    from app.views import attention as va
    from app.views import compare as vc
    from app.views.layers import lens_width, lens_window
    from gpt import heads

    T = len(ids)
    loaded = [Loaded(model=m, tokenizer=tok, meta={}, ref=f"bench-{i}", label=f"bench {i}", config=m.config)
              for i, m in enumerate(models)]
    induction = [heads.induction_scores(m) for m in models]  # per checkpoint, not per prompt (see the docstring)
    L = models[0].config.n_layer

    def attention() -> None:
        rec = trace(models[0], ids, va.NAMES)
        serialize(va.build(Inspection.of(loaded[0], tuple(ids), rec, va.NAMES, L - 1, 0), T - 1))

    def compare(tab: str, build: Callable[[Any, Any, Any], Any]) -> Callable[[], None]:
        names = vc.names_for(tab)

        def run() -> None:
            a, b = (Inspection.of(x, tuple(ids), trace(x.model, ids, names), names, L - 1, 0) for x in loaded)
            comp = vc.comparison(a, b)
            serialize(Cells(vc.summary(a, b, comp)))
            serialize(build(a, b, comp))
        return run

    def scores(a: Any, b: Any, comp: Any) -> Any:
        sides = [{**heads.prompt_head_scores([s.rec[f"blocks.{i}.attn.hook_pattern"][0] for i in range(L)]),
                  "induction": ind} for s, ind in zip((a, b), induction)]  # as resources.compare_scores
        return vc.build_scores(a, b, *sides, "prev_token", comp)

    def dla(a: Any, b: Any, comp: Any) -> Any:
        return vc.build_dla(a, b, comp, T - 1, next(iter(vc.dla_tokens(a, b, comp, T - 1))))

    window = lens_window(T, T - lens_width(tok.kind), lens_width(tok.kind))
    builds = {"Attention": lambda a, b, c: vc.build_attention(a, b, c),
              "Logit lens": lambda a, b, c: vc.build_lens(a, b, c, window),
              "Next token": lambda a, b, c: vc.build_next(a, b, c, T - 1),
              "Head scores": scores, "Attribution (DLA)": dla}
    return {"attention page": attention, **{f"compare · {t}": compare(t, f) for t, f in builds.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = page_args(__doc__, DEFAULT_THREADS).parse_args(argv)
    reps = 5 if args.quick else args.reps
    set_threads(args.threads)
    tok = CharTokenizer(list(CHARS))
    cfg = GPTConfig.preset(args.preset, vocab_size=tok.vocab_size, dropout=0.0)
    if not 1 <= args.T <= cfg.block_size:
        ap.error(f"--T must be in 1..{cfg.block_size} for {args.preset}")
    models = []
    for seed in (0, 1):  # two checkpoints of one shape
        torch.manual_seed(seed)
        models.append(GPT(cfg).eval())
    ids = torch.randint(tok.vocab_size, (args.T,), generator=torch.Generator().manual_seed(1)).tolist()

    fns = variants((models[0], models[1]), tok, ids)
    times = interleaved(fns, reps)
    clock, base = times.clock, times.primary["attention page"]
    rows, goals, results = [], [], {}
    for name in fns:
        r = ratio(times.primary[name], base)
        results[name] = {"cpu_ms": ms(times.cpu[name]), "wall_ms": ms(times.wall[name]), "ratio": r}
        if name == "attention page":
            rows.append([name, ms(times.cpu[name]), ms(times.wall[name]), None, None, None])
            continue
        passed = r["median_of_ratios"] <= GOAL
        rows.append([name, ms(times.cpu[name]), ms(times.wall[name]), r["median_of_ratios"],
                     f"{r['q25']:.2f}–{r['q75']:.2f}", passed])
        goals.append(goal(f"Compare page, {name.split('· ')[1]} tab, over one Attention page", f"{ms(times.primary[name]):.0f} ms",
                          f"{ms(base):.0f} ms", round(r["median_of_ratios"], 3), f"<= {GOAL:g}x", passed,
                          f"{args.preset} T={args.T}, {clock} clock, median of {reps} interleaved"))
    m = machine()
    print(f"Compare page against the Attention page: {args.preset} ({cfg.n_layer} layers x {cfg.n_head} heads, "
          f"C={cfg.n_embd}), T={args.T}, {args.threads} torch thread(s), {reps} interleaved repetitions, "
          f"load average {m['loadavg_1m']} on {m['cores']} cores")
    print(table(["page", "cpu ms", "wall ms", f"/ attention ({clock})", "IQR", f"<= {GOAL:g}x"], rows))
    return {"machine": m, "preset": args.preset, "T": args.T, "reps": reps, "variants": results, "goals": goals}


if __name__ == "__main__":
    main()
