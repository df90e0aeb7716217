"""The GPT: nanoGPT's architecture and state-dict keys, with optional activation recording and editing.

forward(idx, targets=None, rec=None, edit=None, kv_cache=None):
- rec=None, edit=None (or an empty Edits) and kv_cache=None is nanoGPT's forward, with no extra
  work: fused attention (F.scaled_dot_product_attention) and, without targets, logits for the last
  position only;
- rec (a gpt.record.Recorder) receives the activations it asked for, under TransformerLens names;
- edit (a gpt.edit.Edits) replaces activations under the same names, at the same points, before
  rec sees them: rec records the edited values and the edited value is what flows on. Every
  recordable name is editable. An edited ln*.hook_normalized is then scaled and shifted by that
  LayerNorm's weight and bias; an edited attn.hook_result (B, T, nh, C) replaces the attention
  output by its sum over heads plus c_proj's bias. Hooks run in TransformerLens order
  (blocks.i.hook_resid_post before blocks.i+1.hook_resid_pre);
- attention scores and pattern need the manual attention path, which is taken only for layers
  where one of them is recorded or edited; q/k/v, z and result come from the fused path too;
- kv_cache (a gpt.kv_cache.KVCache) makes a chunk of new tokens attend to everything cached; keys
  and values are cached after their edit, so a cached step sees what full recompute sees.
"""
from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.config import GPTConfig
from gpt.edit import Edits, hook, wants
from gpt.kv_cache import KVCache

if TYPE_CHECKING:
    from gpt.record import Recorder

LN_EPS = 1e-5  # nanoGPT's and GPT-2's LayerNorm epsilon
ATTN_INTERNALS = ("attn.hook_attn_scores", "attn.hook_pattern")  # only the manual path computes these


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has none to switch off), as nanoGPT."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LN_EPS)

    def hooked(self, x: torch.Tensor, rec: "Recorder | None", edit: Edits | None, name: str) -> torch.Tensor:
        """self(x), handing over `name` (hook_normalized: x normalized, before weight and bias).
        When it is edited, the edited value gets this LayerNorm's weight and bias, as x would have."""
        if edit is not None and edit.wants(name):
            n = hook(rec, edit, name, _normalized(x))
            return n * self.weight + self.bias if self.bias is not None else n * self.weight
        if rec is not None and rec.wants(name):
            rec.save(name, _normalized(x))
        return self(x)


def _mask(Tq: int, Tk: int, device: torch.device) -> torch.Tensor:
    """Causal mask for Tq queries that are the last Tq of Tk positions: True where attending is allowed."""
    q_pos = torch.arange(Tk - Tq, Tk, device=device).unsqueeze(1)  # (Tq, 1) absolute query positions
    return torch.arange(Tk, device=device).unsqueeze(0) <= q_pos  # (Tq, Tk)


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, rec: "Recorder | None" = None, prefix: str = "",
                kv_cache: KVCache | None = None, layer: int = 0, edit: Edits | None = None) -> torch.Tensor:
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        hooked = rec is not None or edit is not None
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        q, k, v = q.view(B, T, nh, hs), k.view(B, T, nh, hs), v.view(B, T, nh, hs)  # (B, T, nh, hs)
        if hooked:  # TransformerLens keeps heads after positions: hand over (B, T, nh, hs)
            q = hook(rec, edit, prefix + "attn.hook_q", q)
            k = hook(rec, edit, prefix + "attn.hook_k", k)
            v = hook(rec, edit, prefix + "attn.hook_v", v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nh, Tk, hs), Tk = cached + T
        Tk = k.size(2)

        if not (hooked and any(wants(rec, edit, prefix + n) for n in ATTN_INTERNALS)):
            if Tk == T:  # no cache, or an empty one: plain causal attention
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                                   is_causal=True)
            else:  # new queries sit at the end: an explicit mask (is_causal aligns top-left)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(T, Tk, x.device),
                                                   dropout_p=self.dropout if self.training else 0.0)
        else:
            # scale q before the product: T*hs multiplies instead of T*Tk, and mask in place
            att = (q * (1.0 / math.sqrt(hs))) @ k.transpose(-2, -1)  # (B, nh, T, Tk)
            att.masked_fill_(~_mask(T, Tk, x.device), float("-inf"))
            att = hook(rec, edit, prefix + "attn.hook_attn_scores", att)  # (B, nh, T, Tk)
            att = hook(rec, edit, prefix + "attn.hook_pattern", F.softmax(att, dim=-1))
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous()  # (B, T, nh, hs)
        if hooked:
            y = hook(rec, edit, prefix + "attn.hook_z", y)
            name = prefix + "attn.hook_result"
            if edit is not None and edit.wants(name):
                # c_proj(z) is the sum of the heads' writes plus the bias: edit the writes, then sum
                result = hook(rec, edit, name, self._result(y))  # (B, T, nh, C)
                out = result.sum(dim=2)  # (B, T, C)
                return self.resid_dropout(out + self.c_proj.bias if self.c_proj.bias is not None else out)
            if rec is not None and rec.wants(name):
                rec.save(name, self._result(y))
        y = y.reshape(B, T, C)  # re-assemble all head outputs side by side (a view unless an edit made z strided)
        return self.resid_dropout(self.c_proj(y))

    def _result(self, z: torch.Tensor) -> torch.Tensor:
        """Each head's write into the residual stream, z_h @ W_O[h]^T without the bias: (B, T, nh, C)."""
        B, T, nh, hs = z.size()
        W_O = self.c_proj.weight.view(self.n_embd, nh, hs)  # (C_out, nh, hs)
        return torch.einsum("bthd,chd->bthc", z, W_O)  # (B, T, nh, C)


