"""The SAE job's resumable state (trainers/train_sae.py): state.safetensors holds the SAE, Adam's
moments and step, and the per-latent "tokens since it last fired" counters, in one file replaced
atomically (safetensors, no pickle); truncate_metrics drops metrics rows logged after that state,
so a job killed with kill -9 resumes with one row per step."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gpt.sae import SAE

METRICS, STATE = "metrics.jsonl", "state.safetensors"


def save_state(d: Path, sae: SAE, opt: torch.optim.Optimizer, step: int, since: torch.Tensor) -> None:
    """Write <d>/state.safetensors (atomically): the SAE, Adam's moments and step, `step`, `since`."""
    from safetensors.torch import save_file

    from gpt.sae import _atomic_write

    t = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    adam_step = 0
    names = dict(sae.named_parameters())
    for name, p in names.items():
        s = opt.state.get(p, {})
        if s:
            t[f"adam.{name}.exp_avg"] = s["exp_avg"].cpu().contiguous()
            t[f"adam.{name}.exp_avg_sq"] = s["exp_avg_sq"].cpu().contiguous()
            adam_step = int(s["step"])
    t["since"] = since.cpu().contiguous()
    meta = {"step": str(step), "adam_step": str(adam_step)}
    _atomic_write(d / STATE, lambda p: save_file(t, str(p), metadata=meta))


def load_state(d: Path, sae: SAE, opt: torch.optim.Optimizer, device: str) -> tuple[int, torch.Tensor]:
    """Load <d>/state.safetensors into sae and opt; return (step, since) to continue from."""
    from safetensors import safe_open

    with safe_open(str(d / STATE), framework="pt") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    sae.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("sae.")})
    step, adam_step = int(meta["step"]), int(meta["adam_step"])
    for name, p in sae.named_parameters():
        if f"adam.{name}.exp_avg" in t:
            opt.state[p] = {"step": torch.tensor(float(adam_step)), "exp_avg": t[f"adam.{name}.exp_avg"].to(device),
                            "exp_avg_sq": t[f"adam.{name}.exp_avg_sq"].to(device)}
    return step, t["since"].to(device)


def truncate_metrics(d: Path, step: int) -> None:
    """Keep the metrics rows up to `step` (a resumed job logs the rest again)."""
    from trainers.runfolder import read_metrics

    keep = [r for r in read_metrics(d) if isinstance(r.get("step"), int) and r["step"] <= step]
    write_text = "".join(json.dumps(r) + "\n" for r in keep)
    tmp = d / ".metrics.jsonl.tmp"
    tmp.write_text(write_text, encoding="utf-8")
    os.replace(tmp, d / METRICS)
