"""The weights a model config needs, checked before anything is built, and plain words for a
weights file that cannot be read.

A config names its model's size in a few bytes (n_layer: 10000), so nothing here trusts it: the
stored tensors' shapes (from a safetensors header, read without the data, or from a state dict
already in memory) are compared with what the config needs, in time proportional to the file, and
only then is a GPT built, no larger than the weights already in hand.

  expected_shapes(config), param_count(config)     what a GPT of that config stores, without building it
  check_shapes(config, shapes, source, nbytes)     CheckpointError unless they match exactly
  safetensors_shapes(path) -> (shapes, size)       the header only: empty / truncated / not safetensors
  load_state_dict_file(path), build_model(config, sd, source)
  file_problem(path, e)                            "empty (0 bytes)", "truncated", "not a PyTorch zip or pickle"
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Iterator

import torch

from gpt.config import GPTConfig
from gpt.model import GPT

TIED = ("lm_head.weight", "transformer.wte.weight")  # (dropped on save, kept)
MAX_JSON_BYTES = 64 << 20  # a config or a safetensors header is far smaller; never read more


class CheckpointError(ValueError):
    """A path is not a loadable checkpoint; the message names the file and what is wrong."""


def size_words(n: int) -> str:
    """812 -> "812 bytes", 1_500_000 -> "1.5 MB"."""
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


def error_detail(e: BaseException) -> str:
    """The informative line of an exception; torch's weights_only errors wrap it in advice to
    set weights_only=False, which nanolens never does."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boiler)] or lines or [""]
    return f"{type(e).__name__}: {useful[0][:300]}"


def file_problem(path: Path, e: BaseException | None = None) -> str:
    """What a file that torch.load (or a pickle reader) refused is, in words, for "<path>: <this>":
    empty, a zip or pickle that is truncated or damaged, a pickle holding more than tensors, or
    not a PyTorch zip or pickle at all. The exception `e` only tells a refused class apart."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "empty (0 bytes)"
    if e is not None and "GLOBAL" in str(e):  # the weights_only unpickler refused a class
        return (f"holds Python objects, not just tensors ({error_detail(e).split(': ', 1)[-1]}); "
                "nanolens reads with torch.load(weights_only=True) and never runs code from a file")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return f"a zip archive of {size_words(size)}, but not a complete PyTorch checkpoint (truncated or damaged)"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle of {size_words(size)} that is truncated or damaged"
    text = head.decode("ascii", "replace")
    start = repr(text) if text.isprintable() else head.hex(" ")
    return f"not a PyTorch zip or pickle file (it starts with {start})"


# -- weights: what a config needs, checked before anything is built ---------------------------------
def _layer_shapes(c: GPTConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name within block i, shape) of one block's tensors, in GPT.state_dict() order."""
    C, out = c.n_embd, []
    for name, weight, bias in (("ln_1", (C,), C), ("attn.c_attn", (3 * C, C), 3 * C),
                               ("attn.c_proj", (C, C), C), ("ln_2", (C,), C),
                               ("mlp.c_fc", (4 * C, C), 4 * C), ("mlp.c_proj", (C, 4 * C), C)):
        out.append((f"{name}.weight", weight))
        if c.bias:
            out.append((f"{name}.bias", (bias,)))
    return out


