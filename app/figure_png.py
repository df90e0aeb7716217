"""Altair / Vega-Lite charts as PNG bytes, made on the server.

Streamlit turns off Vega-Embed's actions menu, so a browser cannot save an Altair chart the app
shows (Plotly figures keep their own modebar button). This renders the chart's Vega-Lite spec with
vl-convert (the engine Altair's own chart.save("x.png") uses), which carries Vega, Vega-Lite and its
font handling inside its binary: nothing is fetched. External data is refused as well
(allowed_base_urls=[]): every chart here carries its data inline.

Pure: no Streamlit, no caches. The download button that calls this only when clicked is
app.components.png_button.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import pandas as pd

WIDTH = 760  # px, for a chart drawn at the page's width ("stretch"), which has no width of its own
SCALE = 2.0  # pixels per CSS pixel: sharp on a high-density screen and in a slide


def spec_of(chart: Any, data: pd.DataFrame | None = None, width: int = WIDTH) -> dict[str, Any]:
    """The chart's Vega-Lite spec (a copy) sized for a PNG: `width` where it has none (or the
    container's), and autosize "fit" including the padding, so the image is exactly width x height
    CSS pixels. chart: an Altair chart (alt.Chart, LayerChart, ...) or a spec dict; `data` is the
    frame passed beside a spec dict (st.vega_lite_chart(data, spec)), put inline."""
    if isinstance(chart, Mapping):
        spec = copy.deepcopy(dict(chart))
    elif hasattr(chart, "to_dict"):
        spec = chart.to_dict()  # a fresh dict: the chart on the page keeps its own
    else:
        raise TypeError(f"cannot draw a {type(chart).__name__} as PNG: pass an Altair chart or a Vega-Lite spec dict")
    if data is not None:
        spec["data"] = {"values": data.to_dict(orient="records")}
    if not isinstance(spec.get("width"), (int, float)):  # missing, or "container"
        spec["width"] = int(width)
    if not isinstance(spec.get("height"), (int, float)):
        spec["height"] = 300  # Vega-Lite's own default step-less height
    spec["autosize"] = {"type": "fit", "contains": "padding"}
    spec.setdefault("background", "white")  # a transparent PNG reads badly in dark viewers
    return spec


def to_png(chart: Any, data: pd.DataFrame | None = None, width: int = WIDTH, scale: float = SCALE) -> bytes:
    """PNG bytes of the chart (see spec_of), `scale` pixels per CSS pixel: the image is
    (width * scale) x (height * scale). ValueError saying why when Vega-Lite cannot draw it (an
    external data URL is refused: no network)."""
    import vl_convert as vlc  # imported on first use: its engine costs a moment to start

    spec = spec_of(chart, data, width)
    try:
        return vlc.vegalite_to_png(spec, scale=float(scale), allowed_base_urls=[])
    except ValueError as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[:2] if line.strip())  # the JS stack after is noise
        raise ValueError(f"the chart cannot be drawn as PNG: {why[:300]}") from None
