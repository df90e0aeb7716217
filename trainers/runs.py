"""Run folders and background runs: start, list, status, stop, resume, delete.

A run is a folder <root>/<name>/ holding config.json, metrics.jsonl, status.json, train.log and
checkpoints (latest/, best/, snapshots/). A background run is a detached
`python -m trainers.train` process (its own session), so it outlives the app that started it;
the app re-attaches by reading status.json. One process writes a run folder: it holds the
folder's lock (trainers.runfolder.RunLock) for its whole life, and start and resume take that
lock before they write anything, then hand it to the child they launch. A run whose state is
live but whose lock is free (or, for a folder without a lock, whose process is gone) is shown as
"interrupted" and can be resumed; reading never writes that down (the next writer does).
The folder's files are read and written through trainers.runfolder, the lock is trainers.runlock.
Nothing here imports torch's
training code or Streamlit.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpt.checkpoint import LATEST, checkpoints_root, latest_dir
from trainers.config import PRESETS, RUN_CONFIG_FILE, TrainConfig, check_config, validate_run_name
from trainers.machine import default_threads
from trainers.runfolder import (LIVE_STATES, STATES, STOP_FILE, append_jsonl, clean_leftovers, get_dict,
                                is_count, is_number, latest_iter, load_json, pid_alive, read_json,
                                read_metrics, read_status, unreadable, write_json_atomic)
from trainers.runlock import LOCK_ENV, LOCK_FILE, RunBusy, RunLock, lock_held
from trainers.runfolder import now as _now

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """<root>/<name> for a validated name; root defaults to gpt.checkpoint.checkpoints_root()."""
    base = Path(root).expanduser() if root else checkpoints_root()
    return base / validate_run_name(name)


def recover_latest(run_dir: str | os.PathLike) -> list[str]:
    """Put a run folder right after a kill -9 inside a checkpoint write (call only when no process
    is writing it). gpt.checkpoint.recover does the work: for latest/, best/ and each snapshot,
    the newest complete copy (a save killed between its two renames leaves it hidden, as
    .<name>.tmp-*/.<name>.old-*) goes back in place, and nothing complete is deleted unless a
    copy at least as new is in place. Returns one line per folder it restored."""
    from gpt.checkpoint import recover  # (the module's import lines belong to another change)

    return recover(run_dir)


# -- reading runs ---------------------------------------------------------------------------------
def status(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """status.json of a run, checked field by field, with name and path added. Reading never
    writes: a live state whose process is gone reads as "interrupted" (resumable from its latest
    checkpoint), and a status.json that cannot be trusted as state "unreadable" with message
    "unreadable: <reason>" (not live: it can be deleted or resumed). FileNotFoundError: no run."""
    d = run_path(name, root)
    if not d.is_dir():
        raise FileNotFoundError(f"no run named {name!r} in {d.parent}")
    return dict(read_status(d, lock_held(d)), name=name, path=str(d))


def _listed(d: Path) -> dict[str, Any]:
    """One list_runs row: status() plus what config.json says, each value checked."""
    st = dict(read_status(d, lock_held(d)), name=d.name, path=str(d))
    try:
        cfg = load_json(d / RUN_CONFIG_FILE)
    except FileNotFoundError:
        cfg = {}
    except ValueError as e:
        cfg = {}
        if st["state"] == "unknown":  # nothing else in the folder says what it is
            st.update(unreadable(str(e)))
    train = get_dict(cfg, "train")
    text = lambda v: v if isinstance(v, str) else None  # noqa: E731
    st.setdefault("iter", None)
    if st.get("max_iters") is None and is_count(train.get("max_iters")):
        st["max_iters"] = train["max_iters"]
    st.setdefault("val_loss", None)
    st.update(preset=text(train.get("preset")), data=text(get_dict(cfg, "data").get("name")),
              tokenizer=text(train.get("tokenizer")))
    if not is_number(st.get("updated_ts")):
        st["updated_ts"] = d.stat().st_mtime
    return st


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every run under root, newest first: status() fields plus name, path, preset, data,
    tokenizer, max_iters and val_loss. A run folder that cannot be read is listed with state
    "unreadable" and the reason in its message; it never hides the others or raises. OSError
    only when the root itself cannot be listed."""
    root = Path(root).expanduser() if root else checkpoints_root()
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            validate_run_name(d.name)
        except ValueError:  # a folder whose name is not a valid run name
            continue
        if not any((d / f).exists() for f in ("status.json", RUN_CONFIG_FILE, LATEST)):
            continue
        try:
            out.append(_listed(d))
        except OSError as e:  # deleted while we looked (then skip it), or not readable
            if d.is_dir():
                out.append(dict(unreadable(f"the folder cannot be read ({e.strerror or e})"),
                                name=d.name, path=str(d), updated_ts=0.0))
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


