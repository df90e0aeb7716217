"""The one decoder of click and selection events from Streamlit charts and tables.

st.vega_lite_chart / st.altair_chart / st.plotly_chart / st.dataframe with on_select report a
selection as {"selection": {<name>: [...]}}: the return value of the call, or what
st.session_state[key] holds in the on_select callback (a dict, or an object with attributes).
`last_selected` unwraps any of those forms to the last selected item; the pages' own pickers
(attention grid, history chart, walkthrough diagram, head table) then read their fields from it.
Pure: no Streamlit import.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def _inner(x: Any, key: str) -> Any:
    return x.get(key) if isinstance(x, Mapping) else getattr(x, key, None)


def last_selected(event: Any, name: str) -> Any:
    """The last item selected under `name` ("points", "rows", or a chart's selection parameter) in
    `event`: the event itself, its .selection, or the item list. A single point given as a dict
    counts as a list of one. None when nothing is selected (no click yet, a cleared selection)."""
    items: Any = event
    for key in ("selection", name):  # unwrap event -> selection -> items, where wrapped
        inner = _inner(items, key) if items is not None else None
        if inner is not None:
            items = inner
    if isinstance(items, Mapping):  # a single point; an empty mapping is an empty selection
        items = [items] if items else []
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        return None
    return items[-1]


def int_fields(item: Any, *fields: str) -> tuple[int, ...] | None:
    """The integer `fields` of a selected point ({"layer": 1, "head": 2} -> (1, 2)); None when the
    item is not a mapping or a field is missing or not a number."""
    if not isinstance(item, Mapping):
        return None
    try:
        return tuple(int(item[f]) for f in fields)
    except (KeyError, TypeError, ValueError):
        return None
