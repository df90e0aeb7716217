"""The Attention page's caches: the lazy per-layer attention of a prompt (gpt.attention_trace) and
the all-heads grid drawn from it, per (model, stamp, prompt, edit). Shared by sessions: read-only
(an AttentionTrace guards its own lazy work with a lock)."""
from __future__ import annotations

import streamlit as st

from app.inspection import Inspection, edit_key
from app.tracecache import TraceCache
from app.views import attention_long as val
from gpt.attention_trace import AttentionTrace

# an entry keeps each layer's input (T x C) and two layers' patterns: about 110 MB for GPT-2 small
# at T=1024, a few MB for the bundled model
ATTENTION_ENTRIES = 4


@st.cache_resource
def _attention_cache() -> TraceCache:
    return TraceCache(maxsize=ATTENTION_ENTRIES)


def _key(insp: Inspection) -> tuple:
    return (insp.loaded.ref, insp.loaded.stamp, insp.ids, edit_key(insp.edit))


def attention_trace(insp: Inspection) -> AttentionTrace:
    """The AttentionTrace of the Inspection's prompt under its edit (blocks run only as far as
    asked). Cached (LRU, ATTENTION_ENTRIES) by (model, stamp, ids, edit key)."""
    return _attention_cache().get(("trace", *_key(insp)),
                                  lambda: AttentionTrace(insp.model, insp.ids, insp.edit))


def attention_grid(insp: Inspection) -> tuple[bytes, int]:
    """The all-heads grid's composite PNG and its pixels per head (app.views.attention_long.grid_png
    of every layer's digest); runs the trace's second pass (AttentionTrace.digests) on first use.
    Cached with the trace."""
    return _attention_cache().get(("grid", *_key(insp)),
                                  lambda: val.grid_png(val.grid_levels(attention_trace(insp).digests(), insp.T)))


def clear() -> None:
    _attention_cache().clear()
    _attention_cache.clear()
