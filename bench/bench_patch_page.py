"""The Patch page at T=64 on the bundled model, through AppTest: one rerun that runs an uncached
sweep (the model already loaded), per site; the issue 14 goal is <= 1 s on CPU.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_patch_page.py
"""
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest
clean = ("To be, or not to be, that is the question: whether 'tis nobler i")[:64]
corrupt = clean[:32] + ("x" if clean[32] != "x" else "y") + clean[33:]
for site in ("resid_pre", "head_pos"):
    ts = []
    for rep in range(4):
        from app import resources
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=120); at.run(); at.switch_page("screens/patch.py")
        at.session_state["pt_clean"], at.session_state["pt_corrupt"] = clean, corrupt
        at.run()
        at.text_input(key="pt_ans_Clean answer").set_value("e"); at.text_input(key="pt_ans_Corrupted answer").set_value("a")
        at.selectbox(key="pt_site").set_value(site); at.run()
        resources.traces._analysis_cache().clear()  # the sweep uncached (the model stays loaded)
        b = [b for b in at.button if b.label == "Run the sweep"][0]
        t0 = time.perf_counter(); b.click().run(); ts.append(time.perf_counter() - t0)
        assert not at.exception and not at.error, [e.value for e in at.error]
    print(site, len(clean), "tokens: page run with uncached sweep, median of 3 after warm-up", f"{statistics.median(ts[1:])*1000:.0f} ms")
