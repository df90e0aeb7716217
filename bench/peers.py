"""Locating and loading the peers we compare against: karpathy/nanoGPT's model.py, and a separate
virtual environment with TransformerLens 2.x (for bench_patching; see `transformerlens_python`), and
one with SAELens (for bench_sae's side by side; see `saelens_python`).

nanoGPT's code is never committed here. It is looked up, in order, in
  1. $NANOGPT_DIR  (a folder holding nanoGPT's model.py, and usually train.py), when it is set;
  2. otherwise /tmp/nanogpt.
When it is not there, `load_nanogpt()` returns None and callers print how_to_get() and skip the peer
comparison instead of failing. The module is loaded from that path with importlib (it is plain
source, no pickle), under a private module name so it never shadows anything of ours.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from gpt.config import GPTConfig

DEFAULT_DIR = Path("/tmp/nanogpt")
MODULE_NAME = "_nanolens_peer_nanogpt_model"

HOW_TO_GET = (
    "nanoGPT peer not found: set NANOGPT_DIR to a folder holding karpathy/nanoGPT's model.py (and\n"
    "train.py), or leave it unset and put them in /tmp/nanogpt, e.g.\n"
    "    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt\n"
    "  or, from a bare mirror:\n"
    "    mkdir -p /tmp/nanogpt && git --git-dir=<mirror> show HEAD:model.py > /tmp/nanogpt/model.py\n"
    "The peer comparison is skipped."
)


def nanogpt_dir() -> Path | None:
    """The folder with nanoGPT's model.py, or None: $NANOGPT_DIR when it is set (and then only it, so
    a wrong setting is noticed rather than papered over), else /tmp/nanogpt."""
    env = os.environ.get("NANOGPT_DIR")
    d = Path(env).expanduser() if env else DEFAULT_DIR
    return d if (d / "model.py").is_file() else None


def how_to_get() -> str:
    """What to print when the peer is missing: HOW_TO_GET, naming a $NANOGPT_DIR that lacks model.py."""
    env = os.environ.get("NANOGPT_DIR")
    return (f"NANOGPT_DIR={env} holds no model.py.\n" if env else "") + HOW_TO_GET


def load_nanogpt() -> ModuleType | None:
    """nanoGPT's model.py as a module, or None (with nothing printed) when it cannot be found."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    d = nanogpt_dir()
    if d is None:
        return None
    spec = importlib.util.spec_from_file_location(MODULE_NAME, d / "model.py")
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = mod  # dataclasses look the module up while the class is created
    try:
        spec.loader.exec_module(mod)
    except Exception:
        del sys.modules[MODULE_NAME]
        raise
    return mod


def peer_description() -> str:
    """The path of the peer's model.py that is used, or "not found", for reports."""
    d = nanogpt_dir()
    return "not found" if d is None else str(d / "model.py")


def nanogpt_model(config: GPTConfig, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """nanoGPT's GPT with the same shape as `config`, loaded with `state_dict` (ours; the keys are the
    same), in eval mode. nanoGPT's MLP uses exact GELU, so `config.activation` must be "gelu" for the
    two models to compute the same function. Raises RuntimeError when the peer is missing."""
    mod = load_nanogpt()
    if mod is None:
        raise RuntimeError(how_to_get())
    if config.activation != "gelu":
        raise ValueError("nanoGPT uses exact GELU: compare with config.activation='gelu'")
    pcfg = mod.GPTConfig(block_size=config.block_size, vocab_size=config.vocab_size, n_layer=config.n_layer,
                         n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout, bias=config.bias)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        peer = mod.GPT(pcfg)
    missing, unexpected = peer.load_state_dict(state_dict, strict=False)
    # nanoGPT registers an `attn.bias` mask buffer only when it has no fused attention
    missing = [k for k in missing if not k.endswith("attn.bias")]
    if missing or unexpected:
        raise RuntimeError(f"state dicts differ: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return peer.eval()


# -- TransformerLens: a separate venv, run as a worker process -------------------------------------------
TL_DEFAULT_VENV = Path("/tmp/tlvenv")
TL_HOW_TO_GET = (
    "TransformerLens peer not found: set TRANSFORMERLENS_VENV to a virtual environment with\n"
    "transformer-lens 2.x (4.x removed HookedTransformer), or leave it unset and make /tmp/tlvenv:\n"
    "    python3 -m venv /tmp/tlvenv && /tmp/tlvenv/bin/pip install torch==2.13.0\n"
    "    /tmp/tlvenv/bin/pip install \"transformer-lens<3\" \"datasets<3\" \"pyarrow<18\"\n"
    "(torch first and pinned, so pip does not pull a CUDA build; pyarrow<18 works with the numpy<2 that\n"
    "transformer-lens 2.x pins.) The TransformerLens comparison is skipped."
)


def transformerlens_python() -> Path | None:
    """The python of the TransformerLens venv, or None: $TRANSFORMERLENS_VENV when it is set (and then
    only it), else /tmp/tlvenv. Whether transformer_lens imports there is the worker's to say."""
    env = os.environ.get("TRANSFORMERLENS_VENV")
    d = Path(env).expanduser() if env else TL_DEFAULT_VENV
    py = d / "bin" / "python"
    return py if py.is_file() else None


def transformerlens_how_to_get() -> str:
    """What to print when the TransformerLens venv is missing."""
    env = os.environ.get("TRANSFORMERLENS_VENV")
    return (f"TRANSFORMERLENS_VENV={env} holds no bin/python.\n" if env else "") + TL_HOW_TO_GET


# -- SAELens: a separate venv, run as a script (bench/saelens_peer.py) ------------------------------------
SAELENS_HOW_TO_GET = (
    "SAELens peer not found: set SAELENS_PYTHON to the python of a venv with sae-lens. The SAELens\n"
    "comparison is skipped. To run it, make such a venv (git-ignored .devwork/ is a good place),\n"
    "torch first and pinned so pip does not pull a CUDA build:\n"
    "    python3 -m venv .devwork/saelens-venv && .devwork/saelens-venv/bin/pip install torch==2.13.0\n"
    "    .devwork/saelens-venv/bin/pip install sae-lens\n"
    "    SAELENS_PYTHON=.devwork/saelens-venv/bin/python .venv/bin/python -m bench.bench_sae"
)


def saelens_python() -> Path | None:
    """The python named by $SAELENS_PYTHON when it is set and is a file, else None. There is no
    default place: the comparison takes minutes, so it runs only when asked for. Whether sae_lens
    imports there is bench/saelens_peer.py's to say."""
    env = os.environ.get("SAELENS_PYTHON")
    if not env:
        return None
    py = Path(env).expanduser()
    return py.absolute() if py.is_file() else None


def saelens_how_to_get() -> str:
    """What to print when $SAELENS_PYTHON is unset or names no file."""
    env = os.environ.get("SAELENS_PYTHON")
    return (f"SAELENS_PYTHON={env} is not a file.\n" if env else "") + SAELENS_HOW_TO_GET
