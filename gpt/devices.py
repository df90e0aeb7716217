"""Where an inspector model runs and in what dtype, how much memory that needs, and whether it fits.

  default_device() -> "cuda" | "cpu"         cuda wherever torch sees a GPU, else cpu
  device_choices(), dtype_choices(device)    what the Model page offers (fp32 always; bf16, fp16 on cuda)
  describe(device, dtype)                    "device: cuda (NVIDIA H200), bf16"
  free_bytes(device), host_free_bytes()      free memory (torch.cuda.mem_get_info; MemAvailable on the host)
  estimate(config, dtype, device) -> MemoryEstimate   weights on the device, forward workspace, a trace
  check_fits(est) -> str | None              None, or the refusal in words (GiB, and what to do)

Why only fp32 on the CPU: PyTorch's CPU kernels for bf16 / fp16 matmuls are slower than fp32 on
most CPUs (no AMX / AVX-512 BF16), and half-precision softmax and LayerNorm lose digits the views
show; an inspector model on a CPU is small enough for fp32. Tests may still ask for bf16 on the CPU
(`dtype_choices("cpu", allow_cpu_half=True)`) to exercise the half-precision paths without a GPU.

$NANOLENS_MEMORY_LIMIT_BYTES caps the free memory of every device (and of the host), so a test or a
cautious user can make a model "too large" without owning a small machine. Pure: no Streamlit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gpt.config import GPTConfig
from gpt.record import Recorder
from gpt.weights import CheckpointError, param_count

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LIMIT_ENV = "NANOLENS_MEMORY_LIMIT_BYTES"
TRACE_LIMIT_ENV = "NANOLENS_MAX_TRACE_BYTES"  # the prompt box's cap on one recording (app.views.prompt)
DEFAULT_TRACE_LIMIT = 1 << 30
GIB = 1 << 30
CPU_ONLY_FP32 = ("only fp32 on the CPU: half-precision matmuls are slower there than fp32 on most CPUs, "
                 "and half-precision softmax and LayerNorm lose digits the views show")


class TooLargeError(CheckpointError):
    """The model (weights + what a trace needs) does not fit the chosen device's free memory."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (one place, so tests can pretend either way)."""
    return torch.cuda.is_available()


def default_device() -> str:
    """"cuda" where a GPU is present, else "cpu"."""
    return "cuda" if cuda_available() else "cpu"


def device_choices() -> list[str]:
    """The devices an inspector model may run on, the default first."""
    return ["cuda", "cpu"] if cuda_available() else ["cpu"]


def dtype_choices(device: str, allow_cpu_half: bool = False) -> list[str]:
    """The dtypes offered on `device`, fp32 first: bf16 and fp16 too on cuda (fp16 before bf16 only
    where the GPU lacks bf16); on the CPU only fp32 (see CPU_ONLY_FP32) unless `allow_cpu_half`."""
    if device == "cuda":
        bf16 = cuda_available() and torch.cuda.is_bf16_supported()
        return ["fp32", "bf16", "fp16"] if bf16 else ["fp32", "fp16"]
    return ["fp32", "bf16"] if allow_cpu_half else ["fp32"]


def check_choice(device: str, dtype: str, allow_cpu_half: bool = False) -> None:
    """ValueError with what to choose instead, for a device or dtype that is not on offer here."""
    if device not in device_choices():
        raise ValueError(f"device {device!r} is not available here; choose one of {device_choices()}")
    if dtype not in dtype_choices(device, allow_cpu_half):
        why = f" ({CPU_ONLY_FP32})" if device == "cpu" else ""
        raise ValueError(f"dtype {dtype!r} is not offered on {device}{why}; choose one of "
                         f"{dtype_choices(device, allow_cpu_half)}")


def device_name(device: str) -> str:
    """"cuda (NVIDIA H200)" or "cpu"."""
    if device == "cuda" and cuda_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return device


def describe(device: str, dtype: str) -> str:
    """The Model page's line: "device: cuda (NVIDIA H200), bf16"."""
    return f"device: {device_name(device)}, {dtype}"


def _cap(n: int) -> int:
    env = os.environ.get(LIMIT_ENV, "").strip()
    return min(n, int(env)) if env.isdigit() else n


