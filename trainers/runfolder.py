"""A run folder's own files: JSON read and written safely, status.json checked field by field and
judged live or not, leftovers of killed writes, and what to say when a write fails.

Anyone can edit a run folder, and a kill or a full disk can leave anything in it, so every reader
here returns only what it checked: a JSON object (never a list or a string), a status whose pid,
iter, max_iters and timestamps have the right types and ranges, or a plain reason why not.
Reading never writes. Who may write is trainers.runlock's. Nothing here imports torch or Streamlit.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gpt.checkpoint import CONFIG, latest_dir

STOP_FILE = "STOP"  # <run>/STOP asks the trainer to stop after its step
START_GRACE_S = 120.0  # a lock-less "starting" status with no pid yet is abandoned after this long
PID_MAX = 4_194_304  # Linux's PID_MAX_LIMIT: no process id is larger (os.kill overflows on 2**40)
LIVE_STATES = ("starting", "running", "stopping")
STATES = LIVE_STATES + ("stopped", "finished", "failed", "interrupted")
# status.json fields only shown to the user: a value that is not a finite number is dropped
SHOWN_NUMBERS = ("val_loss", "best_val_loss", "train_loss", "tokens_per_s", "eta_s")
# the temp files write_json_atomic and the trainer's metrics rewrite leave when killed mid-write
LEFTOVERS = (".status.json.*.tmp", ".config.json.*.tmp", ".metrics.jsonl.tmp")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- JSON -----------------------------------------------------------------------------------------
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


def write_json_in_place(path: str | os.PathLike, obj: Any) -> None:
    """Overwrite the existing file `path` with `obj` as compact JSON, in its own blocks. The last
    resort for a final status on a full disk, where the temp file of write_json_atomic cannot be
    written but a small file's blocks can be reused. A reader may catch it half-written."""
    data = json.dumps(_clean(obj), allow_nan=False, separators=(",", ":")).encode()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def _kind(v: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(v), type(v).__name__)


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object at `path`. FileNotFoundError when it is missing; ValueError with a plain
    reason when it is unreadable, not JSON, or JSON that is not an object. NaN and Infinity
    (which Python's json accepts) read as None."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p.name} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        obj = json.loads(text, parse_constant=lambda _c: None)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{p.name} is not valid JSON ({str(e)[:100] or type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{p.name} holds {_kind(obj)}, not a JSON object")
    return obj


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing, unreadable or not an object."""
    try:
        return load_json(path)
    except (OSError, ValueError):
        return None


def get_dict(d: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """d[key] when it is a JSON object, else {} (a hand-edited file may hold anything there)."""
    v = (d or {}).get(key)
    return v if isinstance(v, dict) else {}


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it, so readers see it while the run goes."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_clean(row), allow_nan=False) + "\n")
        f.flush()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON-object rows of <run>/metrics.jsonl; a half-written last line (the writer
    mid-flush) or any line that is not an object is skipped."""
    try:
        lines = Path(run_dir, "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line, parse_constant=lambda _c: None)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_metrics(run_dir: str | os.PathLike, start_iter: int) -> None:
    """Drop the rows written after iteration `start_iter`'s checkpoint (a resumed run redoes that
    work), keeping that iteration's eval row; rewritten through .metrics.jsonl.tmp."""
    keep = [r for r in read_metrics(run_dir) if is_number(it := r.get("iter", 0)) and
            (it < start_iter or (it == start_iter and "val_loss" in r))]
    tmp = Path(run_dir, ".metrics.jsonl.tmp")
    tmp.write_text("".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, Path(run_dir, "metrics.jsonl"))


def is_count(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    """An int (not a bool) in [lo, hi]."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def latest_iter(run_dir: str | os.PathLike) -> int | None:
    """The iteration the run's latest/ checkpoint was saved at; None when it has none (yet), or
    when its meta does not say."""
    it = get_dict(read_json(latest_dir(run_dir) / CONFIG), "meta").get("iter")
    return it if is_count(it) else None


# -- status.json ----------------------------------------------------------------------------------
def check_status(raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(status.json's fields made safe to show, the reason it cannot be trusted or None).

    state must be a known state; pid null or an int >= 1, not a bool (-1 would make os.kill
    signal every process; one above PID_MAX is merely a process that cannot be alive); iter and
    max_iters null or counts; updated_ts null or a finite number. Shown numbers that are not
    finite numbers become None."""
    st = dict(raw)
    for k in SHOWN_NUMBERS:
        if k in st and not is_number(st[k]):
            st[k] = None
    if not isinstance(st.get("message", ""), str):
        st["message"] = str(st["message"])[:500]
    st["readonly"] = st.get("readonly") is True
    if not st["readonly"]:
        del st["readonly"]
    problems = []
    if st.get("state") not in STATES:
        problems.append(f"its state is {st.get('state')!r}, not one of {', '.join(STATES)}")
    if st.get("pid") is not None and not is_count(st["pid"], 1):  # (above PID_MAX: a process gone)
        problems.append(f"its pid is {st['pid']!r}, not a process id")
    for k in ("iter", "max_iters"):
        if st.get(k) is not None and not is_count(st[k]):
            problems.append(f"its {k} is {st[k]!r}, not a whole number >= 0")
    if st.get("updated_ts") is not None and not is_number(st["updated_ts"]):
        problems.append(f"its updated_ts is {st['updated_ts']!r}, not a time")
    return st, ("; ".join(problems)[:300] or None)


def unreadable(reason: str) -> dict[str, Any]:
    """The status of a run that cannot be read: not live, so it can be deleted or resumed."""
    return {"state": "unreadable", "pid": None, "iter": None, "max_iters": None,
            "message": f"unreadable: {reason}; delete the run, or resume it to rewrite its status"}


def pid_alive(pid: Any) -> bool:
    """True while `pid` is a running (not zombie) trainer process. Anything that is not a real
    process id (None, -1, a bool, a string, 2**40) is not alive: os.kill(-1, 0) would succeed."""
    if not is_count(pid, 1, PID_MAX):
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
        pass  # exists, owned by someone else: /proc still says what it is
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2:].startswith("Z"):
                return False
            cmdline = (proc / "cmdline").read_bytes()
            if cmdline and b"trainers" not in cmdline:
                return False  # the pid was reused by an unrelated process
        except (OSError, ValueError):
            return False
    return True


def _writer_alive(st: dict[str, Any], held: bool | None) -> bool:
    """Whether the process that wrote a live state still runs: the folder's lock says so when the
    folder has one; otherwise (a run from before locks) its pid, or a fresh pid-less "starting"."""
    if held is not None:
        return held
    if st.get("pid") is None:
        ts = st.get("updated_ts")
        return ts is not None and time.time() - ts < START_GRACE_S
    return pid_alive(st["pid"])


def read_status(d: Path, held: bool | None) -> dict[str, Any]:
    """status.json of run folder `d`, checked; `held`: whether another process holds its lock
    (runlock.lock_held; None: no lock file). Never writes."""
    try:
        raw = load_json(d / "status.json")
    except FileNotFoundError:  # a CLI run sets up before its first status; else a bare folder
        return ({"state": "starting", "pid": None, "message": "a process is setting this run up"}
                if held else {"state": "unknown"})
    except ValueError as e:
        return unreadable(str(e))
    st, problem = check_status(raw)
    if problem:
        return unreadable(f"status.json: {problem}")
    if st["state"] in LIVE_STATES and not _writer_alive(st, held):
        st.update(state="interrupted",
                  message=f"the training process ({st.get('pid')}) is gone (killed or crashed, or it "
                          f"could not write its last status: see train.log) at iter {st.get('iter') or 0}; "
                          "resume to continue from the latest checkpoint")
    elif st["state"] == "running" and (d / STOP_FILE).exists():
        st.update(state="stopping", message="stop requested")  # until the trainer notices
    return st


# -- leftovers and write failures ---------------------------------------------------------------
def has_trained(run_dir: str | os.PathLike) -> bool:
    """Whether a run folder holds training output: a latest/ checkpoint or metrics rows."""
    metrics = Path(run_dir, "metrics.jsonl")
    return latest_dir(run_dir).exists() or (metrics.is_file() and metrics.stat().st_size > 0)


def clean_leftovers(run_dir: str | os.PathLike) -> list[str]:
    """Delete the temp files of writes a kill interrupted (.status.json.*.tmp, .metrics.jsonl.tmp
    ...); call only while holding the run's lock. Returns their names."""
    gone = []
    for pattern in LEFTOVERS:
        for p in Path(run_dir).glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p.name)
    return sorted(gone)


class RunWriteError(OSError):
    """A run-folder write failed; str() is the whole message, written for the user."""


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem of `path` (or its nearest existing parent); None if unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full(e: BaseException, path: str | os.PathLike, needed: int = 0) -> str | None:
    """"the disk is full (N MB free)" when `e` (or what caused it) is or names ENOSPC/EDQUOT, or when
    fewer than `needed` bytes are free (torch.save reports a full disk as "unexpected pos"); else
    None."""
    chain, seen = [e], set()
    while chain[-1] is not None and id(chain[-1]) not in seen:
        seen.add(id(chain[-1]))
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    free = free_bytes(path)
    said = any(isinstance(x, OSError) and x.errno in DISK_FULL or  # safetensors only says it in words
               any(os.strerror(n) in str(x) for n in DISK_FULL) for x in chain if x is not None)
    if not said and not (needed and free is not None and free < needed):
        return None
    return "the disk is full" + (f" ({free / 1e6:.1f} MB free)" if free is not None else "")


def write_failure(e: BaseException, what: str, run_dir: str | os.PathLike, needed: int = 0) -> RunWriteError:
    """The error to report when writing `what` (`needed` bytes) into a run folder failed: whether
    the disk is full, and which checkpoint is still good (gpt.checkpoint.save never harms the
    folder it replaces), e.g. "could not write the checkpoint: the disk is full (0.4 MB free);
    the last good checkpoint is latest/ at iter 20, intact; free some space, then resume the run"."""
    good = latest_iter(run_dir)
    why = disk_full(e, run_dir, needed)
    detail = (str(e).strip().splitlines() or [""])[0][:300]
    last = (f"the last good checkpoint is latest/ at iter {good}, intact" if good is not None
            else "no checkpoint had been saved yet")
    hint = "free some space, then resume the run" if why else "resume the run once that is fixed"
    return RunWriteError(f"could not write {what}: {why or f'{type(e).__name__}: {detail}'}; {last}; {hint}")
