"""app/figure_png.py: the app's own Altair charts (the Timeline's history and analysis curves) become
valid PNGs of the chart's size, drawn (not blank), without touching the chart the page shows; a
Vega-Lite spec dict with its data beside it works too, and external data is refused (no network)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("vl_convert")
from PIL import Image  # noqa: E402

from app import figure_png  # noqa: E402
from app.views import score_history as vs  # noqa: E402
from app.views import timeline as vt  # noqa: E402

ITERS = [0, 10, 25, 50]


def decode(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(png))
    im.load()  # decodes every pixel: a truncated file raises here
    return im.convert("RGB")


def ink(im: Image.Image) -> float:
    """The fraction of pixels that are not the white background."""
    a = np.asarray(im).astype(int)
    return float((np.abs(a - 255).sum(-1) > 30).mean())


def coloured(im: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels are close to `rgb`."""
    a = np.asarray(im).astype(int)
    return int((np.abs(a - np.array(rgb)).sum(-1) < tol).sum())


def history_chart():
    g = torch.Generator().manual_seed(0)
    scores = [(it, {"prev_token": torch.rand(2, 3, generator=g), "entropy": torch.rand(2, 3, generator=g)})
              for it in ITERS]
    return vt.history_chart(vt.history_frame(scores, "prev_token"), "prev_token", selected="L1H2", height=280)


def test_history_chart_is_a_png_of_its_size_and_drawn() -> None:
    chart = history_chart()
    before = chart.to_dict()
    im = decode(figure_png.to_png(chart, width=600, scale=2))
    assert im.size == (1200, 560)  # width x height (the chart's 280), twice: autosize fits the padding in
    assert 0.01 < ink(im) < 0.6  # lines, axes and labels on white
    assert coloured(im, (31, 119, 180)) > 200  # category10's blue: the layer L0 lines are drawn
    assert chart.to_dict() == before  # the page's chart (its selection param) is untouched


def test_analysis_curves_with_marker_bands_draw_the_band_colour() -> None:
    values = 0.02 * torch.rand(len(ITERS), 2, 2, generator=torch.Generator().manual_seed(1))
    values[2:, 1, 1] += 0.3  # L1H1 jumps between snapshot 1 and 2: a phase-change band
    marks = vs.markers_for(ITERS, values, "prev_token")
    assert marks.shown and marks.shown[0].head == (1, 1)
    chart = vs.curves_chart(vs.curves_frame(ITERS, values, selected="L1H1"), "prev_token", ITERS,
                            vs.marker_frame(marks.shown, ITERS), height=300)
    im = decode(figure_png.to_png(chart))
    assert im.size == (figure_png.WIDTH * 2, 600)  # the default width, at the default scale 2
    # the score band: #f28e2b at opacity 0.16 over white is about (254, 239, 226)
    assert coloured(im, (254, 239, 226), tol=12) > 1000


def test_a_spec_dict_with_data_beside_it() -> None:
    import pandas as pd

    spec = {"mark": "rect", "encoding": {"x": {"field": "h", "type": "ordinal"}, "y": {"field": "l", "type": "ordinal"},
                                         "color": {"field": "v", "type": "quantitative"}}, "height": 120}
    frame = pd.DataFrame({"h": [0, 1, 0, 1], "l": [0, 0, 1, 1], "v": [0.0, 0.3, 0.6, 1.0]})
    im = decode(figure_png.to_png(spec, data=frame, width=200, scale=1))
    assert im.size == (200, 120)
    assert ink(im) > 0.2  # four filled cells
    assert "data" not in spec and spec["height"] == 120  # the caller's spec is not changed


def test_external_data_and_non_charts_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="cannot be drawn as PNG.*not allowed"):
        figure_png.to_png({"data": {"url": "https://example.com/x.json"}, "mark": "point"})
    with pytest.raises(TypeError, match="pass an Altair chart or a Vega-Lite spec dict"):
        figure_png.to_png(object())


def test_the_attention_grid_spec_renders_its_image_and_overlay() -> None:
    """The Attention page's all-heads grid (a Vega-Lite spec over a data: PNG, with a click selection)
    becomes a PNG holding the thumbnails' blues and the open head's outline, without network."""
    from app.views import attention_long as val

    L, H, S = 2, 3, 8
    levels = np.zeros((L, H, S, S), dtype=np.uint8)
    levels[:, :, np.arange(S), np.arange(S)] = 255  # a bright diagonal in every head
    png, px = val.grid_png(levels)
    spec = val.grid_image_spec(png, L, H, px, selected=(1, 2), summary={"prev": torch.rand(L, H)})
    before = json.dumps(spec, sort_keys=True)
    im = decode(figure_png.to_png(spec, scale=1))
    dark = np.array(val.lut()[255])  # the thumbnails' darkest blue
    assert coloured(im, tuple(int(c) for c in dark)) >= L * H * px  # every diagonal is drawn
    assert json.dumps(spec, sort_keys=True) == before and val.GRID_PARAM in before  # the page's chart is untouched
