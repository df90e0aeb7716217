"""Run folders and background runs: start, list, status, stop, resume, delete.

A run is a folder <root>/<name>/ holding config.json, metrics.jsonl, status.json, train.log and
checkpoints (latest/, best/, snapshots/). A background run is a detached
`python -m trainers.train` process (its own session), so it outlives the app that started it;
the app re-attaches by reading status.json, and a run whose process is gone is marked
"interrupted" and can be resumed. Nothing here imports torch's training code or Streamlit.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpt.checkpoint import CONFIG, LATEST, SNAPSHOTS, WEIGHTS, checkpoints_root, latest_dir
from trainers.config import (PRESETS, RUN_CONFIG_FILE, TrainConfig, check_config, default_threads,
                             validate_run_name)

REPO_ROOT = Path(__file__).resolve().parents[1]
LIVE_STATES = ("starting", "running", "stopping")
STATES = LIVE_STATES + ("stopped", "finished", "failed", "interrupted")
STOP_FILE = "STOP"
START_GRACE_S = 120.0  # a "starting" status with no pid yet is abandoned after this long


# -- run folder I/O (shared with the trainer) -----------------------------------------------------
def run_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """<root>/<name> for a validated name; root defaults to gpt.checkpoint.checkpoints_root()."""
    base = Path(root).expanduser() if root else checkpoints_root()
    return base / validate_run_name(name)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so every line is strict JSON (browsers reject NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Replace `path` with `obj` as JSON: written to a temp file beside it, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(obj), f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it, so readers see it while the run goes."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_clean(row), allow_nan=False) + "\n")
        f.flush()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of <run>/metrics.jsonl; a half-written last line (the writer mid-flush) is skipped."""
    try:
        lines = Path(run_dir, "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def latest_iter(run_dir: str | os.PathLike) -> int | None:
    """The iteration the run's latest/ checkpoint was saved at; None when it has none (yet)."""
    it = ((read_json(latest_dir(run_dir) / CONFIG) or {}).get("meta") or {}).get("iter")
    return int(it) if isinstance(it, (int, float)) else None


def recover_latest(run_dir: str | os.PathLike) -> None:
    """Tidy a run folder after a kill -9 during a checkpoint write (call only when no process
    is writing it). gpt.checkpoint.save swaps folders with two renames; a kill between them
    leaves no latest/ but a complete hidden copy (.latest.tmp-*/.latest.old-*): put the newest
    complete one back, then delete the hidden leftovers of any interrupted save."""
    d = Path(run_dir)
    hidden = [p for p in [*d.glob(".*.tmp-*"), *d.glob(".*.old-*"),
                          *d.glob(f"{SNAPSHOTS}/.*.tmp-*"), *d.glob(f"{SNAPSHOTS}/.*.old-*")] if p.is_dir()]
    latest = latest_dir(d)
    if not latest.is_dir():
        complete = []
        for p in hidden:
            info = read_json(p / CONFIG) if p.name.startswith(f".{LATEST}.") else None
            if info and (p / WEIGHTS).is_file():
                complete.append((int((info.get("meta") or {}).get("iter", -1)), p))
        if complete:
            os.rename(max(complete)[1], latest)
    for p in hidden:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)


# -- liveness -------------------------------------------------------------------------------------
def pid_alive(pid: int | None) -> bool:
    """True while `pid` is a running (not zombie) trainer process."""
    if not pid:
        return False
    try:  # reap it if it is our own exited child, so it does not linger as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except (ChildProcessError, OSError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2:].startswith("Z"):
                return False
            cmdline = (proc / "cmdline").read_bytes()
            if cmdline and b"trainers" not in cmdline:
                return False  # the pid was reused by an unrelated process
        except OSError:
            return False
    return True


