"""Steering vectors on disk: <folder>/steering/<name>.safetensors (the (C,) tensor, key "vector")
plus <name>.json (layer, site, source, width, model fingerprint, kind). No pickle. `folder` is a run
folder, or the app's data folder for models whose folder is not ours to write (the app decides).

Each file is replaced atomically, the JSON last, so a listed vector has its tensor. `load_vector`
with a model refuses a vector of another width; missing or malformed files raise ValueError naming
the file.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Callable

import torch

from gpt.steering import KINDS, SITES, SteeringVector

FOLDER = "steering"
FORMAT, VERSION = "nanolens-steering", 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """A vector's file name: 1-64 letters, digits, '_', '-', '.', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"vector name {name!r} is not usable: use 1-64 letters, digits, '_', '-' or '.', "
                         "starting with a letter or digit")
    return name


def vector_dir(folder: str | os.PathLike) -> Path:
    """Where a folder (a run folder, or an app data folder) keeps its vectors: <folder>/steering."""
    return Path(folder) / FOLDER


def list_vectors(folder: str | os.PathLike) -> list[str]:
    """Names of the vectors saved under `folder` (both files present), sorted."""
    d = vector_dir(folder)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if NAME_RE.fullmatch(p.stem)
                  and (d / f"{p.stem}.safetensors").is_file())


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_vector(sv: SteeringVector, folder: str | os.PathLike, name: str) -> Path:
    """Write `sv` as <folder>/steering/<name>.safetensors + .json (each replaced atomically; the JSON
    last, so a listed vector has its tensor) and return the .safetensors path."""
    from safetensors.torch import save_file

    d = vector_dir(folder)
    d.mkdir(parents=True, exist_ok=True)
    check_name(name)
    meta = {"format": FORMAT, "version": VERSION, "layer": sv.layer, "site": sv.site, "source": sv.source,
            "width": sv.width, "model": sv.model, "kind": sv.kind}
    st = d / f"{name}.safetensors"
    _atomic(st, lambda p: save_file({"vector": sv.vector.contiguous()}, str(p)))
    _atomic(d / f"{name}.json", lambda p: p.write_text(json.dumps(meta, indent=2, ensure_ascii=False),
                                                        encoding="utf-8"))
    return st


def load_vector(folder: str | os.PathLike, name: str, model: torch.nn.Module | None = None) -> SteeringVector:
    """The vector saved as `name` under `folder`; with `model`, refused (ValueError) unless its
    width is the model's. Missing or malformed files raise ValueError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = vector_dir(folder)
    js, st = d / f"{check_name(name)}.json", d / f"{name}.safetensors"
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
        tensors = load_file(str(st))
    except FileNotFoundError as e:
        raise ValueError(f"no saved vector {name!r} in {d} ({Path(e.filename or js).name} is missing)") from None
    except (OSError, ValueError, SafetensorError) as e:
        raise ValueError(f"the saved vector {name!r} in {d} cannot be read: {e}") from None
    ok = (isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("width"), int)
          and isinstance(meta.get("layer"), int) and meta.get("site") in SITES and meta.get("kind") in KINDS
          and isinstance(meta.get("source"), str) and isinstance(meta.get("model"), str))
    v = tensors.get("vector")
    if not ok or v is None or v.dim() != 1 or v.numel() != meta["width"] or not torch.isfinite(v).all():
        raise ValueError(f"{js.name} / {st.name} in {d} is not a nanolens steering vector (fields or tensor "
                         "do not match); save it again")
    sv = SteeringVector(v.float(), meta["layer"], meta["site"], meta["source"], meta["width"], meta["model"],
                        meta["kind"])
    if model is not None:
        sv.check(model)
    return sv
