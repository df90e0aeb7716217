"""A run's training state and its checkpoints: where a run starts, and the saves it starts again from.

A new run starts from a freshly initialised GPT on its corpus. A resumed run starts from its
latest/ checkpoint: the model, tokenizer and optimizer state, and the counters that checkpoint's
meta recorded (iter, best and last val loss, elapsed_s), on the data its config.json names. The
trainer builds that meta and saves it with `save`, so what a resume reads back is what a save
wrote. Nothing here writes status.json (trainers/runstatus.py) or knows of DDP.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gpt import checkpoint as ckpt  # module access, so tests can monkeypatch ckpt.save
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.tokenizer import Tokenizer
from trainers import runs
from trainers.config import RUN_CONFIG_FILE, TrainConfig, check_config, padded_vocab, vocab_bound
from trainers.data import Corpus, default_data
from trainers.runfolder import write_failure


@dataclass
class Start:
    """What a run starts from: its model (on the device for a resumed run, else on the CPU), its
    corpus (whose tokenizer is the run's), and for a resumed run its recorded config.json, the
    optimizer state (None: fresh AdamW) and the counters from latest/'s meta."""
    model: GPT
    corpus: Corpus
    run_cfg: dict[str, Any] | None = None  # a resumed run's config.json; None for a new run
    opt_state: dict[str, Any] | None = None
    iter: int = 0
    best_val: float = math.inf
    elapsed_s: float = 0.0  # training time before this process
    last_val: float | None = None

    def describe(self) -> list[str]:
        """The lines that tell the user what the run starts from: the model and its data, and for
        a resumed run where it resumes and whether with the optimizer's state."""
        cfg, src, tok = self.model.config, self.corpus.source, self.corpus.tokenizer
        n = self.model.get_num_params()
        lines = [f"model: {n / 1e6:.2f}M params ({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} "
                 f"embd, block {cfg.block_size}); data: {src['name']} ({src['tokens']:,} {tok.kind} tokens, "
                 f"vocab {tok.vocab_size}{'' if cfg.vocab_size == tok.vocab_size else f', padded to {cfg.vocab_size}'})"]
        if self.run_cfg is not None:
            how = "optimizer state loaded" if self.opt_state is not None else "no optimizer state: fresh AdamW"
            lines.append(f"resumed from iter {self.iter} ({how})")
        return lines


def new_run(cfg: TrainConfig, model_cfg: GPTConfig | None, device: str, world_size: int,
            log: Callable[[str], None]) -> Start:
    """A new run: cfg's corpus and tokenizer, and a GPT of model_cfg (None: cfg.model_config) with
    the tokenizer's vocab_size (GPT-2's padded to 50304, as nanoGPT: config.padded_vocab), initialised from cfg.seed (the same on every rank). Raises
    ValueError when the tokenizer's vocabulary makes cfg invalid."""
    corpus = Corpus.load(cfg.data or default_data(), cfg.tokenizer,
                         (model_cfg or cfg.model_config(65)).block_size, log=log)
    tok = corpus.tokenizer
    vocab = padded_vocab(tok.vocab_size, tok.kind)
    model_cfg = replace(model_cfg or cfg.model_config(vocab), vocab_size=vocab)
    if tok.vocab_size > vocab_bound(cfg):  # the Trainer's first check assumed a smaller vocabulary
        check_config(cfg, vocab_size=tok.vocab_size, device=device, world_size=world_size)
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    return Start(GPT(model_cfg), corpus)


def resume(run_dir: Path, cfg: TrainConfig, device: str, log: Callable[[str], None]) -> Start:
    """The run at run_dir as its latest/ checkpoint left it, on its recorded data (cfg.data only
    where config.json names none). Raises ValueError when config.json or latest/ is missing."""
    run_cfg = runs.read_json(run_dir / RUN_CONFIG_FILE)
    latest = ckpt.latest_dir(run_dir)
    if not (run_cfg and isinstance(run_cfg.get("train"), dict) and latest.is_dir()):
        raise ValueError(f"cannot resume {cfg.name!r}: {run_dir} has no config.json "
                         "or latest/ checkpoint")
    model, tok, meta = ckpt.load(latest, device=device)
    start_iter = int(meta.get("iter", 0))
    best_val = meta.get("best_val_loss") or math.inf
    elapsed_s = float(meta.get("elapsed_s") or 0.0)
    src = run_cfg.get("data") or {}
    data = src.get("path") if src.get("name") == "file" else src.get("name", cfg.data)
    corpus = Corpus.load(data, tok, model.config.block_size, log=log)
    return Start(model, corpus, run_cfg, ckpt.load_optimizer_state(latest), start_iter, best_val,
                 elapsed_s, meta.get("val_loss"))


def save(folder: Path, run_dir: Path, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any],
         optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Save `model` as it is now (with the optimizer's state when given) to `folder`, a
    gpt.checkpoint layout folder of the run at run_dir; return its path. A write that fails raises
    RunWriteError saying so (and how much room it wanted on a full disk); ValueError (a folder that
    is not a checkpoint, meta that is not JSON) as ckpt.save raises it."""
    try:
        return Path(ckpt.save(folder, model, tokenizer, meta=meta, optimizer=optimizer))
    except ValueError:  # a folder that is not a checkpoint, meta that is not JSON: not a write
        raise
    except Exception as e:  # OSError, or how torch.save and safetensors report a full disk
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        raise write_failure(e, "the checkpoint", run_dir, weights * (3 if optimizer is not None else 1)) from e
