"""Deep links: the URL's query parameters `model`, `prompt`, `layer`, `head` and `pos` carry the view,
so a copied link reopens it.

- read: at the start of every run, before any widget, main.py calls `apply(st.query_params,
  st.session_state)`. Parameters that differ from the ones last applied or written are checked and
  put into session_state: model (anything the Model page's path box takes: a run folder, a
  checkpoint folder, a ckpt.pt, a Hugging Face folder; relative paths are tried from the working
  directory and from the repository), prompt (it must run on that model as typed), layer and head
  (in range for that model) and pos (a token position of that prompt; the position the Attention,
  Next-token and Attribution pages open). A bad or stale parameter is left out and the default kept,
  with a note saying which and why; nothing here raises.
- write: after the page ran, `sync` puts the session's current model, prompt, layer, head and the
  page's position back into the URL (only when they changed), and `link` builds the URL to copy.

`check` is the pure core (no Streamlit), for tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, MutableMapping
from urllib.parse import urlencode

from app import state

PARAMS = ("model", "prompt", "layer", "head", "pos")
SEEN = "_deeplink_seen"  # session_state: the parameters last applied or written
NOTES = "_deeplink_notes"  # session_state: notes about the parameters just applied (shown once)
# the pages that open at a position: url_path -> (their position key, the key of the ids it belongs to)
POS_KEYS = {"attention": ("attn_query", "_attn_ids"), "next-token": ("nt_pos", "_nt_ids"),
            "attribution": ("attr_pos", "_attr_ids")}
MAX_PROMPT = 4000  # longer prompts stay out of the URL (browsers and proxies cut long URLs)


@dataclass
class Checked:
    """What a link's parameters mean for a model: the values to use (only the good ones) and a note
    per bad one."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _int(raw: str, what: str, n: int | None, notes: list[str], where: str) -> int | None:
    try:
        i = int(str(raw).strip())
    except ValueError:
        notes.append(f"`{what}={raw[:40]!r}` is not a whole number; showing {what} 0.")
        return None
    if n is not None and not 0 <= i < n:
        notes.append(f"`{what}={i}` is outside {where} (0…{n - 1}); showing {what} 0.")
        return None
    return i


def resolve_model(raw: str) -> str | None:
    """The checkpoint path a link's `model` names (as the Model page's path box reads it), trying a
    relative path from the working directory, then from the repository; None when nothing is there."""
    from app.catalog import REPO
    from app.views.model_card import typed_path

    path = typed_path(raw)
    if path is None:
        return None
    p = Path(path)
    for cand in ([p] if p.is_absolute() else [p, REPO / p]):
        if cand.exists():
            return str(cand.resolve()) if not p.is_absolute() else str(cand)
    return None


def check(params: Mapping[str, str], load: Callable[[str], Any], current: Any,
          encode: Callable[[Any, str], tuple[tuple[int, ...] | None, str | None]], prompt: str | None = None
          ) -> Checked:
    """The link's parameters checked in order: model (load(ref) -> the Loaded, raising on failure;
    `current` is the model kept when it fails), prompt (encode(loaded, text) -> (ids, None) or
    (None, why)), then layer, head and pos against that model and prompt (the link's, else `prompt`,
    the session's). Never raises."""
    out = Checked()
    notes = out.notes
    loaded = current
    if "model" in params:
        raw = params["model"]
        ref = resolve_model(raw)
        try:
            if ref is None:
                raise ValueError("there is no file or folder at that path")
            loaded = load(ref)
            out.values["model"] = ref
        except Exception as e:  # noqa: BLE001 (any failure to load is a note, never a crash)
            notes.append(f"`model={raw[:200]!r}` cannot be loaded ({str(e)[:300]}); showing the current model.")
    if loaded is None:
        if any(k in params for k in PARAMS if k != "model"):
            notes.append("No model is loaded, so the link's prompt, layer, head and position are ignored.")
        return out
    ids = None
    if "prompt" in params:
        ids, why = encode(loaded, params["prompt"])
        if ids is None:
            notes.append(f"The link's prompt cannot be used with this model: {why} Showing the default prompt.")
        else:
            out.values["prompt"] = params["prompt"]
    cfg = loaded.config
    for key, n, where in (("layer", cfg.n_layer, "this model's layers"), ("head", cfg.n_head, "this model's heads")):
        if key in params and (i := _int(params[key], key, n, notes, where)) is not None:
            out.values[key] = i
    if "pos" in params:
        if ids is None:  # no usable prompt in the link: a position of the session's prompt
            ids, _ = encode(loaded, prompt) if prompt else (None, None)
        if ids is None:
            notes.append("The link's `pos` is ignored: there is no prompt it could point into.")
        elif (i := _int(params["pos"], "pos", len(ids), notes, "the prompt's tokens")) is not None:
            out.values["pos"] = i
            out.values["ids"] = ids
    return out


