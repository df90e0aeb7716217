"""Importers for checkpoints written by other programs: nanoGPT's ckpt.pt and Hugging Face GPT-2.

Called by gpt.checkpoint.load, which detects the format; use that rather than these directly.
No code from a file ever runs: torch.load(weights_only=True) for tensors, and nanoGPT's meta.pkl
goes through `_NoClassUnpickler`, which refuses every class and function reference (a plain dict of
str / int / list needs none), so a pickle that would call os.system fails before anything runs.

A character-level nanoGPT model keeps its vocabulary in meta.pkl. It is looked for beside the
ckpt.pt, then where nanoGPT's own layout puts it (data/<dataset>/meta.pkl, the dataset read from
the checkpoint's config) under the out_dir and the folder above it; meta["load_note"] says where
it was found, and MissingTokenizerError says where it was looked for and which tokenizers could
stand in (`tokenizer_options`; the caller passes the one chosen as `tokenizer=`).

A Hugging Face GPT-2 folder of any size and vocabulary loads from safetensors only (a
pytorch_model.bin is a pickle: the refusal gives the one-liner that converts it). Its tokenizer
is the folder's tokenizer.json (gpt.hf_tokenizer, through the `tokenizers` library), else GPT-2's
BPE where the vocabulary is GPT-2's; anything else is refused, saying a tokenizer.json is needed.

Every loader takes `fits(config, source)`, called once the config is known and before any weights
are read (nanoGPT's ckpt.pt excepted: its config is inside the weights file), so a model too large
for the chosen device is refused first (gpt.devices.require_fits).
"""
from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

from typing import Callable

import torch

from gpt.weights import (MAX_JSON_BYTES, CheckpointError, build_model, check_shapes, file_problem,
                         load_state_dict_file, safetensors_shapes, size_words)
from gpt.config import GPTConfig
from gpt.model import GPT
from gpt.tokenizer import SHAKESPEARE_CHARS, CharTokenizer, GPT2Tokenizer, Tokenizer

NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper, kept in nanoGPT's saved keys
# causal-mask buffers of old nanoGPT / HF GPT-2. Anchored so that attn.c_attn.bias never matches.
MASK_BUFFER = re.compile(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)")
HF_CONV1D = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
HF_GELU = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
GPT2_VOCAB = 50257
GPT2_VOCABS = (GPT2_VOCAB, 50304)
MAX_TEXT_BYTES = 2 << 30  # a text file whose characters define a vocabulary  # GPT-2's, and nanoGPT's padded to a multiple of 64
Loaded = tuple[GPT, Tokenizer, dict[str, Any]]
Fits = Callable[[GPTConfig, Path], None]  # raises (gpt.devices.TooLargeError) when a config does not fit
BIN_TO_SAFETENSORS = (
    "python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('pytorch_model.bin', weights_only=True); "
    "save_file({k: v.contiguous().clone() for k, v in sd.items()}, 'model.safetensors')\"")


class MissingTokenizerError(CheckpointError):
    """A character-level ckpt.pt without its meta.pkl. `dataset`: the dataset its config names
    (None when it names none); `where`: where nanoGPT keeps that meta.pkl, in words."""

    def __init__(self, message: str, dataset: str | None, where: str, vocab_size: int = 0) -> None:
        super().__init__(message)
        self.dataset, self.where, self.vocab_size = dataset, where, vocab_size


# -- standing in for a missing meta.pkl ------------------------------------------------------------
def tokenizer_options(vocab_size: int) -> dict[str, str]:
    """{choice: label} of the tokenizers that can stand in for a missing meta.pkl of a model with
    `vocab_size` embedding rows ("shakespeare" only when that is 65, "gpt2" only from 50257)."""
    out = {}
    if vocab_size == len(SHAKESPEARE_CHARS):
        out["shakespeare"] = ("Tiny Shakespeare's 65 characters, sorted (the order nanoGPT's "
                              "shakespeare_char/prepare.py makes)")
    out["text"] = "the characters of a text file, sorted (as prepare.py builds them from its input.txt)"
    if vocab_size >= GPT2_VOCAB:
        out["gpt2"] = "GPT-2's BPE (50257 tokens)"
    return out


def missing_meta_reason(e: "MissingTokenizerError") -> str:
    """Why a choice is needed, in words, for a ckpt.pt whose meta.pkl was not found."""
    return (f"This checkpoint has no meta.pkl, so the order of its {e.vocab_size} characters is "
            "unknown: the model's token ids cannot be turned into text until you say which "
            "characters they are. Choose a tokenizer (wrong characters give garbled text, not an error).")


