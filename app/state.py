"""Session-state keys shared by every page, their defaults, and where the default model comes from.

Keys (all plain `st.session_state` entries; see KEYS):
  "model_ref"  str path of the chosen checkpoint (a run folder, a checkpoint folder, a ckpt.pt, ...)
               or None. Every page reads it through app.resources.current_model().
  "prompt"     str, shared across pages. Default: a Shakespeare line, or for BPE (gpt2) models
               "The quick brown fox" (see default_prompt / app.resources.current_model).
  "layer", "head"  int, the layer / head the pages look at (0 by default).
  "gen"        dict, generation state of the Generate page ({} by default).

Widgets may bind to these keys (`st.text_area("Prompt", key="prompt")`, with no `value=`): init_state()
re-assigns every key on each run, which stops Streamlit from dropping a widget's value when the
user moves to a page that does not show that widget (Streamlit docs, "Widget behavior").

No heavy imports here (no torch): gpt.checkpoint is imported inside the functions that need it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_REF, PROMPT, LAYER, HEAD, GEN = "model_ref", "prompt", "layer", "head", "gen"
KEYS = (MODEL_REF, PROMPT, LAYER, HEAD, GEN)
CHAR_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
BPE_PROMPT = "The quick brown fox"
DEFAULT_PROMPTS = (CHAR_PROMPT, BPE_PROMPT)
BUNDLED_NAME = "shakespeare-char"  # <repo>/checkpoints/<this> is the bundled model


def default_prompt(tokenizer_kind: str | None = None) -> str:
    """The starting prompt for a model whose tokenizer is of `tokenizer_kind` ("char" | "gpt2")."""
    return BPE_PROMPT if tokenizer_kind == "gpt2" else CHAR_PROMPT


def has_checkpoint(path: Path) -> bool:
    """Whether `path` names something that looks loadable (a run with a checkpoint, a checkpoint
    folder, a nanoGPT out_dir or ckpt.pt, a Hugging Face folder); loading may still fail."""
    from gpt.checkpoint import CheckpointError, resolve_checkpoint

    try:
        p = resolve_checkpoint(path)
    except (CheckpointError, OSError):
        return False
    return p.is_file() or (p / "config.json").is_file() or (p / "ckpt.pt").is_file()


def bundled_path() -> Path | None:
    """$NANOLENS_BUNDLED when set ("" means: no bundled model), else <repo>/checkpoints/
    shakespeare-char when it holds a checkpoint; None otherwise."""
    env = os.environ.get("NANOLENS_BUNDLED")
    if env is not None:
        if not env.strip():
            return None
        p = Path(env).expanduser()
        return p if has_checkpoint(p) else None
    p = REPO / "checkpoints" / BUNDLED_NAME
    return p if p.exists() and has_checkpoint(p) else None


def _newest_mtime(run: Path) -> float:
    """When a run last wrote something a reader cares about (its status, metrics or latest/)."""
    times = [f.stat().st_mtime for f in (run / "status.json", run / "metrics.jsonl", run / "latest")
             if f.exists()]
    return max(times, default=run.stat().st_mtime)


def newest_run() -> Path | None:
    """The most recently updated run folder under the checkpoints root that holds a checkpoint."""
    from gpt.checkpoint import checkpoints_root

    root = checkpoints_root()
    if not root.is_dir():
        return None
    # hidden folders (.uploads, half-written .tmp-*) are not runs
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and has_checkpoint(p)]
    return max(runs, key=_newest_mtime) if runs else None


def default_model_ref() -> str | None:
    """The bundled model if any, else the newest run with a checkpoint, else None."""
    p = bundled_path() or newest_run()
    return str(p) if p is not None else None


def init_state(state: Any = None) -> None:
    """Fill in missing keys with their defaults and keep the present ones (see module docstring).
    `state` defaults to st.session_state (a dict works too, for tests)."""
    if state is None:
        import streamlit as st

        state = st.session_state
    if MODEL_REF not in state:
        state[MODEL_REF] = default_model_ref()
    defaults: dict[str, Any] = {PROMPT: CHAR_PROMPT, LAYER: 0, HEAD: 0, GEN: {}}
    for k, v in defaults.items():
        if k not in state:
            state[k] = v
    for k in KEYS:  # re-assign: interrupts widget clean-up so shared keys survive page changes
        state[k] = state[k]


# -- what can be chosen ----------------------------------------------------------------------------
def describe_ref(ref: str | os.PathLike) -> str:
    """A short label for a model ref: "bundled · shakespeare-char", "<run> · latest",
    "<run> · best", "<run> · iter 500", "upload · <file>", else the path's last parts."""
    from gpt.checkpoint import SNAPSHOT_RE, checkpoints_root

    p = Path(ref).expanduser()
    bundled = bundled_path()
    if bundled is not None and p.resolve() == bundled.resolve():
        return f"bundled · {bundled.name}"
    try:
        parts = p.resolve().relative_to(checkpoints_root().resolve()).parts
    except ValueError:
        parts = ()
    if parts and parts[0] == ".uploads":
        return f"upload · {parts[1]}" if len(parts) > 1 else "uploads"
    if len(parts) == 1:
        return f"{parts[0]} · latest"
    if len(parts) == 2 and parts[1] in ("latest", "best"):
        return f"{parts[0]} · {parts[1]}"
    if len(parts) == 3 and parts[1] == "snapshots" and SNAPSHOT_RE.fullmatch(parts[2]):
        return f"{parts[0]} · iter {int(parts[2][5:])}"
    return "/".join(p.parts[-2:]) if len(p.parts) > 1 else str(p)


def model_choices(snapshots: bool = True) -> list[tuple[str, str]]:
    """[(ref, label)] of everything the app can inspect without an upload: the bundled model, then
    each run under the checkpoints root (newest first) with its latest, best and (if `snapshots`)
    every snapshot that exists. A run that has no checkpoint yet is left out."""
    from gpt.checkpoint import list_snapshots
    from trainers.runs import list_runs

    out: list[tuple[str, str]] = []
    bundled = bundled_path()
    if bundled is not None:
        out.append((str(bundled), describe_ref(bundled)))
    for run in list_runs():
        d = Path(run["path"])
        if bundled is not None and d.resolve() == bundled.resolve():
            continue
        if (d / "latest" / "config.json").is_file():  # the run folder itself follows latest/
            out.append((str(d), f"{d.name} · latest"))
        if (d / "best" / "config.json").is_file():
            out.append((str(d / "best"), f"{d.name} · best"))
        if snapshots:
            out += [(str(p), f"{d.name} · iter {it}") for it, p in list_snapshots(d)]
    return out
