"""The model card: what a checkpoint is, in a dict and in markdown; and the Model page's words.
Pure: no Streamlit, no torch math.

model_card(config, tokenizer, meta, n_params, label) -> dict with the rows the Model page shows;
card_markdown(card) -> a markdown table of it; card_metrics(card, config) -> the numbers above it.
Values missing from `meta` (an imported nanoGPT or Hugging Face model has no val loss) show as
"—", never as a made-up number. typed_path, the help texts and upload_note: the choosing tabs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gpt.config import GPTConfig
from gpt.tokenizer import Tokenizer

MISSING = "—"
SOURCES = {"nanolens": "nanolens checkpoint", "nanogpt": "nanoGPT ckpt.pt", "hf-gpt2": "Hugging Face GPT-2"}


def human_count(n: int) -> str:
    """1234 -> "1.23K", 124439808 -> "124.44M" (parameters, tokens)."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _num(v: Any, fmt: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return MISSING
    return format(v, fmt)


def model_card(config: GPTConfig, tokenizer: Tokenizer, meta: dict[str, Any], n_params: int,
               label: str = "") -> dict[str, Any]:
    """Rows of the card, in display order: name, source, shape, parameters, tokenizer, training.

    n_params: every parameter counted once (tied lm_head/wte once), as GPT.get_num_params(False).
    """
    c = config
    tok = f"{tokenizer.kind}, {tokenizer.vocab_size:,} tokens"
    if c.vocab_size != tokenizer.vocab_size:
        tok += f" (embedding rows: {c.vocab_size:,})"
    val = meta.get("val_loss")
    if val is None:
        val = meta.get("best_val_loss")
    return {
        "Model": label or meta.get("run") or MISSING,
        "Source": SOURCES.get(meta.get("source_format", ""), meta.get("source_format") or MISSING),
        "Layers": c.n_layer,
        "Heads": c.n_head,
        "Embedding size": c.n_embd,
        "Head size": c.head_dim,
        "Context (block_size)": c.block_size,
        "Vocabulary": c.vocab_size,
        "Activation": c.activation,
        "Dropout (training)": c.dropout,
        "Parameters": f"{human_count(n_params)} ({n_params:,})",
        "Tokenizer": tok,
        "Iterations trained": _num(meta.get("iter"), ",d") if isinstance(meta.get("iter"), int) else MISSING,
        "Val loss": _num(val, ".4f"),
        "Train loss": _num(meta.get("train_loss"), ".4f"),
        "Saved at": meta.get("saved_at") or MISSING,
        "Path": meta.get("source") or MISSING,
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a two-column markdown table (| field | value |)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| Property | Value |", "|---|---|"]
    lines += [f"| **{cell(k)}** | {f'`{cell(v)}`' if k == 'Path' else cell(v)} |" for k, v in card.items()]
    return "\n".join(lines)


def card_metrics(card: dict[str, Any], config: GPTConfig) -> list[tuple[str, str]]:
    """(label, value) of the four numbers above the card: parameters (short form), layers × heads,
    iterations trained and val loss (as the card shows them)."""
    return [("Parameters", card["Parameters"].split(" ")[0]),
            ("Layers × heads", f"{config.n_layer} × {config.n_head}"),
            ("Iterations trained", card["Iterations trained"]), ("Val loss", card["Val loss"])]


# -- the Model page's choosing tabs --------------------------------------------------------------------
SOURCE_HELP = "latest: the last saved state; best: lowest val loss; iter N: a snapshot kept along the way."
PATH_PLACEHOLDER = "checkpoints/my-run, …/out/ckpt.pt, or a Hugging Face GPT-2 folder"
PATH_HELP = ("A nanolens checkpoint or run folder, a nanoGPT ckpt.pt (meta.pkl beside it for character "
             "models), or a Hugging Face GPT-2 folder (config.json + weights).")
NO_PATH = "Type the path of a checkpoint folder, a ckpt.pt or a Hugging Face folder."


def typed_path(raw: str | None) -> str | None:
    """The path typed in the path box, without surrounding blanks or double quotes and with ~
    expanded; None when nothing is typed."""
    raw = (raw or "").strip().strip('"')
    return str(Path(raw).expanduser()) if raw else None


def upload_help(clause: str) -> str:
    """The uploader's help: app.uploads.UPLOAD_HELP (a clause) as a sentence."""
    return clause[0].upper() + clause[1:] + "."


def upload_note(limit_mb: int, folder: Path | str, keep: int) -> str:
    """The caption under the uploader: the size limit, where uploads are kept, and that none runs."""
    return (f"Each file may be at most {limit_mb} MB; load a bigger checkpoint by its path. Uploads are "
            f"kept under `{folder}` (the newest {keep}). Nothing in a file is run as code.")


# -- the Model page's device and dtype ---------------------------------------------------------------
DEVICE_HELP = ("Where the model runs: cuda (the GPU) wherever there is one, else cpu. Recordings come back "
               "to the CPU in fp32 either way, so every page shows the same kind of numbers.")
DTYPE_HELP = ("The weights' precision. fp32 is exact; bf16 and fp16 (GPU only) halve the weights' memory "
              "and agree with fp32 to about 2-3 significant digits.")


def device_line(described: str, needs: str, free: str) -> str:
    """The line under the card: "**device: cuda (NVIDIA H200), bf16** · needs weights ...; 120.00 GiB free"."""
    return f"**{described}** · needs {needs}; {free} free there"


def estimate_line(needs: str) -> str:
    """The estimate for the picked device and dtype, before anything is loaded with them."""
    return f"With this choice the model needs {needs}."


def cpu_only_fp32(why: str) -> str:
    """Why the CPU offers fp32 alone (gpt.devices.CPU_ONLY_FP32, a clause)."""
    return why[0].upper() + why[1:] + "."
