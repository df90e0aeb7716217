"""The values every inspector page works on: a loaded model (`Loaded`) and one `Inspection` of it.

An Inspection is the model, the prompt's ids with their display strings and labels, the recording
of the names the page asked for, the layer and head the user looks at (clamped to this model), and
the active edit. `components.inspection()` builds one per rerun from the prompt box, through
app.resources (which owns the cached trace); every view builder takes it plus its own choices, so
a new page is a copy of the Layers page. Pure: no Streamlit, usable from tests and benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

from app.views.tokens import token_strs, unique_labels
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gpt.edit import Edits


@dataclass(frozen=True, eq=False)
class Loaded:
    """A loaded model and everything a page needs to describe it. Shared between sessions: read-only.
    Hashes by identity (eq=False), so it can key a dict cheaply."""

    model: GPT
    tokenizer: Tokenizer
    meta: dict[str, Any]
    ref: str  # what the user chose (run folder, checkpoint folder, file)
    label: str  # short display name (catalog.describe)
    config: GPTConfig
    # resolved checkpoint + its mtime, + device, dtype and a chosen tokenizer (every cache keys by it)
    stamp: str = field(default="", compare=False)
    device: str = "cpu"  # where the model's weights are: "cpu" | "cuda" (gpt.devices)
    dtype: str = "fp32"  # "fp32" | "bf16" | "fp16"; recordings come back to the CPU in fp32 anyway


def edit_key(edit: "Edits | None") -> Hashable:
    """What identifies an edit in cache keys: () for none (an empty Edits is no edit either)."""
    return () if edit is None or not edit else edit.key


def clamp(index: Any, n: int) -> int:
    """`index` as an int in 0..n-1; 0 when it is out of range or not a number (another model may
    have fewer layers or heads than the one the user looked at before)."""
    try:
        i = int(index)
    except (TypeError, ValueError):
        return 0
    return i if 0 <= i < n else 0


@dataclass(frozen=True, eq=False)
class Inspection:
    """One prompt through one model, as every inspector page sees it.

    ids: the token ids run (batch 1); strs: their display strings; labels: unique axis labels
    ("3:·the"); rec: the recording of `names` under `edit` (cached and shared: read-only; None
    when the page records nothing on this rerun);
    layer, head: the user's choice, clamped to this model; edit: the active gpt.edit.Edits or None.
    """

    loaded: Loaded
    ids: tuple[int, ...]
    strs: list[str]
    labels: list[str]
    rec: Recorder | None
    names: tuple[str, ...]
    layer: int
    head: int
    edit: "Edits | None" = None

    @classmethod
    def of(cls, loaded: Loaded, ids: tuple[int, ...], rec: Recorder | None, names: tuple[str, ...],
           layer: Any = 0, head: Any = 0, edit: "Edits | None" = None) -> "Inspection":
        """Build one, computing the strings and labels and clamping layer and head."""
        strs = token_strs(loaded.tokenizer.token_str, ids)
        return cls(loaded, tuple(int(i) for i in ids), strs, unique_labels(strs), rec, tuple(names),
                   clamp(layer, loaded.config.n_layer), clamp(head, loaded.config.n_head), edit)

    @property
    def model(self) -> GPT:
        return self.loaded.model

    @property
    def config(self) -> GPTConfig:
        return self.loaded.config

    @property
    def token_str(self) -> Callable[[int], str]:
        return self.loaded.tokenizer.token_str

    @property
    def T(self) -> int:
        return len(self.ids)

    @property
    def key(self) -> tuple:
        """What makes two Inspections show the same thing (the trace cache uses the same parts)."""
        return (self.loaded.ref, self.loaded.stamp, self.ids, self.names, edit_key(self.edit),
                self.layer, self.head)