def chosen_tokenizer(choice: str, vocab_size: int | None = None, text_path: str | None = None) -> Tokenizer:
    """The tokenizer `choice` (a key of tokenizer_options) names; CheckpointError when it cannot
    be made, or cannot serve a model with `vocab_size` rows (a text file with more characters)."""
    if choice == "shakespeare":
        tok: Tokenizer = CharTokenizer(SHAKESPEARE_CHARS)
    elif choice == "gpt2":
        tok = GPT2Tokenizer()
    elif choice == "text":
        p = Path(text_path or "").expanduser()
        if not text_path or not p.is_file():
            raise CheckpointError(f"{text_path or '(no path)'}: type the path of a UTF-8 text file")
        if p.stat().st_size > MAX_TEXT_BYTES:
            raise CheckpointError(f"{p}: {size_words(p.stat().st_size)}, over the {size_words(MAX_TEXT_BYTES)} "
                                  "a vocabulary is read from")
        try:
            tok = CharTokenizer.from_text(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{p}: cannot be read as UTF-8 text ({e})") from None
    else:
        raise CheckpointError(f"unknown tokenizer choice {choice!r}; expected one of "
                              f"{sorted(tokenizer_options(vocab_size or GPT2_VOCAB))}")
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise CheckpointError(f"that tokenizer has {tok.vocab_size} tokens, more than this model's "
                              f"{vocab_size}; choose another")
    return tok


# -- nanoGPT ---------------------------------------------------------------------------------------
class _NoClassUnpickler(pickle.Unpickler):
    """Builds only pickle's built-in containers and scalars; any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: meta.pkl may only hold "
                                     "plain dicts, lists, strings and numbers")


def read_meta_pkl(path: Path) -> CharTokenizer:
    """A CharTokenizer from nanoGPT's meta.pkl ({'vocab_size', 'itos', 'stoi'}), in itos order."""
    size = path.stat().st_size
    if size == 0 or size > MAX_JSON_BYTES:  # a vocabulary is a few KB
        why = "empty (0 bytes)" if size == 0 else f"{size_words(size)}, too large for a vocabulary"
        raise CheckpointError(f"{path}: {why}; expected nanoGPT's meta.pkl")
    try:
        meta = _NoClassUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):  # our own refusal of a class: say which
            raise CheckpointError(f"{path}: not a plain nanoGPT meta.pkl ({e})") from None
        raise CheckpointError(f"{path}: {file_problem(path)}; expected nanoGPT's meta.pkl") from None
    except Exception:  # EOFError, ValueError, RecursionError ... on broken files
        raise CheckpointError(f"{path}: {file_problem(path)}; expected nanoGPT's meta.pkl") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))):
        raise CheckpointError(f"{path}: expected a dict with 'itos' mapping 0..n-1 to characters, "
                              "as nanoGPT's shakespeare_char/prepare.py writes")
    try:
        tok = CharTokenizer([itos[i] for i in range(len(itos))])
    except ValueError as e:
        raise CheckpointError(f"{path}: 'itos' is not a character vocabulary ({e})") from None
    stoi = meta.get("stoi")
    if stoi is not None and stoi != tok.stoi:
        raise CheckpointError(f"{path}: 'stoi' and 'itos' disagree")
    return tok


def _read_nanogpt(path: Path) -> dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses code; random bytes / truncation fail to parse
        raise CheckpointError(f"{path}: {file_problem(path, e)}") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) \
            or not isinstance(ck.get("model_args"), dict):
        keys = sorted(ck)[:10] if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{path}: not a nanoGPT checkpoint (needs 'model' and 'model_args'; "
                              f"found {keys})")
    return ck


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def load_nanogpt(path: Path, device: str | torch.device, dtype: torch.dtype,
                 tokenizer: Tokenizer | None = None, fits: Fits | None = None) -> Loaded:
    """nanoGPT's ckpt.pt: weights from 'model' ('_orig_mod.' stripped, mask buffers dropped),
    config from 'model_args' (activation "gelu"); tokenizer: `tokenizer` when given, else meta.pkl
    beside the file (or in data/<dataset>/), else GPT-2's when the vocabulary is GPT-2 sized (50257
    or more), else MissingTokenizerError (see tokenizer_options for what may stand in)."""
    ck = _read_nanogpt(path)
    args = ck["model_args"]
    args = {"bias": True, "dropout": 0.0, **args}  # nanoGPT before the bias flag: always biased
    missing = [k for k in NANOGPT_ARGS if k not in args]
    if missing:
        raise CheckpointError(f"{path}: model_args lacks {missing}")
    try:
        config = GPTConfig(**{k: _scalar(args[k]) for k in NANOGPT_ARGS}, activation="gelu")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model_args ({e})") from None
    if fits is not None:
        fits(config, path)
    sd = {}
    for k, v in ck["model"].items():
        k = k[len(COMPILED_PREFIX):] if k.startswith(COMPILED_PREFIX) else k
        if not MASK_BUFFER.fullmatch(k):
            sd[k] = v
    if all(isinstance(v, torch.Tensor) for v in sd.values()):  # (build_model names a non-tensor)
        check_shapes(config, {k: tuple(v.shape) for k, v in sd.items()}, path)  # before any question
    meta: dict[str, Any] = {"source_format": "nanogpt", "source": str(path)}
    meta_pkl, dataset = find_meta_pkl(path, ck)
    if tokenizer is None and meta_pkl is None and config.vocab_size < GPT2_VOCAB:
        # refused before the model is built: the caller asks the user and loads again
        where = f"data/{dataset}/meta.pkl" if dataset else "its dataset's meta.pkl"
        looked = f" or in {where} under {path.parent} and {path.parent.parent}" if dataset else ""
        raise MissingTokenizerError(
            f"{path}: vocab_size {config.vocab_size} is not GPT-2's, so this character model's "
            f"vocabulary is in nanoGPT's {where}; none was found beside {path.name}{looked}. "
            f"Put that meta.pkl beside {path.name}, or choose a tokenizer", dataset, where, config.vocab_size)
    model = build_model(config, sd, path, device, dtype)

    if tokenizer is not None:
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(f"{path}: the chosen tokenizer has {tokenizer.vocab_size} tokens, "
                                  f"more than the model's vocab_size {config.vocab_size}")
        meta["load_note"] = (f"The tokenizer was chosen by hand ({tokenizer.kind}, {tokenizer.vocab_size} "
                             "tokens)" + (f", not the meta.pkl at {meta_pkl}" if meta_pkl else
                                          ": this checkpoint came without its meta.pkl") + ".")
    elif meta_pkl is not None:
        tokenizer = read_meta_pkl(meta_pkl)
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(f"{meta_pkl}: {tokenizer.vocab_size} characters, but {path.name} "
                                  f"has vocab_size {config.vocab_size}; is it the right meta.pkl?")
        if meta_pkl.parent != path.parent:
            meta["load_note"] = f"The vocabulary is nanoGPT's meta.pkl found at {meta_pkl}."
        meta["meta_pkl"] = str(meta_pkl)
    else:  # vocab_size >= GPT2_VOCAB, checked above
        tokenizer = GPT2Tokenizer()
    if "iter_num" in ck:
        meta["iter"] = int(_scalar(ck["iter_num"]))
    if "best_val_loss" in ck:
        meta["best_val_loss"] = float(_scalar(ck["best_val_loss"]))
    return model, tokenizer, meta


def find_meta_pkl(path: Path, ck: dict[str, Any]) -> tuple[Path | None, str | None]:
    """(the meta.pkl for the ckpt.pt at `path`, or None; the dataset its config names, or None).
    Looked for beside it, then at data/<dataset>/meta.pkl under its folder and the one above
    (nanoGPT's train.py runs in the repo, writing out_dir/ckpt.pt beside data/)."""
    cfg = ck.get("config")
    dataset = cfg.get("dataset") if isinstance(cfg, dict) else None
    if not (isinstance(dataset, str) and dataset and Path(dataset).name == dataset
            and dataset not in (".", "..")):
        dataset = None  # a plain folder name only: nothing from the file may point elsewhere
    places = [path.parent / "meta.pkl"]
    if dataset:
        places += [base / "data" / dataset / "meta.pkl" for base in (path.parent, path.parent.parent)]
    return next((p for p in places if p.is_file()), None), dataset


def nanogpt_optimizer_state(path: Path) -> dict[str, Any] | None:
    """The 'optimizer' entry of a nanoGPT ckpt.pt, or None."""
    state = _read_nanogpt(path).get("optimizer")
    return state if isinstance(state, dict) else None


