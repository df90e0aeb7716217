"""The analysis job (trainers.analyze, trainers.analysis_runs) and its files (gpt.score_history):
scores against an independent per-window loop, kill -9 (a real one, and one inside a write) then
resume, stop and resume (SIGTERM and the STOP file), the refusals' messages, the reader's errors.
Every test kills and reaps the processes it started."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import score_history as sh
from gpt.checkpoint import list_snapshots, load
from gpt.dataset_scores import induction_targets, window_scores_from_pattern
from gpt.heads import induction_scores
from gpt.layout import analysis_dir
from gpt.record import Recorder
from tests.job_fixtures import reap, wait_for
from trainers import analysis_runs as ar
from trainers.analyze import AnalysisError, main, run_analysis
from trainers.runlock import RunLock

REPO = Path(__file__).resolve().parents[1]
MANY = 1000  # windows that keep the tiny model busy for a second or so per snapshot
NAMES = ["prev_token", "induction_random", "induction_natural", "sink", "self", "entropy"]


@pytest.fixture
def run(job_run: Path) -> Path:
    """A private copy of the tiny run (4 snapshots; conftest's job_run, which reaps its analysis
    process at teardown)."""
    return job_run


def start(run_dir: Path, started: list[int], **kw) -> dict:
    """trainers.analysis_runs.start_analysis, its process noted in `started` for teardown."""
    st = ar.start_analysis(run_dir.name, run_dir.parent, **kw)
    started.append(st["pid"])  # (the child's pid: start writes it before it returns)
    return st


def results(run_dir: Path) -> dict[str, dict]:
    """Every result file of the run's analysis, parsed: {file name: JSON}."""
    return {p.name: json.loads(p.read_text()) for p in sorted(analysis_dir(run_dir).glob("iter_*.json"))}


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tmp_path_factory):
    """The result files of an uninterrupted analysis of the tiny run with MANY windows."""
    root = tmp_path_factory.mktemp("reference")
    shutil.copytree(tiny_checkpoint.run_dir, root / "tiny-run")
    st = run_analysis(root / "tiny-run", windows=MANY, log=lambda _m: None)
    assert st["state"] == "finished" and st["done"] == st["total"] == 4
    return results(root / "tiny-run")


# -- the scores -----------------------------------------------------------------------------------------
def hand_scores(model, ids: list[int]) -> dict[str, list[list[float]]]:
    """One window's scores [L][H] by explicit loops over queries and keys (float64 Python)."""
    rec = Recorder(["blocks.*.attn.hook_pattern"])  # compact: patterns rebuilt from stored scores
    with torch.no_grad():
        model.eval()
        model(torch.tensor([ids]), rec=rec)
    T, out = len(ids), {k: [] for k in NAMES if k != "induction_random"}
    for layer in range(model.config.n_layer):
        P = rec[f"blocks.{layer}.attn.hook_pattern"][0].double().tolist()  # [H][T][T]
        for k in out:
            out[k].append([])
        for p in P:
            qs = range(1, T)
            out["prev_token"][-1].append(sum(p[t][t - 1] for t in qs) / (T - 1))
            out["sink"][-1].append(sum(p[t][0] for t in qs) / (T - 1))
            out["self"][-1].append(sum(p[t][t] for t in qs) / (T - 1))
            out["entropy"][-1].append(sum(-sum(x * math.log2(x) for x in p[t][:t + 1] if x > 0) for t in qs) / (T - 1))
            found = [sum(p[t][j] for j in range(1, t) if ids[j - 1] == ids[t]) for t in qs
                     if any(ids[j - 1] == ids[t] for j in range(1, t))]
            out["induction_natural"][-1].append(sum(found) / len(found) if found else math.nan)
    return out


