"""GPTConfig: the model's shape, its named presets, and validation.

The fields and their defaults follow nanoGPT's `GPTConfig`; `activation` is ours so that Hugging
Face GPT-2 weights (which use the tanh approximation of GELU) reproduce their logits exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ACTIVATIONS = ("gelu", "gelu_tanh")
MAX_VOCAB = 1_000_000  # anything larger is almost certainly a corrupt config


@dataclass
class GPTConfig:
    block_size: int = 256  # longest context the position embedding covers
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    activation: str = "gelu"  # "gelu" (exact, nanoGPT) or "gelu_tanh" (Hugging Face GPT-2)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        """Raise ValueError with a message that says what to change."""
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if self.vocab_size < 2 or self.vocab_size > MAX_VOCAB:
            raise ValueError(f"vocab_size must be between 2 and {MAX_VOCAB:,}, got {self.vocab_size}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    # -- presets ---------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named preset (see PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """Build from a dict; unknown keys are an error so that typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, GPTConfig] = {
    # for tests: fast everywhere
    "tiny": GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=64, dropout=0.0),
    # nanoGPT's "I only have a macbook" line for shakespeare_char
    "cpu-small": GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    # nanoGPT's config/train_shakespeare_char.py
    "baby": GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    # GPT-2 small, 124M
    "gpt2": GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768,
                      dropout=0.0, activation="gelu_tanh"),
}
