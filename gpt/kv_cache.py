"""KVCache: each layer's keys and values for the positions seen so far, so that a new token costs
one position of work instead of a full re-forward.

The buffers are preallocated to block_size. Positions are absolute: position embeddings are looked
up at `pos .. pos+T-1`, so once `pos` reaches block_size the cache is full and the caller must slide
the window and rebuild it (see gpt.generate), because every cached key was computed with the old
absolute positions.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per-layer K and V buffers of shape (B, nh, block_size, hs), filled up to `pos`."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, n_head, block_size, head_dim)  # (B, nh, block_size, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.block_size = block_size
        self.pos = 0  # number of positions cached

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int = 1) -> "KVCache":
        """An empty cache sized for `model` (a gpt.model.GPT), on its device and dtype."""
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head,
                   device=p.device, dtype=p.dtype)

    def reset(self) -> None:
        """Forget everything; the buffers are reused."""
        self.pos = 0

    def crop(self, n: int) -> None:
        """Keep only the first n positions (used to step back in generation)."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"can only crop to 0..{self.pos} positions, got {n}")
        self.pos = n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this chunk's k, v (B, nh, T, hs) at pos..pos+T-1 and return all keys and values so
        far, (B, nh, pos+T, hs). `pos` itself moves only in `advance`, once every layer has written."""
        T = k.size(2)
        end = self.pos + T
        if end > self.block_size:
            raise ValueError(f"KV cache full: {self.pos} cached + {T} new > block_size {self.block_size}; "
                             "slide the window and rebuild the cache")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        self.pos += T