class MLP(nn.Module):

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rec: "Recorder | None" = None, prefix: str = "",
                edit: Edits | None = None) -> torch.Tensor:
        pre = self.c_fc(x)  # (B, T, 4C)
        if rec is None and edit is None:
            return self.dropout(self.c_proj(self.gelu(pre)))
        pre = hook(rec, edit, prefix + "mlp.hook_pre", pre)
        post = hook(rec, edit, prefix + "mlp.hook_post", self.gelu(pre))  # (B, T, 4C)
        return self.dropout(self.c_proj(post))


def _normalized(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without its scale and shift: what TransformerLens calls hook_normalized."""
    return F.layer_norm(x, (x.size(-1),), eps=LN_EPS)


class Block(nn.Module):

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rec: "Recorder | None" = None, layer: int = 0,
                kv_cache: KVCache | None = None, edit: Edits | None = None) -> torch.Tensor:
        if rec is None and edit is None:  # the fast path: nanoGPT's two lines
            x = x + self.attn(self.ln_1(x), kv_cache=kv_cache, layer=layer)
            return x + self.mlp(self.ln_2(x))
        p = f"blocks.{layer}."
        x = hook(rec, edit, p + "hook_resid_pre", x)
        h = self.ln_1.hooked(x, rec, edit, p + "ln1.hook_normalized")
        attn_out = self.attn(h, rec=rec, prefix=p, kv_cache=kv_cache, layer=layer, edit=edit)
        attn_out = hook(rec, edit, p + "hook_attn_out", attn_out)
        x = hook(rec, edit, p + "hook_resid_mid", x + attn_out)
        h = self.ln_2.hooked(x, rec, edit, p + "ln2.hook_normalized")
        mlp_out = hook(rec, edit, p + "hook_mlp_out", self.mlp(h, rec=rec, prefix=p, edit=edit))
        return hook(rec, edit, p + "hook_resid_post", x + mlp_out)


class GPT(nn.Module):

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2 and nanoGPT
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings, as nanoGPT reports it
        (the token embeddings count, since they are also the lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                rec: "Recorder | None" = None, edit: Edits | None = None, kv_cache: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits, loss).

        logits are (B, T, V) when targets, rec, a non-empty edit or kv_cache is given, else (B, 1, V)
        for the last position only. loss is the mean cross-entropy of the (edited) logits against
        targets (-1 ignored), or None.
        """
        device = idx.device
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"cannot forward {start + T} positions: block_size is {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        if not edit:  # None, or an Edits with nothing in it: the fast path
            edit = None
        hooked = rec is not None or edit is not None
        if edit is not None:
            if not isinstance(edit, Edits):
                raise TypeError(f"edit must be a gpt.edit.Edits, got {type(edit).__name__}")
            edit.begin(self.config, start, T, model=self)  # resolves its names first: an unknown one raises here
        if rec is not None:
            edited = frozenset(edit.edited_names(self.config)) if edit is not None else frozenset()
            rec.begin(self.config, cached=start > 0, edited=edited)
        if hooked:
            tok_emb = hook(rec, edit, "hook_embed", tok_emb)
            pos_emb = hook(rec, edit, "hook_pos_embed", pos_emb.expand(B, -1, -1))  # (B, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rec=rec, layer=i, kv_cache=kv_cache, edit=edit)
        if kv_cache is not None:
            kv_cache.advance(T)
        if hooked:
            x = self.transformer.ln_f.hooked(x, rec, edit, "ln_final.hook_normalized")
        else:
            x = self.transformer.ln_f(x)

        if targets is not None or hooked or kv_cache is not None:
            logits = self.lm_head(x)  # (B, T, V)
        else:  # inference: only the last position is needed (a list index keeps the time dim)
            logits = self.lm_head(x[:, [-1], :])  # (B, 1, V)
        if hooked:
            logits = hook(rec, edit, "logits", logits)
        loss = None
        if targets is not None:  # (B*T, V) against (B*T,); reshape: an edit may hand back strided logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context, e.g. to run a GPT-2 checkpoint with a smaller block (nanoGPT's surgery)."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        """AdamW with weight decay on every >=2-D parameter (matmuls, embeddings) and none on biases
        and LayerNorm gains; fused (one kernel per group instead of a loop over parameters) on CUDA,
        and on CPU where this torch has it (>= 2.4). `optimizer.defaults["fused"]` tells which."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters:
            try:
                return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
            except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device here
                pass
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float = 312e12) -> float:
        """Model flops utilisation against `peak_flops` (default: A100 bf16), as in nanoGPT."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops
