"""Sampling and step-by-step generation with a KV cache.

`sampling_distribution` is THE distribution a token is drawn from (temperature, top-k, top-p);
`sample`, `Generator`, `generate` and the app's pages all use it, so what is shown is what is drawn.

KV cache and the sliding window. Position embeddings are absolute (0 .. block_size-1), and
nanoGPT's full-recompute generation forwards `idx[-block_size:]` at every step, so the token at
sequence index j sits at position j - max(0, n - block_size). While the sequence fits
(n <= block_size) the cache holds every token at its own position and each new token costs one
position of work. Once n > block_size the window slides by one at every step: every token moves to
a new position, which changes every cached key and value. The only way to produce exactly the
logits full recompute produces is to rebuild the cache from the last block_size tokens, i.e. a full
forward of block_size positions per step past block_size (the same cost as full recompute; the
cache then saves nothing). We choose that exactness: greedy generation with the cache equals
full-recompute greedy token for token, before and after block_size (tests/test_generate.py).

Generator is lazy: the cache holds tokens whose keys/values are computed; `step()` compares them
with the current context, keeps the longest common prefix (at least one token is always forwarded),
forwards the rest (normally the one token chosen by the previous step), takes the last position's
logits, and draws. So `back()` costs nothing until the next step, `ids` may even be reassigned
(e.g. to restore a sequence), and the attention row a Step reports is the one of the last context
token, the query whose output predicted the new token.

An edit (gpt.edit.Edits) is passed to every forward, cached steps and rebuilds alike, so edited
generation with the cache equals edited full recompute. Its `pos` are model positions: after the
window slid, the token at sequence index j sits at position j - ctx_start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.nn import functional as F

from gpt.edit import Edits
from gpt.kv_cache import KVCache
from gpt.record import Recorder


def _check_params(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None (no top-k), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None (no nucleus filter), got {top_p!r}")


def sampling_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """The distribution a token is drawn from: logits (..., V) -> probabilities (..., V), float32.

    - temperature 0: greedy, one-hot at the argmax (the first index among ties);
    - else softmax(logits / temperature) restricted, in this order, to
      top_k: tokens whose logit is >= the k-th largest (nanoGPT's rule; ties at the boundary stay),
      top_p: the smallest set of most likely tokens whose probability sums to >= top_p (nucleus;
             the most likely token always stays), then renormalised.
    Rows always sum to 1 and are zero outside the allowed tokens.
    """
    _check_params(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, int(top_k), dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # the set reached top_p before this token: drop it
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """Draw one token id from `sampling_distribution(logits (V,), ...)`; temperature 0 is argmax.

    The draw happens on the CPU (with a CPU `generator`), so a seed gives the same tokens on any device.
    """
    probs = sampling_distribution(logits, temperature, top_k, top_p)
    if temperature == 0:
        return int(probs.argmax())
    return int(torch.multinomial(probs.detach().cpu(), 1, generator=generator))


@dataclass
class Step:
    """One generated (or forced) token and what it was drawn from.

    token: the id appended; pos: its index in Generator.ids (prompt included);
    top_ids/top_probs (k,): the k most likely tokens of the distribution drawn from (after
    temperature/top-k/top-p; trailing probabilities are 0 when fewer than k are allowed);
    prob: that distribution's probability of `token`; logits (V,): the raw logits;
    attention (L, H, pos - ctx_start) or None: for every layer and head, the attention row of the
    last context token (the query that predicted `token`) over the context ids[ctx_start:pos];
    ctx_start: first sequence index in the context (> 0 once the window slid);
    cropped: ctx_start > 0, i.e. the window slid and the cache was rebuilt for this step;
    forced: the token was given, not drawn.
    """
    token: int
    pos: int
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    prob: float
    logits: torch.Tensor
    attention: torch.Tensor | None
    ctx_start: int
    cropped: bool
    forced: bool


class Generator:
    """Step-by-step generation from `ids` with a KV cache: `step()`, `back()`, `reset()`.

    The model runs in eval mode and without gradients during each step (its mode is restored).
    `seed` seeds a CPU torch.Generator; None draws from torch's global RNG. `reset()` re-seeds.
    `edit` (an Edits) is applied in every forward; the recorded attention is then the edited one.
    """

    def __init__(self, model: torch.nn.Module, ids: Sequence[int], temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 record: bool = False, edit: Edits | None = None) -> None:
        _check_params(temperature, top_k, top_p)
        self.model = model
        self.vocab_size: int = model.config.vocab_size
        self.block_size: int = model.config.block_size
        self.prompt: list[int] = [self._check_id(int(t), "prompt") for t in ids]
        if not self.prompt:
            raise ValueError("the prompt is empty: give at least one token id to start from")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.seed = seed
        self.record = record
        self.edit = edit
        self.device = next(model.parameters()).device
        self.cache = KVCache.for_model(model, batch_size=1)
        self.rng: torch.Generator | None = None
        self.reset()

    def _check_id(self, t: int, what: str) -> int:
        if not 0 <= t < self.vocab_size:
            raise ValueError(f"{what} token id {t} is outside the vocabulary 0..{self.vocab_size - 1}")
        return t

    def reset(self) -> None:
        """Back to the prompt: generated tokens dropped, cache emptied, RNG re-seeded."""
        self.ids: list[int] = list(self.prompt)
        self.cache.reset()
        self.win_start = 0  # sequence index of cache position 0
        self._cached: list[int] = []  # the tokens whose keys/values the cache holds, from win_start
        if self.seed is not None:
            self.rng = torch.Generator(device="cpu").manual_seed(self.seed)

    def back(self) -> None:
        """Remove the last generated token (never the prompt). Its cached keys/values are dropped by
        the next step, which then gives the same distribution as before (and, seeded, a fresh draw)."""
        if len(self.ids) <= len(self.prompt):
            raise ValueError("nothing to undo: only the prompt is left")
        self.ids.pop()  # the cache is cropped lazily, by the next step

    @torch.no_grad()
    def _next_logits(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Logits (V,) for the token after self.ids, as full recompute of ids[-block_size:] gives
        them; plus the attention rows (L, H, Tctx) when recording, and the context start."""
        if not self.ids:
            raise ValueError("ids is empty: give at least one token id to start from")
        ctx_start = max(0, len(self.ids) - self.block_size)
        ctx = self.ids[ctx_start:]
        if ctx_start != self.win_start:  # the window slid: every position moved, rebuild
            self._cached, self.win_start = [], ctx_start
        keep = 0  # longest prefix of the context already cached, leaving >= 1 token to forward
        while keep < min(len(self._cached), len(ctx) - 1) and self._cached[keep] == ctx[keep]:
            keep += 1
        keep = min(keep, self.cache.pos)
        new = [self._check_id(int(t), "context") for t in ctx[keep:]]
        self.cache.crop(keep)
        self._cached = []  # until the forward below succeeds
        idx = torch.tensor([new], dtype=torch.long, device=self.device)  # (1, T_new)
        rec = Recorder(["blocks.*.attn.hook_pattern"]) if self.record else None
        was_training = self.model.training
        self.model.eval()
        try:
            logits, _ = self.model(idx, rec=rec, edit=self.edit, kv_cache=self.cache)  # (1, T_new, V)
        finally:
            self.model.train(was_training)
        self._cached = list(ctx)
        attention = None
        if rec is not None:
            L = self.model.config.n_layer
            # each pattern is (1, H, T_new, Tctx): keep the last query's row
            attention = torch.stack([rec[f"blocks.{i}.attn.hook_pattern"][0, :, -1, :] for i in range(L)])
        return logits[0, -1].detach(), attention, ctx_start

    def step(self, force: int | None = None, k: int = 10) -> Step:
        """Advance one token: draw it, or append `force` (a token id) instead. Returns the Step."""
        logits, attention, ctx_start = self._next_logits()
        probs = sampling_distribution(logits, self.temperature, self.top_k, self.top_p)
        if force is None:
            token = sample(logits, self.temperature, self.top_k, self.top_p, generator=self.rng)
        else:
            token = self._check_id(int(force), "forced")
        top_probs, top_ids = torch.topk(probs, min(k, self.vocab_size))
        pos = len(self.ids)
        self.ids.append(token)
        return Step(token=token, pos=pos, top_ids=top_ids.cpu(), top_probs=top_probs.cpu(),
                    prob=float(probs[token]), logits=logits.float().cpu(),
                    attention=None if attention is None else attention.cpu(),
                    ctx_start=ctx_start, cropped=ctx_start > 0, forced=force is not None)


def stream(model: torch.nn.Module, ids: Sequence[int], max_new_tokens: int, k: int = 10,
           **kw) -> Iterator[Step]:
    """Yield `max_new_tokens` Steps of Generator(model, ids, **kw) (temperature, top_k, top_p,
    seed, record, edit)."""
    gen = Generator(model, ids, **kw)
    for _ in range(max_new_tokens):
        yield gen.step(k=k)


@torch.no_grad()
def generate(model: torch.nn.Module, ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, edit: Edits | None = None) -> list[int]:
    """Prompt + `max_new_tokens` generated ids. use_cache=False is nanoGPT's full recompute (crop to
    the last block_size tokens, forward, last logits); both draw through `sample` with the same seed.
    `edit` is applied in every forward of either."""
    if use_cache:
        gen = Generator(model, ids, temperature, top_k, top_p, seed, edit=edit)
        for _ in range(max_new_tokens):
            gen.step(k=1)
        return gen.ids
    _check_params(temperature, top_k, top_p)
    out = [int(t) for t in ids]
    if not out:
        raise ValueError("the prompt is empty: give at least one token id to start from")
    rng = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    device = next(model.parameters()).device
    block = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            idx = torch.tensor([out[-block:]], dtype=torch.long, device=device)  # (1, T <= block_size)
            logits, _ = model(idx, edit=edit)  # (1, 1, V), or (1, T, V) under an edit
            out.append(sample(logits[0, -1], temperature, top_k, top_p, generator=rng))
    finally:
        model.train(was_training)
    return out


def greedy_continuation(model: torch.nn.Module, ids: Sequence[int], n: int) -> list[int]:
    """The `n` tokens greedy decoding (temperature 0) appends to `ids`, conditioned on the last
    block_size - n of them (at least one): then prompt and sample fit one context window and every
    step is one KV-cached position (past block_size each step would re-encode the whole window,
    ~10x slower). A model whose block_size <= n sees only the last token of `ids`."""
    keep = max(1, model.config.block_size - n)
    ctx = list(ids)[-keep:]
    return generate(model, ctx, n, temperature=0.0)[len(ctx):]