def status(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """status.json of a run, with name and path added. A live state whose process is gone is
    rewritten as "interrupted" (resumable from its latest checkpoint)."""
    d = run_path(name, root)
    if not d.is_dir():
        raise FileNotFoundError(f"no run named {name!r} in {d.parent}")
    st = read_json(d / "status.json") or {"state": "unknown"}
    if st.get("state") in LIVE_STATES:
        pid = st.get("pid")
        waiting = pid is None and time.time() - float(st.get("updated_ts", 0)) < START_GRACE_S
        if not waiting and not pid_alive(pid):
            st.update(state="interrupted", updated_at=_now(), updated_ts=time.time(),
                      message=f"the training process ({pid}) is gone (killed or crashed) at iter "
                              f"{st.get('iter', 0)}; resume to continue from the latest checkpoint")
            write_json_atomic(d / "status.json", st)
            (d / STOP_FILE).unlink(missing_ok=True)
        elif st["state"] == "running" and (d / STOP_FILE).exists():
            st.update(state="stopping", message="stop requested")  # until the trainer notices
    return dict(st, name=name, path=str(d))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every run under root, newest first: status fields plus name, path, preset, data, val_loss."""
    root = Path(root).expanduser() if root else checkpoints_root()
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        if not any((d / f).exists() for f in ("status.json", RUN_CONFIG_FILE, LATEST)):
            continue
        try:
            st = status(d.name, root)
        except ValueError:  # a folder whose name is not a valid run name
            continue
        cfg = read_json(d / RUN_CONFIG_FILE) or {}
        train = cfg.get("train") or {}
        st.setdefault("iter", None)
        st.setdefault("max_iters", train.get("max_iters"))
        st.setdefault("val_loss", None)
        st.update(preset=train.get("preset"), data=(cfg.get("data") or {}).get("name"),
                  tokenizer=train.get("tokenizer"))
        st.setdefault("updated_ts", d.stat().st_mtime)
        out.append(st)
    return sorted(out, key=lambda r: r.get("updated_ts") or 0, reverse=True)


# -- background processes -------------------------------------------------------------------------
def to_argv(cfg: TrainConfig) -> list[str]:
    """CLI flags that reproduce `cfg` exactly (every field spelled out), for a human to rerun a
    run by hand; start and resume hand the child the run folder instead."""
    flag = {"learning_rate": "--lr"}
    argv: list[str] = []
    for k, v in cfg.to_dict().items():
        if v is None or k in ("compile", "snapshots", "cpu_shards"):
            continue
        argv += [flag.get(k, "--" + k.replace("_", "-")), str(v)]
    if cfg.compile:
        argv.append("--compile")
    if not cfg.snapshots:
        argv.append("--no-snapshots")
    if not cfg.cpu_shards:
        argv.append("--no-cpu-shards")
    return argv


def _spawn(run_dir: Path, threads: int, resume: bool = False) -> int:
    """`python -m trainers.train --run <run_dir> [--resume]`, detached, logging to train.log: every
    setting travels in the run's config.json, none on the command line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    argv = ["--run", str(run_dir)] + (["--resume"] if resume else [])
    with open(run_dir / "train.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainers.train", *argv], cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    st = read_json(run_dir / "status.json") or {}
    if st.get("pid") is None:  # the child writes its own pid once it starts; fill it in before
        write_json_atomic(run_dir / "status.json", dict(st, pid=proc.pid))
    return proc.pid


def _starting(run_dir: Path, **fields: Any) -> None:
    write_json_atomic(run_dir / "status.json", dict(
        state="starting", pid=None, message="launching", updated_at=_now(),
        updated_ts=time.time(), **fields))


def start(config: TrainConfig | dict[str, Any], root: str | os.PathLike | None = None) -> str:
    """Validate `config`, create its run folder with config.json (data, threads, root and name
    filled in), launch `python -m trainers.train --run <folder>` in the background; return the name.

    `config` is a TrainConfig or a dict of TrainConfig fields ("preset" picks the base preset).
    Raises ValueError (bad settings, bad or existing name, missing data file) before anything runs.
    """
    from trainers.data import default_data, read_text_file

    if isinstance(config, dict):
        d = dict(config)
        cfg = TrainConfig.from_preset(d.pop("preset", "tiny"), **d)
    else:
        cfg = replace(config)  # a copy: the caller's config is not changed
    if cfg.data is None:
        cfg.data = default_data()
    if cfg.data not in ("shakespeare", "python-docs"):
        read_text_file(cfg.data)  # clear DataError now rather than in train.log
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    cfg.threads = cfg.threads or default_threads()
    cfg.root = str(Path(root or cfg.root or checkpoints_root()).expanduser().resolve())
    check_config(cfg)
    Path(cfg.root).mkdir(parents=True, exist_ok=True)
    if cfg.name is not None:
        try:
            (Path(cfg.root) / validate_run_name(cfg.name)).mkdir()
        except FileExistsError:
            raise ValueError(f"a run named {cfg.name!r} already exists in {cfg.root}; choose "
                             "another name, or resume it") from None
    else:  # a default name that collides (two starts in one second) gets a suffix
        base = default_name(cfg)
        for i in range(1, 1000):
            cfg.name = base if i == 1 else f"{base}-{i}"
            try:
                (Path(cfg.root) / cfg.name).mkdir()
                break
            except FileExistsError:
                continue
    run_dir = Path(cfg.root) / cfg.name
    write_json_atomic(run_dir / RUN_CONFIG_FILE, {"train": cfg.to_dict(), "created_at": _now()})
    _starting(run_dir, iter=0, max_iters=cfg.max_iters, threads=cfg.threads)
    _spawn(run_dir, cfg.threads)
    return cfg.name


def default_name(cfg: TrainConfig) -> str:
    """<preset>-<data>-<timestamp>, with a file path reduced to its stem."""
    data = cfg.data or "data"
    if data not in ("shakespeare", "python-docs"):
        data = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(data).stem) or "file"
    return f"{cfg.preset}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def stop(name: str, root: str | os.PathLike | None = None, wait: bool = False,
         timeout: float = 60.0) -> dict[str, Any]:
    """Ask a live run to stop: it finishes its step, saves latest/ and sets state "stopped".
    With wait=True, poll until it has (or `timeout` seconds pass). Returns its status."""
    st = status(name, root)
    if st["state"] not in LIVE_STATES:
        return st
    # Only the request is written here: rewriting status.json could race with the trainer's
    # own final write (and turn a just-finished run back into "stopping").
    (Path(st["path"]) / STOP_FILE).write_text(_now())
    deadline = time.time() + timeout
    while wait and time.time() < deadline:
        st = status(name, root)
        if st["state"] not in LIVE_STATES:
            break
        time.sleep(0.1)
    return status(name, root)


