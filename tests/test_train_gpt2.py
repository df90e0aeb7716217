"""The `gpt2` training preset and its data: nanoGPT's config/train_gpt2.py (checked against the
peer's own files when a nanoGPT checkout is there), GPT-2's vocabulary padded to 50304 as nanoGPT
pads it, biases switchable, the corpora in GPT-2 BPE (Tiny Shakespeare, python-docs, any .txt),
and grad accumulation divided over DDP processes or refused with the multiples to use."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.config import GPTConfig
from gpt.tokenizer import GPT2Tokenizer
from trainers import data as tdata
from trainers.config import PRESETS, TrainConfig, check_config, get_lr, padded_vocab
from trainers.data import Corpus
from trainers.train import build_parser, make_config
from trainers.trainer import Callbacks, Trainer

SHAKESPEARE_GPT2_TOKENS = 338_025  # tiktoken's GPT-2 encoding of the whole file, counted once


@pytest.fixture(autouse=True)
def env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


def literal(node: ast.expr) -> object:
    """A literal, or a product or sum of literals (`5 * 8`); ValueError for anything else."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add)):
        a, b = literal(node.left), literal(node.right)
        if not all(isinstance(v, (int, float)) for v in (a, b)):
            raise ValueError("not arithmetic on numbers")
        return a * b if isinstance(node.op, ast.Mult) else a + b  # type: ignore[operator]
    return ast.literal_eval(node)


def peer_settings() -> dict | None:
    """nanoGPT's train.py defaults overridden by config/train_gpt2.py, read as literals (no code
    of theirs runs), or None without a checkout ($NANOGPT_DIR, else the repo's .peer/)."""
    d = Path(os.environ.get("NANOGPT_DIR") or Path(__file__).resolve().parents[1] / ".peer")
    if not ((d / "train.py").is_file() and (d / "config" / "train_gpt2.py").is_file()):
        return None
    out: dict = {}
    for f in (d / "train.py", d / "config" / "train_gpt2.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    out[node.targets[0].id] = literal(node.value)
                except ValueError:  # not a literal (e.g. a device check): not a setting we compare
                    pass
    return out


def test_gpt2_preset_is_train_gpt2():
    c = PRESETS["gpt2"]
    m = c.model_config(padded_vocab(GPT2Tokenizer().vocab_size, c.tokenizer))
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size) == (12, 12, 768, 1024, 50304)
    assert (m.bias, m.dropout, m.activation) == (False, 0.0, "gelu")  # nanoGPT's exact GELU
    assert (c.batch_size, c.grad_accum, c.tokenizer) == (12, 40, "gpt2")
    assert (c.learning_rate, c.min_lr, c.warmup_iters, c.max_iters, c.decay_iters) == (6e-4, 6e-5, 2000, 600_000, 600_000)
    assert (c.weight_decay, c.beta1, c.beta2, c.grad_clip) == (0.1, 0.9, 0.95, 1.0)
    assert get_lr(1999, c) == pytest.approx(6e-4 * 2000 / 2001) and get_lr(600_000, c) == 6e-5
    # 124M parameters as nanoGPT counts them (without the position embeddings): the tied
    # embedding, then per layer 12 C^2 of matmuls and two LayerNorm gains, then ln_f's gain
    from gpt.model import GPT
    V, C, L = 50304, 768, 12
    with torch.device("meta"):  # shapes only
        assert GPT(m).get_num_params() == V * C + L * (12 * C * C + 2 * C) + C == 123_587_328
    peer = peer_settings()
    if peer is None:
        pytest.skip("no nanoGPT checkout ($NANOGPT_DIR or .peer/): compared with the numbers above only")
    mine = dict(batch_size=c.batch_size, gradient_accumulation_steps=c.grad_accum, max_iters=c.max_iters,
                lr_decay_iters=c.decay_iters, learning_rate=c.learning_rate, min_lr=c.min_lr,
                warmup_iters=c.warmup_iters, weight_decay=c.weight_decay, beta1=c.beta1, beta2=c.beta2,
                grad_clip=c.grad_clip, eval_interval=c.eval_interval, eval_iters=c.eval_iters,
                log_interval=c.log_interval, block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head,
                n_embd=m.n_embd, dropout=m.dropout, bias=m.bias)
    assert mine == {k: peer[k] for k in mine}