def host_free_bytes() -> int:
    """Memory the host can still give (MemAvailable from /proc/meminfo; sysconf elsewhere), capped
    by $NANOLENS_MEMORY_LIMIT_BYTES."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return _cap(int(line.split()[1]) * 1024)  # the line is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return _cap(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return _cap(1 << 62)  # unknown: only the env cap applies


def free_bytes(device: str) -> int:
    """Free memory of `device` (cuda: torch.cuda.mem_get_info; cpu: the host's), capped by
    $NANOLENS_MEMORY_LIMIT_BYTES."""
    if device == "cuda":
        return _cap(int(torch.cuda.mem_get_info()[0]))
    return host_free_bytes()


def trace_limit() -> int:
    """The prompt box's cap on one recording ($NANOLENS_MAX_TRACE_BYTES, default 1 GiB)."""
    env = os.environ.get(TRACE_LIMIT_ENV, "").strip()
    return int(env) if env.isdigit() else DEFAULT_TRACE_LIMIT


@dataclass(frozen=True)
class MemoryEstimate:
    """What a model needs, in bytes. weights: its parameters in `dtype` on `device`; work: one
    recorded forward's temporaries at `T` tokens on the device (logits, attention scores, the MLP);
    trace: the recording of everything at `T` tokens in fp32, kept on the host (Recorder's default),
    capped at the prompt box's limit, which refuses longer recordings anyway."""

    weights: int
    work: int
    trace: int
    device: str
    dtype: str
    T: int

    @property
    def device_bytes(self) -> int:
        """Bytes on the device: on the CPU the trace shares that memory."""
        return self.weights + self.work + (self.trace if self.device == "cpu" else 0)

    def words(self) -> str:
        """"weights 0.46 GiB (bf16) + forward 0.25 GiB on cuda; a full trace (1024 tokens) 0.84 GiB on the host"."""
        where = "in the same memory" if self.device == "cpu" else "on the host"
        return (f"weights {gib(self.weights)} ({self.dtype}) + forward {gib(self.work)} on {self.device}; "
                f"a full trace ({self.T} tokens) {gib(self.trace)} {where}")


def gib(n: int) -> str:
    """Bytes in GiB with two decimals ("1.50 GiB"); under 0.1 GiB in MiB ("3.1 MiB"), so a small
    model does not read as 0.00."""
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / (1 << 20):.1f} MiB"


def estimate(config: GPTConfig, dtype: str, device: str, T: int | None = None) -> MemoryEstimate:
    """The memory a model of `config` needs in `dtype` on `device` for a recorded forward over `T`
    tokens (default: its whole context), computed from the config alone (nothing built or read)."""
    T = config.block_size if T is None else min(int(T), config.block_size)
    size = DTYPES[dtype].itemsize
    C, H, V = config.n_embd, config.n_head, config.vocab_size
    # one layer's temporaries at a time: scores, mask fill and softmax (3 x H T T) and the MLP's
    # 4C hidden twice, in fp32 (upcast for the recording); plus the logits (T V), in fp32
    work = 4 * (T * V + 3 * H * T * T + 8 * T * C + 4 * T * C)
    trace = min(Recorder.estimate_bytes(config, T), trace_limit())
    return MemoryEstimate(param_count(config) * size, work, trace, device, dtype, T)


def check_fits(est: MemoryEstimate, free: int | None = None, host_free: int | None = None) -> str | None:
    """None when `est` fits the free memory (`free` of its device, `host_free` of the host; measured
    when None), else the refusal: the numbers in GiB and what to do."""
    free = free_bytes(est.device) if free is None else free
    host = (free if est.device == "cpu" else host_free_bytes()) if host_free is None else host_free
    over = []
    if est.device_bytes > free:
        over.append(f"{gib(est.device_bytes)} on {est.device}, which has {gib(free)} free")
    if est.device != "cpu" and est.trace > host:
        over.append(f"{gib(est.trace)} for a trace on the host, which has {gib(host)} free")
    if not over:
        return None
    todo = []
    if est.device == "cuda":
        if est.dtype == "fp32":
            todo.append("choose bf16 or fp16")
    elif cuda_available():
        todo.append("choose the GPU (cuda)" + (", in bf16" if est.dtype == "fp32" else ""))
    else:
        todo.append("use a machine with a GPU")
    todo += ["inspect shorter prompts (set a lower NANOLENS_MAX_TRACE_BYTES)", "close other programs",
             "or load a smaller model"]
    return (f"This model does not fit: it needs {est.words()}; that is " + " and ".join(over)
            + ". To load it: " + ", ".join(todo) + ".")


def require_fits(config: GPTConfig, source: object, device: str, dtype: str) -> None:
    """TooLargeError naming `source` when a model of `config` does not fit `device` in `dtype`."""
    why = check_fits(estimate(config, dtype, device))
    if why is not None:
        raise TooLargeError(f"{source}: {why}")