def apply(params: Mapping[str, str], ss: MutableMapping[str, Any]) -> list[str]:
    """Put the link's parameters into session_state `ss` when they changed since last applied or
    written (module docstring); returns the notes about bad ones (also kept in ss[NOTES])."""
    got = {k: str(params[k]) for k in PARAMS if k in params}
    if not got or got == ss.get(SEEN):
        return []
    ss[SEEN] = got
    from app import resources

    def encode(loaded: Any, text: str) -> tuple[tuple[int, ...] | None, str | None]:
        p = resources.prompt_ids(loaded, text)
        if not p.ok or p.dropped_chars or p.truncated:
            return None, p.message or "it is empty."
        return tuple(int(i) for i in p.ids), None

    try:
        current = resources.load_model(ss[state.MODEL_REF]) if ss.get(state.MODEL_REF) else None
    except Exception:  # noqa: BLE001 (the current model is unreadable: the link's model may do)
        current = None
    c = check(got, resources.load_model, current, encode, ss.get(state.PROMPT))
    v = c.values
    if "model" in v:
        ss[state.MODEL_REF] = v["model"]
    for key, skey in (("prompt", state.PROMPT), ("layer", state.LAYER), ("head", state.HEAD)):
        if key in v:
            ss[skey] = v[key]
    if "pos" in v:
        mark = None if v.get("ids") is None else hash(tuple(v["ids"]))
        for pos_key, ids_key in POS_KEYS.values():
            ss[pos_key] = v["pos"]
            if mark is not None:
                ss[ids_key] = mark  # the page keeps a position set for these very ids
    ss[NOTES] = c.notes
    return c.notes


def current(ss: Mapping[str, Any], page: str | None) -> dict[str, str]:
    """The parameters of the view the session shows now on `page` (its url_path)."""
    out: dict[str, str] = {}
    if ss.get(state.MODEL_REF):
        out["model"] = str(ss[state.MODEL_REF])
    prompt = ss.get(state.PROMPT)
    if isinstance(prompt, str) and prompt and len(prompt) <= MAX_PROMPT:
        out["prompt"] = prompt
    for key, skey in (("layer", state.LAYER), ("head", state.HEAD)):
        if isinstance(ss.get(skey), int):
            out[key] = str(ss[skey])
    pos_key = POS_KEYS.get(page or "", (None,))[0]
    if pos_key is not None and isinstance(ss.get(pos_key), int):
        out["pos"] = str(ss[pos_key])
    return out


def sync(query_params: Any, ss: MutableMapping[str, Any], page: str | None) -> dict[str, str]:
    """Write the current view into the URL when it differs from what is there; returns it."""
    now = current(ss, page)
    if {k: query_params.get(k) for k in query_params} != now:
        query_params.from_dict(now)
    ss[SEEN] = now
    return now


def link(url: str, page: str | None, params: Mapping[str, str], pages: Iterable[str] = ()) -> str:
    """The URL to copy: the app's root (`url`, the browser's URL, without its page path when it is one
    of `pages`), the page's path, and the parameters."""
    root = url.split("?")[0].split("#")[0].rstrip("/")
    for known in pages:
        if known and root.endswith("/" + known):
            root = root[: -len(known) - 1]
            break
    path = f"{root}/{page}" if page else root
    return f"{path}?{urlencode(dict(params))}" if params else path
