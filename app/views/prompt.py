"""Turn the user's prompt text into token ids a page can run, or say clearly why not.

Pure: no Streamlit. app.resources.prompt_ids(loaded, text) calls `prompt_ids` below; pages show
`.message` with the widget that `.level` names (st.info / st.warning / st.error) and run `.ids`
only when `.ok`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from gpt.config import GPTConfig
from gpt.record import Recorder
from gpt.tokenizer import Tokenizer, visible

# Refuse to trace a prompt whose recorded activations would take more than this (override with
# $NANOLENS_MAX_TRACE_BYTES). 1 GiB holds a full GPT-2-small trace at T=1024 in float32 compact.
DEFAULT_MAX_TRACE_BYTES = 1 << 30


def max_trace_bytes() -> int:
    env = os.environ.get("NANOLENS_MAX_TRACE_BYTES", "").strip()
    return int(env) if env.isdigit() else DEFAULT_MAX_TRACE_BYTES


@dataclass(frozen=True)
class PromptIds:
    """What to feed the model for a prompt.

    ids: the token ids to run (empty unless ok). dropped_chars: characters of the text that are not
    in the vocabulary (dropped when drop_unknown was asked, else the reason nothing runs).
    truncated: the text was longer than block_size and only its last block_size tokens are kept.
    message: None when there is nothing to say, else what happened and what to do.
    level: "info" | "warning" | "error". estimate_bytes: recorded-activation size of the trace.
    """

    ids: tuple[int, ...]
    dropped_chars: tuple[str, ...] = ()
    truncated: bool = False
    message: str | None = None
    ok: bool = True
    level: str = "info"
    estimate_bytes: int = 0


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def prompt_ids(tokenizer: Tokenizer, config: GPTConfig, text: str, drop_unknown: bool = False,
               names: Iterable[str] | None = None, limit_bytes: int | None = None) -> PromptIds:
    """Encode `text` for a model of `config`, checking every way a prompt can go wrong.

    - empty text -> not ok, "type some text";
    - characters outside the vocabulary -> not ok, the message lists them, unless drop_unknown,
      in which case they are dropped and the message says which;
    - more than block_size tokens -> the last block_size are kept, truncated=True with a notice;
    - the trace of `names` (None: everything) would exceed `limit_bytes` (default
      max_trace_bytes()) -> not ok, the message shows the estimate.
    """
    if not text:
        return PromptIds((), message="The prompt is empty: type some text to run the model on.",
                         ok=False, level="warning")
    unknown = tuple(tokenizer.unknown_chars(text))
    notes: list[str] = []
    if unknown:
        shown = " ".join(f"'{visible(c)}'" for c in unknown[:20]) + (" …" if len(unknown) > 20 else "")
        if not drop_unknown:
            return PromptIds((), dropped_chars=unknown, ok=False, level="error",
                             message=f"{len(unknown)} character(s) are not in this model's vocabulary: "
                                     f"{shown}. Remove them, or choose to drop them.")
        notes.append(f"Dropped {len(unknown)} character(s) not in the vocabulary: {shown}.")
    ids = tokenizer.encode(text, errors="drop" if drop_unknown else "strict")
    if not ids:
        return PromptIds((), dropped_chars=unknown, ok=False, level="warning",
                         message="Nothing is left of the prompt after dropping unknown characters: "
                                 "type text this model knows.")
    truncated = len(ids) > config.block_size
    if truncated:
        notes.append(f"The prompt has {len(ids)} tokens, more than this model's context of "
                     f"{config.block_size}: only the last {config.block_size} are used.")
        ids = ids[-config.block_size:]
    est = Recorder.estimate_bytes(config, len(ids), names=None if names is None else list(names))
    limit = max_trace_bytes() if limit_bytes is None else limit_bytes
    if est > limit:
        return PromptIds((), dropped_chars=unknown, truncated=truncated, ok=False, level="error",
                         estimate_bytes=est,
                         message=f"Recording this prompt ({len(ids)} tokens) would take about "
                                 f"{_human_bytes(est)}, over the limit of {_human_bytes(limit)}: "
                                 "shorten the prompt (or raise NANOLENS_MAX_TRACE_BYTES).")
    return PromptIds(tuple(ids), dropped_chars=unknown, truncated=truncated,
                     message=" ".join(notes) or None, ok=True,
                     level="warning" if notes else "info", estimate_bytes=est)
