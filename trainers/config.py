"""TrainConfig: everything a training run needs besides the model's shape, its presets, and the
checks that refuse a bad run before anything starts.

The presets follow nanoGPT: `cpu-small` is the "I only have a macbook" line of its README,
`baby` is config/train_shakespeare_char.py and `gpt2` is config/train_gpt2.py (GPT-2 124M in GPT-2
BPE). Model-shape fields (block_size, n_layer, ...) are optional overrides of the GPTConfig preset
of the same name, so a run is "preset + overrides". What the machine offers (cores, threads, the
device, free memory) is trainers/machine.py's; check_config asks it.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

from gpt.config import GPTConfig
from trainers.estimate import GPT2_VOCAB, estimate_memory
from trainers.machine import available_memory, resolve_device

MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
# The trainer trains nanoGPT's model: exact GELU, also for the gpt2 preset, whose GPTConfig is
# Hugging Face's GPT-2 (tanh GELU, so that its weights reproduce their logits)
TRAIN_ACTIVATION = "gelu"
# nanoGPT pads GPT-2's 50257 tokens to 50304 = 786 * 64 for speed: the unembedding's matmul and
# the logits' rows are then multiples of 64 (BENCHMARKS.md, "Trainer at GPT-2 scale", measures it);
# the extra rows are never a target and learn to be improbable
VOCAB_PAD = {"gpt2": 64}
TOKENIZERS = ("char", "gpt2")
RUN_CONFIG_FILE = "config.json"  # in a run folder: {"train": TrainConfig.to_dict(), ...}
CHAR_VOCAB_BOUND = 256  # check_config's character vocabulary before the data is read
# the Python types a JSON value may have for each annotation of a TrainConfig field
_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


@dataclass
class TrainConfig:
    preset: str = "tiny"
    data: str | None = None  # corpus name or .txt path; None: trainers.data.default_data()
    tokenizer: str = "char"
    name: str | None = None  # run folder name; None: <preset>-<data>-<timestamp>
    root: str | None = None  # checkpoints root; None: gpt.checkpoint.checkpoints_root()
    # schedule and optimizer (nanoGPT's names, shortened)
    max_iters: int = 200
    eval_interval: int = 50
    eval_iters: int = 10
    log_interval: int = 10
    batch_size: int = 8  # per micro step and per process, as nanoGPT
    grad_accum: int = 1  # total over all DDP processes, as nanoGPT
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 10
    lr_decay_iters: int | None = None  # None: = max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # overrides of the model preset (None: the preset's value)
    block_size: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    bias: bool | None = None  # biases in Linear layers and LayerNorms
    # runtime
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # None: default_threads()
    compile: bool = False
    cpu_shards: bool = True  # CPU, >1 thread: split each batch over the threads (trainers/shards.py)
    snapshots: bool = True  # keep snapshots/iter_XXXXXXX at spread-out iterations
    # also keep a snapshot every N iterations (None: the spread-out ones only): the spread is too
    # sparse late in a run to see a phase change, e.g. an induction head forming between 1000 and 2500
    snapshot_every: int | None = None

    @classmethod
    def from_preset(cls, preset: str, /, **overrides: Any) -> "TrainConfig":
        """The named preset with fields overridden; None values leave the preset's value."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config that to_dict wrote. ValueError names an unknown field or a value of the wrong
        JSON type (a file may have been edited by hand); ranges are check_config's."""
        known = {f.name: str(f.type) for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        for k, v in d.items():
            ok = tuple(t for part in known[k].split("|") for t in _JSON_TYPES[part.strip()])
            if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
                raise ValueError(f"TrainConfig field {k!r} must be {known[k]}, got {v!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able: what a run folder's config.json keeps under "train"."""
        return asdict(self)

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig preset of the same name with this config's shape overrides and nanoGPT's
        exact GELU; `vocab_size` is the model's (see padded_vocab)."""
        overrides = {k: getattr(self, k) for k in MODEL_FIELDS if getattr(self, k) is not None}
        return GPTConfig.preset(self.preset, vocab_size=vocab_size, activation=TRAIN_ACTIVATION,
                                **overrides)


def padded_vocab(vocab_size: int, tokenizer: str) -> int:
    """The model's vocabulary for a tokenizer of `vocab_size` tokens: GPT-2's BPE rounded up to a
    multiple of 64 as nanoGPT does (50257 -> 50304), a character vocabulary as it is."""
    m = VOCAB_PAD.get(tokenizer, 1)
    return -(-vocab_size // m) * m


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig in <run_dir>/config.json (as trainers.runs.start or the trainer wrote it),
    named after the folder it is in, so a moved or copied run trains where it is. Its values are
    check_config's to judge; ValueError here names the file when it is missing, not JSON, or not
    a run config."""
    d = Path(run_dir)
    path = d / RUN_CONFIG_FILE
    try:
        rc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e}); a run folder to train holds "
                         "the config.json that trainers.runs.start writes") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rc, dict) or not isinstance(rc.get("train"), dict):
        raise ValueError(f'{path}: not a run config (expected a JSON object with a "train" object)')
    try:
        cfg = TrainConfig.from_dict(rc["train"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return replace(cfg, name=validate_run_name(d.name), root=str(d.parent))


PRESETS: dict[str, TrainConfig] = {
    # fast everywhere: tests and a first look
    "tiny": TrainConfig(preset="tiny", max_iters=200, eval_interval=50, eval_iters=10,
                        log_interval=10, batch_size=8, learning_rate=1e-3, min_lr=1e-4,
                        warmup_iters=10, dropout=0.0),
    # nanoGPT README, "I only have a macbook": --block_size=64 --batch_size=12 --n_layer=4
    # --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 --eval_iters=20
    "cpu-small": TrainConfig(preset="cpu-small", max_iters=2000, eval_interval=250, eval_iters=20,
                             log_interval=10, batch_size=12, learning_rate=1e-3, min_lr=1e-4,
                             warmup_iters=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                             block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    # nanoGPT config/train_shakespeare_char.py
    "baby": TrainConfig(preset="baby", max_iters=5000, eval_interval=250, eval_iters=200,
                        log_interval=10, batch_size=64, learning_rate=1e-3, min_lr=1e-4,
                        warmup_iters=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                        block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    # nanoGPT config/train_gpt2.py on train.py's defaults: GPT-2 124M (12 x 12 x 768, block 1024,
    # no biases, dropout 0), batch 12 x 1024 tokens x 40 micro steps (5 per GPU on 8 GPUs: under
    # torchrun grad_accum is divided over the processes), 600k iterations, in GPT-2 BPE
    "gpt2": TrainConfig(preset="gpt2", tokenizer="gpt2", max_iters=600_000, lr_decay_iters=600_000,
                        eval_interval=1000, eval_iters=200, log_interval=10, batch_size=12,
                        grad_accum=5 * 8, learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000,
                        weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, block_size=1024,
                        n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False),
}


def preset_values(preset: str, names: Sequence[str]) -> dict[str, Any]:
    """The values of TrainConfig fields `names` for a preset, in that order; shape fields the
    preset leaves None come from the GPTConfig preset of the same name (what the run will use)."""
    tc, mc = PRESETS[preset], GPTConfig.preset(preset)
    return {n: getattr(mc, n) if getattr(tc, n) is None else getattr(tc, n) for n in names}


# -- schedule -------------------------------------------------------------------------------------
def get_lr(it: int, cfg: TrainConfig) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr at decay_iters, then min_lr."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def is_snapshot_iter(it: int, every: int | None = None) -> bool:
    """0, 10, 25, 50, 100, 250, 500, 1000, ...: dense early, where the model changes fastest;
    and with `every` (TrainConfig.snapshot_every) also every multiple of it."""
    if it == 0 or (every is not None and it % every == 0):
        return True
    e = 1
    while 10 ** e <= it:
        if it in (10 ** e, 25 * 10 ** (e - 1), 5 * 10 ** e):
            return True
        e += 1
    return False


# -- checks ---------------------------------------------------------------------------------------
_NAME_OK = re.compile(r"[\w][\w.+=@-]*")  # fullmatch: "$" would let a final newline through
NAME_MAX_BYTES = 128  # a folder name may have 255 bytes; a run name keeps paths readable


def validate_run_name(name: str | None) -> str:
    """Return `name` if it is a safe single folder name, else ValueError saying what to use.
    Its length is counted in UTF-8 bytes, as the filesystem counts it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the run name is empty; pass --name with letters, digits, '-', '_' or '.'")
    if "/" in name or "\\" in name or ".." in name:
        raise ValueError(f"run name {name!r} must not contain '/', '\\' or '..'; it names one "
                         "folder under the checkpoints root")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > NAME_MAX_BYTES:
        raise ValueError(f"run name {name[:40]!r}... is {size} bytes long; use at most {NAME_MAX_BYTES} "
                         "bytes (a letter outside ASCII takes 2 to 4)")
    if not _NAME_OK.fullmatch(name):
        raise ValueError(f"run name {name!r} is not allowed; use letters, digits, '-', '_', '.', "
                         "'+', '=', '@' (no spaces or line breaks), starting with a letter or digit")
    return name


def head_suggestion(n_embd: int, n_head: int) -> str:
    """What to try when n_embd is not divisible by n_head: the nearest head counts that divide
    n_embd, and the nearest widths that give each of n_head heads a power-of-two size (what
    people pick: n_head 4 for n_embd 64, n_embd 96 for n_head 3). Nearest first."""
    divisors = {d for i in range(1, math.isqrt(n_embd) + 1) if n_embd % i == 0 for d in (i, n_embd // i)}
    heads = [max((d for d in divisors if d < n_head), default=None),
             min((d for d in divisors if d > n_head), default=None)]
    low = n_head * 2 ** max(0, (n_embd // n_head).bit_length() - 1)  # largest n_head * 2^k <= n_embd
    widths = [low if low < n_embd else None, low * 2 if low < n_embd else low]

    def near(xs: list[int | None], target: int) -> str:
        xs = sorted({x for x in xs if x}, key=lambda x: (abs(x - target), -x))
        return " or ".join(str(x) for x in xs)

    return (f"try n_head {near(heads, n_head)} with n_embd {n_embd}, or n_embd "
            f"{near(widths, n_embd)} with n_head {n_head}")


def vocab_bound(cfg: TrainConfig) -> int:
    """The vocabulary size check_config assumes before the data is read: GPT-2's, or a generous
    character set. Only a real vocabulary larger than this can change its answer."""
    return GPT2_VOCAB if cfg.tokenizer == "gpt2" else CHAR_VOCAB_BOUND


def check_config(cfg: TrainConfig, vocab_size: int | None = None, device: str | None = None,
                 world_size: int = 1) -> GPTConfig:
    """Refuse a bad run before anything starts; return its GPTConfig. ValueError says what to fix."""
    ints = dict(max_iters=1, eval_interval=1, eval_iters=1, log_interval=1, batch_size=1,
                grad_accum=1, warmup_iters=0)
    for k, lo in ints.items():
        v = getattr(cfg, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"--{k.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
    every = cfg.snapshot_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"--snapshot-every must be a whole number >= 1, got {every!r}; leave it out "
                         "for the spread-out snapshots only")
    if cfg.lr_decay_iters is not None and cfg.lr_decay_iters < 1:
        raise ValueError(f"--lr-decay-iters must be >= 1, got {cfg.lr_decay_iters}")
    if not cfg.learning_rate > 0:
        raise ValueError(f"--lr must be positive, got {cfg.learning_rate}")
    if not 0 <= cfg.min_lr <= cfg.learning_rate:
        raise ValueError(f"--min-lr must be in [0, --lr={cfg.learning_rate}], got {cfg.min_lr}")
    if not cfg.weight_decay >= 0 or not cfg.grad_clip >= 0:
        raise ValueError("--weight-decay and --grad-clip must be >= 0 (grad clip 0 turns it off)")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ValueError(f"--beta1/--beta2 must be in [0, 1), got {cfg.beta1}, {cfg.beta2}")
    if cfg.tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown --tokenizer {cfg.tokenizer!r}; choose one of {TOKENIZERS}")
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                    or cfg.threads < 1):
        raise ValueError(f"--threads must be a whole number >= 1, got {cfg.threads!r}; leave it out "
                         "for the default (all cores but one)")
    if cfg.grad_accum % world_size != 0:  # each process runs grad_accum / world_size micro steps
        near = sorted({max(1, cfg.grad_accum // world_size) * world_size,
                       (cfg.grad_accum // world_size + 1) * world_size})
        raise ValueError(f"--grad-accum ({cfg.grad_accum}) must be a multiple of the number of "
                         f"processes ({world_size}); try --grad-accum {' or '.join(map(str, near))}")
    if cfg.name is not None:
        validate_run_name(cfg.name)
    if vocab_size is None:
        vocab_size = vocab_bound(cfg)
    if cfg.preset in PRESETS:  # (an unknown preset is model_config's to refuse)
        base = GPTConfig.preset(cfg.preset)
        e = base.n_embd if cfg.n_embd is None else cfg.n_embd
        h = base.n_head if cfg.n_head is None else cfg.n_head
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (e, h)) and e % h:
            raise ValueError(f"invalid model settings: n_embd ({e}) must be divisible by n_head ({h}), "
                             f"since each head gets n_embd / n_head dimensions; {head_suggestion(e, h)}")
    try:
        mcfg = cfg.model_config(vocab_size)
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid model settings: {e}") from None
    dev = resolve_device(device or cfg.device)
    p_bytes, a_bytes = estimate_memory(mcfg, cfg.batch_size)
    avail = available_memory(dev)
    if p_bytes + a_bytes > avail:
        gib = 1024 ** 3
        raise ValueError(
            f"this model will not fit on {dev}: it needs about {(p_bytes + a_bytes) / gib:.1f} GiB "
            f"(weights+grads+AdamW {p_bytes / gib:.1f} GiB, activations {a_bytes / gib:.1f} GiB) "
            f"but about {avail / gib:.1f} GiB is available; reduce --n-layer/--n-embd or "
            "--batch-size/--block-size")
    return mcfg