# -- Hugging Face GPT-2 ----------------------------------------------------------------------------
def _hf_config(folder: Path, info: dict[str, Any]) -> GPTConfig:
    src = folder / "config.json"
    if info.get("model_type") != "gpt2":
        raise CheckpointError(f"{src}: model_type {info.get('model_type')!r} is not supported; "
                              "only Hugging Face GPT-2 ('gpt2') folders can be imported")
    eps = info.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-12:
        raise CheckpointError(f"{src}: layer_norm_epsilon {eps} differs from the 1e-5 this model uses")
    act = info.get("activation_function", "gelu_new")
    if act not in HF_GELU:
        raise CheckpointError(f"{src}: activation_function {act!r} is not supported ({sorted(HF_GELU)})")
    n_embd = info.get("n_embd", 768)
    if info.get("n_inner") not in (None, 4 * n_embd):
        raise CheckpointError(f"{src}: n_inner {info['n_inner']} != 4 * n_embd is not supported")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if info.get(flag, want) != want:
            raise CheckpointError(f"{src}: {flag}={info[flag]} is not supported (needs {want})")
    vocab = info.get("vocab_size", GPT2_VOCAB)
    try:
        return GPTConfig(block_size=info.get("n_positions", info.get("n_ctx", 1024)), vocab_size=vocab,
                         n_layer=info.get("n_layer", 12), n_head=info.get("n_head", 12), n_embd=n_embd,
                         dropout=0.0, bias=True, activation=HF_GELU[act])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{src}: bad GPT-2 config ({e})") from None


def _hf_weight_files(folder: Path) -> tuple[list[Path], Path]:
    """(the safetensors files holding the weights, what to name in errors): model.safetensors, or
    the shards a model.safetensors.index.json lists. A folder with only pytorch_model.bin (a
    pickle, which nanolens never unpickles for a Hugging Face folder) is refused with the one-liner
    that converts it."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: {"weight_map": {key: shard file name}}
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: bad shard index ({e})") from None
        for s in shards:
            if not isinstance(s, str) or Path(s).name != s or not s.endswith(".safetensors"):
                raise CheckpointError(f"{index}: bad shard name {s!r}")  # no paths out of the folder
        return [folder / s for s in shards], index
    bins = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (folder / n).is_file()]
    if bins:
        raise CheckpointError(
            f"{folder}: has only {bins[0]}, a pickle file; nanolens reads Hugging Face weights from "
            f"safetensors only. Convert it once, in that folder: {BIN_TO_SAFETENSORS} (or, with "
            "transformers: GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder))")
    raise CheckpointError(f"{folder}: Hugging Face folder without model.safetensors")


def _hf_tokenizer(folder: Path, vocab: int) -> tuple[Tokenizer, str | None]:
    """(the folder's tokenizer, a note or None): tokenizer.json through the `tokenizers` library,
    else GPT-2's BPE when the vocabulary is GPT-2's, else CheckpointError asking for tokenizer.json."""
    from gpt.hf_tokenizer import HFTokenizer

    if (folder / "tokenizer.json").is_file():
        try:
            tok: Tokenizer = HFTokenizer.from_file(folder / "tokenizer.json")
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if tok.vocab_size > vocab:
            raise CheckpointError(f"{folder / 'tokenizer.json'}: {tok.vocab_size} tokens, more than the "
                                  f"model's vocab_size {vocab}; is it the right tokenizer.json?")
        return tok, None
    if vocab in GPT2_VOCABS:
        return GPT2Tokenizer(), "No tokenizer.json in the folder: using GPT-2's BPE, as the vocabulary is GPT-2's."
    raise CheckpointError(f"{folder / 'config.json'}: vocab_size {vocab} is not GPT-2's ({GPT2_VOCAB}) and "
                          "the folder has no tokenizer.json, so nothing says which text each token is; "
                          "put the model's tokenizer.json beside its config.json (save_pretrained of "
                          "its Hugging Face tokenizer writes one)")


def load_hf_gpt2(folder: Path, info: dict[str, Any], device: str | torch.device,
                 dtype: torch.dtype, fits: Fits | None = None) -> Loaded:
    """A Hugging Face GPT-2 folder (GPT2LMHeadModel or GPT2Model save; any size, any vocabulary;
    fp32 / fp16 / bf16 safetensors, sharded or not). Conv1D weights are stored (in, out), so they
    are transposed into nn.Linear's (out, in). The config, the tokenizer and `fits` are checked,
    and the safetensors headers read, before any tensor is."""
    config = _hf_config(folder, info)
    tokenizer, note = _hf_tokenizer(folder, config.vocab_size)
    files, src = _hf_weight_files(folder)
    for f in files:
        safetensors_shapes(f)  # empty / truncated / not safetensors, said before anything is read
    if fits is not None:
        fits(config, folder)
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        raw.update(load_state_dict_file(f))
    sd = {}
    for k, v in raw.items():
        if k != "lm_head.weight" and not k.startswith("transformer."):
            k = "transformer." + k  # GPT2Model saves have no prefix
        if MASK_BUFFER.fullmatch(k):
            continue
        sd[k] = v.t().contiguous() if HF_CONV1D.fullmatch(k) and v.dim() == 2 else v
    model = build_model(config, sd, src, device, dtype)
    meta = {"source_format": "hf-gpt2", "source": str(folder)}
    if note:
        meta["load_note"] = note
    return model, tokenizer, meta