def _spawn(run_dir: Path, threads: int, lock: RunLock, resume: bool = False) -> int:
    """`python -m trainers.train --run <run_dir> [--resume]`, detached, logging to train.log: every
    setting travels in the run's config.json, none on the command line. The child inherits the
    run's `lock` (same open file, so the lock is never free in between) and adopts it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), **{LOCK_ENV: str(lock.fd)})
    argv = ["--run", str(run_dir)] + (["--resume"] if resume else [])
    with open(run_dir / "train.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainers.train", *argv], cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, pass_fds=(lock.fd,))
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
    Raises ValueError (bad settings, bad or existing name, missing data file, the folder taken by
    another process) before anything runs.
    """
    from trainers.data import CORPORA, default_data, read_text_file

    if isinstance(config, dict):
        d = dict(config)
        cfg = TrainConfig.from_preset(d.pop("preset", "tiny"), **d)
    else:
        cfg = replace(config)  # a copy: the caller's config is not changed
    if cfg.data is None:
        cfg.data = default_data()
    if cfg.data not in CORPORA:
        read_text_file(cfg.data)  # clear DataError now rather than in train.log
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    if cfg.threads is None:
        cfg.threads = default_threads()
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
    lock = RunLock.acquire(run_dir)  # RunBusy: a CLI run of that name took the new folder first
    try:
        write_json_atomic(run_dir / RUN_CONFIG_FILE, {"train": cfg.to_dict(), "created_at": _now()})
        _starting(run_dir, iter=0, max_iters=cfg.max_iters, threads=cfg.threads)
        _spawn(run_dir, cfg.threads, lock)
    finally:
        lock.close()  # the child holds it now
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
    deadline = time.monotonic() + timeout
    while wait and time.monotonic() < deadline:
        st = status(name, root)
        if st["state"] not in LIVE_STATES:
            break
        time.sleep(0.1)
    return status(name, root)


def resume(name: str, max_iters: int | None = None, root: str | os.PathLike | None = None,
           threads: int | None = None) -> str:
    """Continue a stopped/interrupted/failed/finished run from latest/ (optimizer included):
    under the run's lock, tidy what a kill left, write the new max_iters and threads into its
    config.json, then launch `trainers.train --run <folder> --resume`, handing it the lock.
    ValueError when it cannot: live (a second Resume of the same run says it is already running),
    read-only, nothing to resume, already at max_iters."""
    st = status(name, root)
    _refuse_readonly(dict(st, name=name), "resumed")
    if st["state"] in LIVE_STATES:
        raise ValueError(f"run {name!r} is already running ({st['state']}); stop it before resuming")
    d = Path(st["path"])
    try:
        lock = RunLock.acquire(d)
    except RunBusy:
        raise ValueError(f"run {name!r} is already running (resumed or started by another session "
                         "or process); stop it before resuming") from None
    try:
        recover_latest(d)
        clean_leftovers(d)
        if not latest_dir(d).is_dir():
            raise ValueError(f"run {name!r} has no latest/ checkpoint to resume from; start a new run")
        it = latest_iter(d) or 0
        rc = read_json(d / RUN_CONFIG_FILE) or {}
        train = get_dict(rc, "train")
        target = max_iters if max_iters is not None else train.get("max_iters")
        if not is_count(target) or target <= it:
            raise ValueError(f"run {name!r} is at iter {it}; pass max_iters > {it} to continue it")
        if threads is None:
            threads = train["threads"] if is_count(train.get("threads"), 1) else default_threads()
        if train:  # (a run without one is refused by the child, with the reason in its status)
            train.update(max_iters=target, threads=threads)
            write_json_atomic(d / RUN_CONFIG_FILE, rc)
        (d / STOP_FILE).unlink(missing_ok=True)
        _starting(d, iter=it, max_iters=target, threads=threads)
        _spawn(d, threads, lock, resume=True)
    finally:
        lock.close()  # the child holds it now (or nobody, when we refused)
    return name


def _refuse_readonly(st: dict, verb: str) -> None:
    """Shipped runs (the bundled model; trainers.export marks them) are never changed in place."""
    if st.get("readonly"):
        raise ValueError(f"run {st.get('name', '?')!r} is a shipped, read-only run and cannot be {verb}; "
                         "start a new run to train further, or copy the folder under another name")


def _busy_job(run_dir: Path) -> str | None:
    """The first folder inside the run (relative path) whose own lock a live job holds (the
    analysis job's analysis/.lock and the other background jobs' locks), else None."""
    for lock in sorted(run_dir.rglob(LOCK_FILE)):
        if lock.parent != run_dir and lock_held(lock.parent):
            return str(lock.parent.relative_to(run_dir))
    return None


def delete(name: str, root: str | os.PathLike | None = None) -> None:
    """Remove a run folder; refused while a process writes it (live, or holding its lock), and
    for shipped read-only runs. An unreadable run can be deleted."""
    st = status(name, root)
    _refuse_readonly(dict(st, name=name), "deleted")
    if st["state"] in LIVE_STATES:
        raise ValueError(f"run {name!r} is {st['state']}; stop it before deleting it")
    busy = _busy_job(Path(st["path"]))
    if busy is not None:
        raise ValueError(f"run {name!r} has a job still writing {busy}/ (an analysis, a lens fit or an SAE); "
                         "stop it, or wait for it to end, before deleting the run")
    try:
        lock = RunLock.acquire(st["path"], wait_s=1.0)
    except RunBusy:
        raise ValueError(f"run {name!r} is still being written by its process; stop it, or wait "
                         "for it to end, before deleting it") from None
    try:
        shutil.rmtree(st["path"])
    finally:
        lock.close()


__all__ = ["start", "list_runs", "status", "stop", "resume", "delete", "read_metrics",
           "read_json", "write_json_atomic", "append_jsonl", "latest_iter", "run_path", "pid_alive",
           "recover_latest", "to_argv", "PRESETS", "STATES", "LIVE_STATES", "RunBusy"]