def test_job_scores_equal_hand_averages(run, tiny_checkpoint):
    lines = []
    st = run_analysis(run, windows=10, top_k=3, log=lines.append)
    assert st["state"] == "finished" and st["done"] == st["total"] == len(tiny_checkpoint.iters) == 4
    assert "analysis: 4 snapshots (0 done, 4 to go), 10 windows of 32 tokens" in lines[0]
    h = sh.read_history(run)
    assert h.iters == list(tiny_checkpoint.iters) and h.meta["n_windows"] == 10 and h.meta["block"] == 32
    assert sorted(h.scores) == sorted(NAMES) and h.scores["prev_token"].shape == (4, 2, 2)
    # the windows are held-out text: each lies in the last 10% of the corpus
    tok = load(tiny_checkpoint.latest)[1]
    val = tiny_checkpoint.text[int(len(tiny_checkpoint.text) * 0.9):]
    assert len(h.windows) == 10 and all(tok.decode(w) in val for w in h.windows)
    for s, (it, path) in enumerate(list_snapshots(run)):
        model = load(path)[0]
        per = [hand_scores(model, w) for w in h.windows]  # N x {name: [L][H]}
        for name in per[0]:
            for layer in range(2):
                for head in range(2):
                    vals = [p[name][layer][head] for p in per]
                    defined = [v for v in vals if not math.isnan(v)]
                    assert h.scores[name][s, layer, head].item() == pytest.approx(sum(defined) / len(defined), abs=1e-5)
                    want = sorted(((v, -i) for i, v in enumerate(vals) if not math.isnan(v)), reverse=True)[:3]
                    got = h.top[name][s][layer][head]
                    assert [v for _, v in got] == pytest.approx([v for v, _ in want], abs=1e-5), (name, it)
                    assert all(vals[i] == pytest.approx(v, abs=1e-5) for i, v in got)
        # random repeats: the mean over the job's 16 sequences is gpt.heads' induction score
        ref = induction_scores(model, induction_len=16, induction_batch=16, seed=0)
        torch.testing.assert_close(h.scores["induction_random"][s], ref, atol=1e-5, rtol=0)
        assert h.top["induction_random"][s] == [[[], []], [[], []]]


def test_entropy_from_scores_and_induction_targets_by_definition():
    g = torch.Generator().manual_seed(0)
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    s = (torch.randn(3, 2, 40, 40, generator=g) * 4).masked_fill(~causal, float("-inf"))  # (B, H, T, T)
    ids = torch.randint(0, 5, (3, 40), generator=g)
    by_log = window_scores_from_pattern(s.softmax(-1), ids)  # entropy by xlogy
    by_lse = window_scores_from_pattern(s.softmax(-1), ids, scores=s)  # entropy as lse - sum p s
    for k in by_log:
        torch.testing.assert_close(by_lse[k], by_log[k], atol=2e-5, rtol=0)
    M = induction_targets(ids).tolist()
    assert M == [[[1 <= j <= t - 1 and w[j - 1] == w[t] for j in range(40)] for t in range(40)] for w in ids.tolist()]


# -- kill -9 and resume ---------------------------------------------------------------------------------
def test_kill9_then_resume_equals_uninterrupted(run, reference, started):
    start(run, started, windows=MANY)
    st = wait_for(lambda: (s := ar.analysis_status("tiny-run", run.parent))["state"] != "running"
                  or s["done"] >= 1 and s)
    assert st["state"] == "running" and 1 <= st["done"] < 4, st
    os.killpg(st["pid"], signal.SIGKILL)
    reap([st["pid"]])
    st = ar.analysis_status("tiny-run", run.parent)
    assert st["state"] == "interrupted" and "start it again to resume" in st["message"]
    assert 1 <= st["done"] < 4
    start(run, started)  # resumes: the windows count comes from meta.json
    st = wait_for(lambda: (s := ar.analysis_status("tiny-run", run.parent))["state"] not in ar.LIVE and s)
    assert st["state"] == "finished" and st["done"] == st["total"] == 4, st
    assert results(run) == reference
    assert "analysis: 4 snapshots (" in (analysis_dir(run) / "analyze.log").read_text()
    assert not list(analysis_dir(run).glob(".*.tmp"))


KILL_IN_WRITE = """
import os, sys
real, n = os.replace, [0]
def replace(src, dst):
    if os.path.basename(str(dst)).startswith("iter_"):
        n[0] += 1
        if n[0] == 2:
            os._exit(9)  # the second snapshot's file is written in full, not yet renamed
    real(src, dst)
os.replace = replace
from trainers.analyze import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_inside_a_write_then_resume(run, reference):
    p = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, "--run", "tiny-run", "--root", str(run.parent),
                        "--windows", str(MANY), "--threads", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 9, p.stderr
    adir = analysis_dir(run)
    assert len(list(adir.glob(".iter_*.json.*.tmp"))) == 1 and len(sh.done_iters(run)) == 1
    assert sh.read_history(run).iters == [0]  # readers see the one complete file, never the temp
    assert ar.analysis_status("tiny-run", run.parent)["state"] == "interrupted"
    st = run_analysis(run, log=lambda _m: None)
    assert st["state"] == "finished" and st["done"] == 4
    assert results(run) == reference and not list(adir.glob(".*.tmp"))


# -- stop and resume --------------------------------------------------------------------------------
def test_stop_by_sigterm_and_stop_file_then_resume(run, reference, started):
    cli = subprocess.Popen([sys.executable, "-m", "trainers.analyze", "--run", "tiny-run", "--root", str(run.parent),
                            "--windows", str(MANY), "--threads", "1"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: sh.done_iters(run) or cli.poll() is not None)
        cli.send_signal(signal.SIGTERM)
        out, _ = cli.communicate(timeout=120)
    finally:
        reap([cli.pid])
    assert cli.returncode == 0 and "SIGTERM: stopping" in out, out
    st = ar.analysis_status("tiny-run", run.parent)
    assert st["state"] == "stopped" and st["done"] < 4 and "start it again to resume" in st["message"], (st, out)
    assert f"analysis: 4 snapshots (0 done, 4 to go), {MANY} windows of 32 tokens" in out
    start(run, started)
    wait_for(lambda: (s := ar.analysis_status("tiny-run", run.parent))["state"] == "running" and s["pid"])
    done_then = len(sh.done_iters(run))
    st = ar.stop_analysis("tiny-run", run.parent, wait=True)
    assert st["state"] == "stopped" and done_then <= st["done"], st
    assert not (analysis_dir(run) / "STOP").exists()
    if st["done"] < 4:
        with pytest.raises(AnalysisError, match=f"windows {MANY} .asked 5.*--fresh"):
            run_analysis(run, windows=5, log=lambda _m: None)
        assert ar.analysis_status("tiny-run", run.parent)["state"] == "stopped"  # a refusal writes nothing
    assert run_analysis(run, log=lambda _m: None)["state"] == "finished"
    assert results(run) == reference


# -- refusals -------------------------------------------------------------------------------------------
def test_busy_bad_run_no_snapshots_and_unreadable_corpus(run, tmp_path, monkeypatch, capsys):
    analysis_dir(run).mkdir()
    lock = RunLock.acquire(analysis_dir(run))  # as a running job holds it
    try:
        with pytest.raises(ValueError, match="already running"):
            ar.start_analysis("tiny-run", run.parent)
        with pytest.raises(AnalysisError, match="already running"):
            run_analysis(run, log=lambda _m: None)
    finally:
        lock.close()
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert main(["--run", "nope", "--root", str(run.parent), "--threads", "1"]) == 1
        err = capsys.readouterr().err
        assert "error: no run named 'nope'" in err and "runs there: tiny-run" in err
        assert main(["--run", "../x", "--root", str(run.parent), "--threads", "1"]) == 1
        assert "must not contain" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    with pytest.raises(FileNotFoundError, match="no run named 'nope'"):
        ar.analysis_status("nope", run.parent)
    bare = run.parent / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"train": {"data": "python-docs"}}))
    with pytest.raises(AnalysisError, match="has no snapshots"):
        run_analysis(bare)
    with pytest.raises(ValueError, match="has no snapshots"):
        ar.start_analysis("bare", run.parent)
    assert ar.analysis_status("bare", run.parent)["message"] == "no snapshots to analyse"
    # the corpus: a file that is gone
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["data"] = str(tmp_path / "gone.txt")
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AnalysisError, match="corpus .*gone.txt.* cannot be read: .*does not exist"):
        run_analysis(run, log=lambda _m: None)
    st = ar.analysis_status("tiny-run", run.parent)
    assert st["state"] == "failed" and "gone.txt" in st["message"] and not sh.done_iters(run)
    # Tiny Shakespeare where it cannot be had offline: said, and nothing is downloaded
    import trainers.data as data

    cfg["train"]["data"] = "shakespeare"
    (run / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(data, "SHARED_SHAKESPEARE", tmp_path / "absent.txt")
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(AnalysisError, match="cannot be had offline here.*downloads nothing"):
        run_analysis(run, log=lambda _m: None)


# -- the reader -----------------------------------------------------------------------------------------
def test_reader_none_malformed_files_and_redo(run):
    before = sorted(p.name for p in run.rglob("*"))
    assert sh.read_history(run) is None  # no analysis/ yet
    assert ar.analysis_status("tiny-run", run.parent)["state"] == "none"
    assert sorted(p.name for p in run.rglob("*")) == before  # reading never writes
    run_analysis(run, windows=4, top_k=2, log=lambda _m: None)
    h = sh.read_history(run)
    assert h.iters == [0, 10, 25, 30] and len(h.top["sink"]) == 4 and len(h.top["sink"][0][1][0]) == 2
    bad = sh.iter_path(run, 10)
    good = bad.read_text()
    for text, why in [("{", "not readable JSON"), ("[1]", "not a JSON object"),
                      (good.replace('"iter":10', '"iter":11'), "does not match its name"),
                      (good.replace('"sink":[[', '"sink":[["x",'), "'sink'")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"iter_0000010.json.*{why}"):
            sh.read_history(run)
    lines = []
    assert run_analysis(run, log=lines.append)["state"] == "finished"  # the damaged file is redone
    assert any(line.startswith("redoing iter 10: ") for line in lines) and bad.read_text() == good
    meta = analysis_dir(run) / "meta.json"
    meta.write_text(meta.read_text().replace('"n_windows":4', '"n_windows":5'))
    with pytest.raises(ValueError, match="windows.json: expected 5 windows of 32"):
        sh.read_history(run)
    meta.write_text('{"version": 2}')
    with pytest.raises(ValueError, match="meta.json: bad or missing n_windows"):
        sh.read_history(run)
    meta.unlink()
    with pytest.raises(ValueError, match="meta.json is missing"):
        sh.read_history(run)


# -- the app's panel --------------------------------------------------------------------------------
def _panel_script(run_dir: str) -> None:
    from app.analysis_panel import analysis_panel

    analysis_panel(run_dir, key="t")


def test_panel_starts_the_job_and_shows_its_end(run, started):
    from streamlit.testing.v1 import AppTest

    from app.analysis_panel import panel_text
    from tests.e2e.server import children

    at = AppTest.from_function(_panel_script, args=(str(run),), default_timeout=60).run()
    assert not at.exception
    assert at.info[0].value.startswith("Head scores over training: 0/4 snapshots analysed. Not analysed yet")
    assert not at.button(key="t_start").disabled
    before = set(children(os.getpid()))
    at.button(key="t_start").click().run()  # launches the detached job
    started.extend(pid for pid, _ in set(children(os.getpid())) - before)  # (it runs for seconds: torch loads)
    assert not at.exception and not at.error
    st = wait_for(lambda: (s := ar.analysis_status("tiny-run", run.parent))["state"] not in ar.LIVE and s)
    assert st["state"] == "finished", st
    at.run()
    assert "4/4 snapshots analysed · finished: analysed 4 snapshots" in at.info[0].value
    assert at.button(key="t_start").disabled  # nothing left to do
    assert panel_text(dict(st, state="failed", message="boom"))[0] == "error"
    assert panel_text(dict(st, state="interrupted", message="gone"))[0] == "warning"


# -- the shipped analyses ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shakespeare-char", "shakespeare-induction"])
def test_bundled_models_ship_their_analysis(name):
    run_dir = REPO / "checkpoints" / name
    if not run_dir.is_dir():
        pytest.skip(f"checkpoints/{name} is not in this checkout")
    h = sh.read_history(run_dir)
    assert h is not None, f"checkpoints/{name}/analysis is missing: python -m trainers.analyze --run {name} --threads 1"
    assert h.iters == [it for it, _ in list_snapshots(run_dir)]  # every snapshot analysed
    assert h.meta["n_windows"] == len(h.windows) == 256 and {len(w) for w in h.windows} == {256}
    st = ar.analysis_status(name, run_dir.parent)
    assert st["state"] == "finished" and st["done"] == st["total"] == len(h.iters)
    assert not (analysis_dir(run_dir) / ".lock").exists()  # nothing of a writer is shipped
    if name == "shakespeare-induction":  # the phase change, in the shipped numbers
        top = h.scores["induction_random"].flatten(1).max(1).values  # (S,)
        assert top[0] <= 0.02 and top[-1] >= 0.10, top
