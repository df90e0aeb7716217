"""DDP as nanoGPT runs it: torchrun with 2 and 3 CPU processes on gloo. Only rank 0 writes the run
folder; a stop request reaches every rank (no hang); --resume continues under torchrun; a rank
killed with SIGKILL ends the run without a hang and it resumes from latest/; grad accumulation is
divided over the ranks, and refused with a message when it does not divide; and each rank's gloo
threads are gone when the CLI's main() returns, stopped or finished (issue 13: a gloo worker left
running into interpreter shutdown aborted a rank with "terminate called without an active
exception", exit -6)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from gpt import checkpoint as ckpt
from trainers import runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.skipif(not Path("/proc/self/task").is_dir(),
                                 reason="counting a process's threads needs Linux's /proc")]


# Each rank runs the CLI's main() as `python -m trainers.train` does, then counts the threads of
# its process that gloo started (pt_gloo_runloop workers, gloo_tcp_loop): none may outlive main().
RANK_MAIN = """
import os, sys
sys.path.insert(0, {repo!r})
from trainers.train import main
rc = main(sys.argv[1:])
names = []
for t in os.listdir("/proc/self/task"):
    try:
        names.append(open(f"/proc/self/task/{{t}}/comm").read().strip())
    except OSError:  # a thread that ended meanwhile
        pass
n = sum("gloo" in name for name in names)
print(f"rank {{os.environ['RANK']}}: gloo threads left: {{n}}", flush=True)
sys.exit(rc)
"""


def gloo_threads_left(out: str) -> dict[int, int]:
    """{rank: gloo threads alive after main() returned}, from RANK_MAIN's lines."""
    return {int(r): int(n) for r, n in re.findall(r"rank (\d+): gloo threads left: (\d+)", out)}


@pytest.fixture
def torchrun(tmp_path, tmp_path_factory):
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, OMP_NUM_THREADS="1",
               NANOLENS_CACHE=str(tmp_path_factory.getbasetemp() / "cache"))
    script = tmp_path_factory.mktemp("ddp_main") / "rank_main.py"
    script.write_text(RANK_MAIN.format(repo=str(REPO)))

    def launch(*args: str, nproc: int = 2) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), "--root", str(tmp_path), "--threads", "1", *args]
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(p)
        return p

    yield launch
    for p in procs:  # kill the whole torchrun group (launcher and both workers), then reap
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


def test_ddp_two_processes_gloo(torchrun, tmp_path):
    p = torchrun("--name", "ddp", "--data", "python-docs", "--device", "cpu", "--max-iters", "100000",
                 "--grad-accum", "4", "--eval-interval", "10", "--eval-iters", "2",
                 "--log-interval", "2")
    deadline = time.time() + 120
    while len([r for r in runs.read_metrics(tmp_path / "ddp") if "val_loss" in r]) < 2:
        assert p.poll() is None, p.communicate()[0]
        assert time.time() < deadline, "DDP run made no progress"
        time.sleep(0.1)
    st = runs.stop("ddp", tmp_path, wait=True, timeout=60)  # both ranks must agree to stop
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 0, out
    assert gloo_threads_left(out) == {0: 0, 1: 0}, out  # the group was freed, its workers joined
    assert st["state"] == "stopped" and st["world_size"] == 2
    it = st["iter"]
    assert out.count("device: cpu, 1 thread, bf16 off, compile off, ddp 2 processes") == 1
    assert out.count("stopped: stopped at iter") == 1  # the CLI's last line, from rank 0 only
    rc = runs.read_json(tmp_path / "ddp" / "config.json")
    assert rc["world_size"] == 2 and rc["train"]["grad_accum"] == 4
    rows = runs.read_metrics(tmp_path / "ddp")
    logs = [r["iter"] for r in rows if "train_loss" in r]
    evals = [r["iter"] for r in rows if "val_loss" in r]
    # one writer: every row once, in order (rank 1 writing too would duplicate them)
    assert logs == sorted(set(logs)) and evals == sorted(set(evals))
    assert set(os.listdir(tmp_path)) == {"ddp"}
    assert ckpt.load(tmp_path / "ddp")[2]["iter"] == it

    p = torchrun("--resume", "--name", "ddp", "--device", "cpu", "--max-iters", str(it + 6))
    out = p.communicate(timeout=180)[0]
    assert p.returncode == 0, out
    assert gloo_threads_left(out) == {0: 0, 1: 0}, out
    assert f"resumed from iter {it} (optimizer state loaded)" in out
    st = runs.status("ddp", tmp_path)
    assert st["state"] == "finished" and st["iter"] == it + 6
    assert int(ckpt.load_optimizer_state(tmp_path / "ddp")["state"][0]["step"]) == it + 6


def wait_for_evals(p: subprocess.Popen, run_dir: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len([r for r in runs.read_metrics(run_dir) if "val_loss" in r]) < n:
        assert p.poll() is None, p.communicate()[0]
        assert time.time() < deadline, "DDP run made no progress"
        time.sleep(0.1)


def test_ddp_one_process_under_torchrun(torchrun, tmp_path):
    """torchrun with one process is DDP too, as nanoGPT (its NCCL path on one GPU is this one)."""
    p = torchrun("--name", "one", "--data", "python-docs", "--device", "cpu", "--max-iters", "2",
                 "--eval-iters", "1", nproc=1)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0, out
    assert "compile off, ddp 1 process" in out and gloo_threads_left(out) == {0: 0}, out
    assert runs.status("one", tmp_path)["state"] == "finished"


def test_ddp_three_processes_divide_grad_accum(torchrun, tmp_path):
    """3 ranks share --grad-accum 3 (one micro step each) and finish; 4 is refused with what to
    pass instead, before anything is written."""
    p = torchrun("--name", "bad", "--data", "python-docs", "--device", "cpu", "--max-iters", "4",
                 "--grad-accum", "4", nproc=3)
    out = p.communicate(timeout=120)[0]
    assert p.returncode != 0
    # every rank refuses alike, but torchrun ends the others once the first has exited, so a slow
    # rank may never get to print it: at least one says it
    assert out.count("--grad-accum (4) must be a multiple of the number of processes (3); "
                     "try --grad-accum 3 or 6") >= 1, out
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
    p = torchrun("--name", "three", "--data", "python-docs", "--device", "cpu", "--max-iters", "6",
                 "--grad-accum", "3", "--eval-interval", "3", "--eval-iters", "1", "--log-interval", "1",
                 nproc=3)
    out = p.communicate(timeout=180)[0]
    assert p.returncode == 0, out
    assert gloo_threads_left(out) == {0: 0, 1: 0, 2: 0}, out
    assert out.count("ddp 3 processes") == 1
    st = runs.status("three", tmp_path)
    assert st["state"] == "finished" and st["iter"] == 6 and st["world_size"] == 3
    logs = [r["iter"] for r in runs.read_metrics(tmp_path / "three") if "train_loss" in r]
    assert logs == list(range(6))  # one writer


def test_ddp_rank_killed_then_resumed(torchrun, tmp_path):
    """SIGKILL of rank 1 mid-run: torchrun ends the others (no hang), the run is not left
    "running", and --resume under torchrun continues from latest/ to the end."""
    p = torchrun("--name", "k9", "--data", "python-docs", "--device", "cpu", "--max-iters", "100000",
                 "--grad-accum", "2", "--eval-interval", "5", "--eval-iters", "1", "--log-interval", "1")
    wait_for_evals(p, tmp_path / "k9", 2)
    workers = [int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                              text=True).stdout.split()]
    assert len(workers) == 2, workers
    rank1 = next(w for w in workers
                 if b"RANK=1\0" in Path(f"/proc/{w}/environ").read_bytes())
    os.kill(rank1, signal.SIGKILL)
    out = p.communicate(timeout=120)[0]
    assert p.returncode != 0, out
    st = runs.status("k9", tmp_path)
    assert st["state"] in ("failed", "interrupted"), st
    at = ckpt.load(tmp_path / "k9")[2]["iter"]
    assert at >= 5
    p = torchrun("--resume", "--name", "k9", "--device", "cpu", "--max-iters", str(at + 4))
    out = p.communicate(timeout=180)[0]
    assert p.returncode == 0, out
    assert f"resumed from iter {at} (optimizer state loaded)" in out
    st = runs.status("k9", tmp_path)
    assert st["state"] == "finished" and st["iter"] == at + 4