def test_padded_vocab_only_for_gpt2():
    assert padded_vocab(50257, "gpt2") == 50304 and padded_vocab(50304, "gpt2") == 50304
    assert padded_vocab(65, "char") == 65 and padded_vocab(1, "gpt2") == 64
    # the GPTConfig preset "gpt2" stays Hugging Face's GPT-2 (what its weights need)
    hf = GPTConfig.preset("gpt2")
    assert (hf.vocab_size, hf.bias, hf.activation) == (50257, True, "gelu_tanh")


def test_bias_flag_and_preset_through_the_cli():
    args = build_parser().parse_args(["--preset", "gpt2", "--data", "python-docs", "--bias"])
    cfg = make_config(args, 1, 0)
    assert cfg.bias is True and cfg.tokenizer == "gpt2" and cfg.model_config(50304).bias is True
    args = build_parser().parse_args(["--preset", "baby", "--data", "python-docs", "--no-bias"])
    assert make_config(args, 1, 0).model_config(65).bias is False
    args = build_parser().parse_args(["--preset", "baby", "--data", "python-docs"])
    assert make_config(args, 1, 0).model_config(65).bias is True  # the preset's (GPTConfig's default)


def test_grad_accum_divided_over_processes_or_refused(tmp_path):
    cfg = TrainConfig.from_preset("gpt2", data="python-docs", name="x", root=str(tmp_path), device="cpu",
                                  n_layer=1, n_embd=32, n_head=2, block_size=32)
    check_config(cfg, world_size=8)  # 40 = 5 micro steps on each of 8 GPUs, as nanoGPT
    with pytest.raises(ValueError, match=r"--grad-accum \(40\) must be a multiple of the number of "
                                         r"processes \(3\); try --grad-accum 39 or 42"):
        check_config(cfg, world_size=3)


def test_gpt2_corpora_offline(tmp_path):
    tok = GPT2Tokenizer()
    docs = Corpus.load("python-docs", "gpt2", 1024)
    assert docs.source["tokenizer"] == "gpt2" and docs.source["tokens"] > 50_000
    assert tok.decode(docs.train[:200].tolist()) == tdata.python_docs_text()[:len(tok.decode(docs.train[:200].tolist()))]
    text = "To be, or not to be: that is the question.\n" * 40
    f = tmp_path / "mine.txt"
    f.write_text(text, encoding="utf-8")
    c = Corpus.load(str(f), "gpt2", 8)
    assert tok.decode(torch.cat([c.train, c.val]).tolist()) == text  # every token, split 90/10
    assert len(c.train) == int(c.source["tokens"] * 0.9)
    if tdata._cached_shakespeare() is None:
        pytest.skip("Tiny Shakespeare is not available offline here (../shared/data)")
    sh = Corpus.load("shakespeare", "gpt2", 1024)
    assert sh.source["tokens"] == SHAKESPEARE_GPT2_TOKENS and sh.source["name"] == "shakespeare"
    assert tok.decode(sh.val[:5].tolist()) + "x" != "x"


def test_gpt2_run_trains_a_padded_model_without_biases(tmp_path):
    cfg = TrainConfig.from_preset("gpt2", data="python-docs", name="g2", root=str(tmp_path), device="cpu",
                                  n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=2, grad_accum=1,
                                  max_iters=3, eval_interval=3, eval_iters=1, log_interval=1, threads=1,
                                  warmup_iters=1, snapshots=False)
    st = Trainer(cfg, callbacks=Callbacks(on_message=lambda m: None)).fit()
    assert st["state"] == "finished" and st["iter"] == 3
    model, tok, meta = ckpt.load(tmp_path / "g2")
    assert model.config.vocab_size == 50304 and tok.vocab_size == 50257 and model.config.bias is False
    assert all(b is None for b in (model.lm_head.bias, model.transformer.ln_f.bias))
    logits, _ = model(torch.tensor([tok.encode("Hello world")]))
    assert logits.shape == (1, 1, 50304) and torch.isfinite(logits).all()