def expected_shapes(c: GPTConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor a GPT of config `c` stores, lm_head.weight left out (tied), in
    GPT.state_dict() order. A generator, so that an absurd n_layer costs nothing up front."""
    yield "transformer.wte.weight", (c.vocab_size, c.n_embd)
    yield "transformer.wpe.weight", (c.block_size, c.n_embd)
    layer = _layer_shapes(c)
    for i in range(c.n_layer):
        for name, shape in layer:
            yield f"transformer.h.{i}.{name}", shape
    yield "transformer.ln_f.weight", (c.n_embd,)
    if c.bias:
        yield "transformer.ln_f.bias", (c.n_embd,)


def param_count(c: GPTConfig) -> int:
    """GPT(c).get_num_params(non_embedding=False), computed without building anything."""
    per_layer = sum(math.prod(s) for _, s in _layer_shapes(c))
    return (c.vocab_size + c.block_size) * c.n_embd + c.n_layer * per_layer + c.n_embd * (1 + c.bias)


def check_shapes(config: GPTConfig, shapes: dict[str, tuple[int, ...]], source: Path,
                 nbytes: int | None = None) -> None:
    """CheckpointError unless the stored tensors (`shapes`: key -> shape; lm_head.weight may be
    among them) are exactly the ones `config` needs. Costs O(len(shapes)) whatever the config says;
    with `nbytes`, the file's size, a config whose parameters cannot fit in it is refused first."""
    n = param_count(config)
    if nbytes is not None and 2 * n > nbytes:
        raise CheckpointError(f"{source}: the config describes {n:,} parameters (at least {size_words(2 * n)} "
                              f"even in 16 bits), but the file has {size_words(nbytes)}; the config and the "
                              "weights do not belong together")
    stored = [k for k in shapes if k != TIED[0]]
    n_needed = 2 + config.n_layer * len(_layer_shapes(config)) + 1 + config.bias
    if n_needed > len(stored):  # some are missing: name the first few, never list them all
        missing = list(itertools.islice((k for k, _ in expected_shapes(config) if k not in shapes), 5))
        raise CheckpointError(f"{source}: missing weights {missing}: the config needs {n_needed:,} "
                              f"tensors, the file has {len(stored)}")
    expected = dict(expected_shapes(config))  # no more entries than the file has
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError(f"{source}: missing weights {missing[:5]}"
                              f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}")
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected weights {unexpected[:5]} for this config")
    for k, shape in expected.items():
        if tuple(shapes[k]) != shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(shapes[k])}, the config needs {shape}")


def safetensors_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], int]:
    """({key: shape}, file size) from a safetensors header, reading no tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as f:  # layout: u64 little-endian header length, JSON header, data
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if size == 0:
            raise CheckpointError(f"{path}: empty (0 bytes)")
        if not 2 <= n <= min(size - 8, MAX_JSON_BYTES):
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (its first 8 bytes "
                                  f"announce a {n}-byte header; the file has {size_words(size)})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        shapes, end = {}, 0
        for k, v in header.items():
            if k != "__metadata__":
                shapes[k] = tuple(int(d) for d in v["shape"])
                end = max(end, int(v["data_offsets"][1]))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a tensor table)") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated (its tensors need {size_words(8 + n + end)}, the file "
                              f"has {size_words(size)})")
    return shapes, size


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a torch file read with weights_only=True."""
    if path.suffix == ".safetensors":
        safetensors_shapes(path)  # empty / truncated / not safetensors, said plainly
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # SafetensorError, UnpicklingError, RuntimeError (bad zip), EOFError...
        why = (f"cannot be read as weights ({error_detail(e)})" if path.suffix == ".safetensors"
               else file_problem(path, e))
        raise CheckpointError(f"{path}: {why}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return sd


def build_model(config: GPTConfig, sd: dict[str, torch.Tensor], source: Path,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
    """A GPT with weights `sd` (nanoGPT key names); CheckpointError naming `source` and the first
    missing / unexpected / mis-shaped key, found before the model is built. lm_head.weight may be
    absent (tied) or equal to wte."""
    bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{source}: {bad} is a {type(sd[bad]).__name__}, not a tensor")
    check_shapes(config, {k: tuple(v.shape) for k, v in sd.items()}, source)
    sd = dict(sd)
    if TIED[0] in sd:
        if not torch.equal(sd[TIED[0]], sd[TIED[1]]):
            raise CheckpointError(f"{source}: lm_head.weight differs from transformer.wte.weight; "
                                  "only models with tied embeddings are supported")
        del sd[TIED[0]]
    for k, v in sd.items():  # NaNs are allowed: a diverged run is worth inspecting
        if not v.is_floating_point():
            raise CheckpointError(f"{source}: {k} is {v.dtype}, expected floating point")
    sd[TIED[0]] = sd[TIED[1]]
    # sized like the weights already in memory, so bounded by the file. Built on the meta device
    # (no random init: GPT-2 xl's would take a minute) and made straight in `dtype` on `device`, so
    # a GPU model never passes through an fp32 copy on the host
    with torch.device("meta"):
        model = GPT(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.transformer.wte.weight = model.lm_head.weight  # to_empty may give tied parameters two tensors
    model.load_state_dict(sd, strict=True)  # copies (and casts) every tensor; strict: none left empty
    return model.eval()