def resume(name: str, max_iters: int | None = None, root: str | os.PathLike | None = None,
           threads: int | None = None) -> str:
    """Continue a stopped/interrupted/failed/finished run from latest/ (optimizer included):
    the new max_iters and threads go into its config.json, then `trainers.train --run <folder>
    --resume` continues it. ValueError when it cannot (live, read-only, nothing to resume, done)."""
    st = status(name, root)
    _refuse_readonly(dict(st, name=name), "resumed")
    if st["state"] in LIVE_STATES:
        raise ValueError(f"run {name!r} is {st['state']}; stop it before resuming")
    d = Path(st["path"])
    recover_latest(d)
    if not latest_dir(d).is_dir():
        raise ValueError(f"run {name!r} has no latest/ checkpoint to resume from; start a new run")
    it = latest_iter(d) or 0
    rc = read_json(d / RUN_CONFIG_FILE) or {}
    train = rc.get("train") if isinstance(rc.get("train"), dict) else {}
    target = max_iters if max_iters is not None else train.get("max_iters", 0)
    if target <= it:
        raise ValueError(f"run {name!r} is at iter {it}; pass max_iters > {it} to continue it")
    threads = threads or train.get("threads") or default_threads()
    if train:  # (a run without one is refused by the child, with the reason in its status)
        train.update(max_iters=target, threads=threads)
        write_json_atomic(d / RUN_CONFIG_FILE, rc)
    (d / STOP_FILE).unlink(missing_ok=True)
    _starting(d, iter=it, max_iters=target, threads=threads)
    _spawn(d, threads, resume=True)
    return name


def _refuse_readonly(st: dict, verb: str) -> None:
    """Shipped runs (the bundled model; trainers.export marks them) are never changed in place."""
    if st.get("readonly"):
        raise ValueError(f"run {st.get('name', '?')!r} is a shipped, read-only run and cannot be {verb}; "
                         "start a new run to train further, or copy the folder under another name")


def delete(name: str, root: str | os.PathLike | None = None) -> None:
    """Remove a run folder; refused while its process is alive, and for shipped read-only runs."""
    st = status(name, root)
    _refuse_readonly(dict(st, name=name), "deleted")
    if st["state"] in LIVE_STATES:
        raise ValueError(f"run {name!r} is {st['state']}; stop it before deleting it")
    shutil.rmtree(st["path"])


__all__ = ["start", "list_runs", "status", "stop", "resume", "delete", "read_metrics",
           "latest_iter", "run_path", "pid_alive", "recover_latest", "to_argv",
           "PRESETS", "STATES", "LIVE_STATES"]
