"""What this machine offers a training run: its cores and the threads a run should use, the
device ('auto' resolved, anything else checked to exist) and the memory free on it.

Split from trainers/config.py, which keeps the settings themselves and the checks that use these
(check_config asks resolve_device and available_memory); the CLI, the Train page and the
background jobs ask for their default threads here.
"""
from __future__ import annotations

import os
from typing import Any

import torch


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(world_size: int = 1) -> int:
    """CPU threads for a run: all cores but one (left to the UI), split over DDP processes."""
    return max(1, (cpu_cores() - 1) // max(1, world_size))


def cap_threads(threads: Any, world_size: int = 1) -> tuple[Any, str | None]:
    """(the threads to use, a warning or None). More threads than the cores (shared by the DDP
    processes) only make them wait on each other: --threads 1000 on 2 cores trained 28x slower.
    So they are capped at the core count; the CLI's --force-threads skips this. Anything that is
    not a count above the cap is returned as is, for check_config to judge."""
    cores = cpu_cores()
    limit = max(1, cores // max(1, world_size))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= limit:
        return threads, None
    each = f" for each of {world_size} processes" if world_size > 1 else ""
    return limit, (f"--threads {threads} is more than this machine's {cores} cores{each}; using "
                   f"{limit} (more threads than cores slow training down; pass --force-threads to "
                   f"use {threads} anyway)")


def resolve_device(device: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; anything else is checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA GPU is available; use --device cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps asked for but MPS is not available; use --device cpu")
    return device


def available_memory(device: str) -> int:
    """Bytes that a run on `device` may use: free GPU memory, or available RAM."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:  # MemAvailable counts reclaimable page cache, which sysconf's AVPHYS_PAGES does not
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse
