"""The inspection pages' pure view functions (app/views/attention, layers, tokens, generate), called
without Streamlit. Every figure is re-validated by plotly (the views build them unvalidated for
speed) and its numbers are checked against the tensors they came from."""
from __future__ import annotations

import math
import re

import plotly.graph_objects as go
import pytest
import torch

from app import generation as ag
from app.inspection import Inspection, Loaded
from app.views import attention as va
from app.views import generate as vg
from app.views import layers as vl
from app.views import tokens as vt
from gpt.analysis import logit_lens
from gpt.config import GPTConfig
from gpt.generate import Generator
from gpt.heads import prompt_head_scores
from gpt.model import GPT
from gpt.record import Recorder
from gpt.tokenizer import CharTokenizer

torch.set_num_threads(1)
TOK = CharTokenizer(list("\n !$&',-.:;?*_<>abcdefghijklmnopqrstuvwxyz"))


def valid(fig: go.Figure) -> go.Figure:
    """Strict plotly validation of a figure built with light_figure (raises on any bad property);
    returns the figure itself, whose arrays are still plain numpy."""
    go.Figure(fig.to_dict())
    return fig


def arr(v) -> torch.Tensor:
    """A figure array (numpy, nested lists with None for gaps) as a float32 tensor (None -> nan)."""
    if hasattr(v, "dtype"):
        return torch.as_tensor(v.astype("float32"))
    return torch.tensor([[float("nan") if x is None else x for x in row] for row in v], dtype=torch.float32)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=TOK.vocab_size)).eval()


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return TOK.encode("to be, or not to be: that is the question")[:32]


def record(model: GPT, ids: list[int], names) -> Recorder:
    rec = Recorder(list(names))
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec)
    return rec


def inspection(model: GPT, ids: list[int], names, layer: int = 0, head: int = 0) -> Inspection:
    """An Inspection of a fresh recording of `names`, as the pages get one (no Streamlit)."""
    loaded = Loaded(model=model, tokenizer=TOK, meta={}, ref="test", label="test", config=model.config)
    return Inspection.of(loaded, tuple(ids), record(model, ids, names), tuple(names), layer, head)


def causal(T: int, L: int = 2, H: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(L, H, T, T, generator=g).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1)  # (L, H, T, T)


# -- tokens -----------------------------------------------------------------------------------------
def test_unique_labels_distinguish_repeated_tokens() -> None:
    labels = vt.unique_labels(["a", "·", "a", "a"])
    assert labels == ["0:a", "1:·", "2:a", "3:a"]
    assert len(set(vt.unique_labels(["x"] * 300))) == 300


@pytest.mark.parametrize("text", ["<script>alert(1)</script>", "*bold* _it_", "$x^2$", ":red[hi]", "a&b\"'", "`c`"])
def test_esc_leaves_no_markup(text: str) -> None:
    out = vt.esc(text)
    assert not re.search(r"[<>*_$:`&\"'\[\]]", re.sub(r"&#\d+;", "", out)), out
    import html
    assert html.unescape(out) == text  # the browser shows exactly the token text


def test_md_label_escapes_markdown_punctuation() -> None:
    assert vt.md_label("*a*") == r"\*a\*"
    assert vt.md_label(":red[x]") == r"\:red\[x\]"
    assert vt.md_label("·the") == "·the"


def test_prob_color_runs_from_red_to_green() -> None:
    def rgb(p: float) -> tuple[int, ...]:
        return tuple(int(v) for v in re.findall(r"\d+", vt.prob_color(p)))
    low, mid, high = rgb(1e-6), rgb(0.01), rgb(1.0)
    assert low[0] > low[1] and high[1] > high[0]  # reddish, then greenish
    assert rgb(1e-6) == rgb(1e-4)  # everything below the floor looks the same
    assert mid != low and mid != high


def test_surprise_html_one_span_per_token_with_probabilities() -> None:
    out = vt.surprise_html(["a", "<", "c"], [None, 0.5, 0.001])
    assert out.count("<span") == 3
    assert "first token" in out and "p=0.5000" in out and "9.97 bits" in out
    assert "<<" not in out and "&#60;" in out  # the token "<" is escaped
    with pytest.raises(ValueError, match="probabilities"):
        vt.surprise_html(["a"], [None, 0.1])
    assert vt.surprise_legend_html().count("<span") >= 6


def test_attention_html_fades_masked_tokens_and_marks_the_query() -> None:
    out = vt.attention_html(["a", "b", "c", "d"], torch.tensor([0.2, 0.8, 0.0, 0.0]), 1)
    spans = out.split("<span")[1:]
    assert "masked" in spans[2] and "masked" in spans[3]
    assert "outline" in spans[1] and "attention=0.8000" in spans[1]


def test_distribution_figure_marks_the_chosen_bar() -> None:
    fig = valid(vt.distribution_figure(["x", "y", "z"], [0.5, 0.3, 0.2], chosen=1, highlight_label="drawn"))
    bar = fig.data[0]
    assert list(bar.x) == [0.5, 0.3, 0.2]
    assert bar.marker.color[1] != bar.marker.color[0] == bar.marker.color[2]
    assert "drawn" in bar.text[1] and "drawn" not in bar.text[0]
    with pytest.raises(ValueError):
        vt.distribution_figure(["x"], [0.5, 0.5])


def test_distribution_at_matches_softmax_and_finds_the_actual_token() -> None:
    logits = torch.tensor([[[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]]])  # (1, T=2, V=4)
    ids = [1, 2]
    top, probs, actual = vt.distribution_at(logits, ids, 0, temperature=1.0, k=3)
    want = torch.softmax(logits[0, 0], -1)
    assert top == [1, 2, 0]
    assert probs == pytest.approx(want[[1, 2, 0]].tolist())
    assert actual == 1  # ids[1] == 2 is the second most likely
    _, cold, _ = vt.distribution_at(logits, ids, 0, temperature=0.5, k=3)
    assert cold[0] > probs[0]  # a lower temperature sharpens
    assert vt.distribution_at(logits, ids, 1, 1.0, 2)[2] is None  # last position: no next token


def test_build_next_token(model: GPT, ids: list[int]) -> None:
    insp = inspection(model, ids, vt.NAMES)
    rec = insp.rec
    view = vt.build_next_token(insp, pos=3, temperature=1.0, k=5)
    assert view.strip.count("<span") == len(ids)
    p = torch.softmax(rec["logits"][0, :-1], -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    assert view.surprise_bits == pytest.approx((-torch.log2(p)).tolist(), rel=1e-4)
    assert view.mean_bits == pytest.approx(sum(view.surprise_bits) / len(view.surprise_bits))
    fig = valid(view.distribution)
    assert len(fig.data[0].x) == 5 and [t for t, _ in view.top] == [s.split(". ", 1)[1] for s in fig.data[0].y]


# -- attention --------------------------------------------------------------------------------------
def test_pattern_and_scores_figures_carry_values_and_labels() -> None:
    pat = causal(4)[0, 0]
    labels = vt.unique_labels(list("abca"))
    fig = valid(va.pattern_figure(pat, labels))
    assert list(fig.data[0].x) == labels and list(fig.data[0].y) == labels
    torch.testing.assert_close(arr(fig.data[0].z), pat)
    scores = torch.log(pat)  # -inf above the diagonal
    sfig = valid(va.scores_figure(scores, labels))
    z = arr(sfig.data[0].z)
    assert torch.isnan(z[0, 1]) and not torch.isnan(z[1, 0])
    assert sfig.data[0].zmin == -sfig.data[0].zmax  # symmetric around 0
    with pytest.raises(ValueError, match="labels"):
        va.pattern_figure(pat, labels[:3])


def test_grid_side_limits_cells() -> None:
    assert va.grid_side(10, 4) == 10  # small prompts are not pooled
    assert va.grid_side(256, 36) <= va.GRID_MAX_SIDE
    assert 36 * va.grid_side(256, 36) ** 2 <= va.GRID_MAX_CELLS
    assert 144 * va.grid_side(1024, 144) ** 2 <= va.GRID_MAX_CELLS  # GPT-2: 12 x 12 heads


def test_grid_frame_places_each_head_in_its_block() -> None:
    pat = causal(6, L=2, H=3)
    frame = va.grid_frame(pat, side=3)
    assert len(frame) == 2 * 3 * 3 * 3
    block = 1 + va.GAP
    for (l, h), cells in frame.groupby(["layer", "head"]):
        assert cells.x0.min() == pytest.approx(h * block) and cells.x0.max() < h * block + 1
        assert cells.y0.min() == pytest.approx(l * block) and cells.y0.max() < l * block + 1
        assert cells.shade.max() == pytest.approx(1.0)
        assert cells.value.mean() == pytest.approx(float(pat[l, h].mean()), rel=1e-5)


def test_grid_spec_is_valid_vega_lite_with_the_selection() -> None:
    import altair as alt

    spec = va.grid_spec(2, 3, side=4, selected=(1, 2))
    alt.LayerChart.from_dict({**spec, "data": {"name": "cells"}}, validate=True)  # raises if invalid
    params = spec["layer"][0]["params"]
    assert params[0]["name"] == va.GRID_PARAM and params[0]["select"]["fields"] == ["layer", "head"]
    assert len(spec["layer"]) == 4  # cells, head labels, layer labels, outline
    assert len(va.grid_spec(2, 3, side=4)["layer"]) == 3


@pytest.mark.parametrize("event, want", [
    ({"selection": {va.GRID_PARAM: [{"layer": 1, "head": 2}]}}, (1, 2)),
    ({va.GRID_PARAM: [{"layer": 0, "head": 1}]}, (0, 1)),
    ([{"layer": 1.0, "head": 0.0}], (1, 0)),  # Vega sends numbers as floats
    ({"layer": 1, "head": 1}, (1, 1)),
    ({"selection": {va.GRID_PARAM: [{"layer": 0, "head": 0}, {"layer": 1, "head": 2}]}}, (1, 2)),
    ({"selection": {va.GRID_PARAM: []}}, None),  # cleared
    ({"selection": {}}, None),
    (None, None),
    ({"selection": {va.GRID_PARAM: [{"layer": 5, "head": 0}]}}, None),  # a stale click from a bigger model
    ({"selection": {va.GRID_PARAM: [{"x0": 1.0}]}}, None),
    ({"selection": {va.GRID_PARAM: ["junk"]}}, None),
])
def test_grid_pick(event, want) -> None:
    assert va.grid_pick(event, n_layer=2, n_head=3) == want


class AttrState(dict):  # Streamlit's selection state allows both ["selection"] and .selection
    __getattr__ = dict.__getitem__


def test_grid_pick_reads_attribute_style_state() -> None:
    assert va.grid_pick(AttrState(selection=AttrState({va.GRID_PARAM: [{"layer": 1, "head": 0}]})), 2, 3) == (1, 0)


def test_uniform_entropy_is_a_uniform_heads_entropy() -> None:
    T = 6
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)  # (T, T)
    s = prompt_head_scores(uniform.expand(1, 2, T, T))  # the summary's color range ends at this head
    assert s["entropy"][0].tolist() == pytest.approx([va.uniform_entropy(T)] * 2, rel=1e-5)
    assert va.uniform_entropy(4) == pytest.approx((math.log2(2) + math.log2(3) + math.log2(4)) / 3)


def test_head_summary_and_induction_figures() -> None:
    e, p, f = torch.rand(2, 3) * 3, torch.rand(2, 3), torch.rand(2, 3)
    fig = valid(va.head_summary_figure(e, p, f, selected=(1, 2), max_entropy=4.0))
    assert len(fig.data) == 3 and len(fig.layout.shapes) == 3
    assert fig.data[0].zmax == 4.0 and fig.data[1].zmax == 1.0
    torch.testing.assert_close(arr(fig.data[1].z), p)
    assert len(valid(va.induction_figure(torch.rand(2, 3), (0, 0))).layout.shapes) == 1


def test_build_attention_from_a_recording(model: GPT, ids: list[int]) -> None:
    insp = inspection(model, ids, va.NAMES, layer=1, head=1)
    rec, strs = insp.rec, vt.token_strs(TOK.token_str, ids)
    L, H, T = model.config.n_layer, model.config.n_head, len(ids)
    view = va.build(insp, query=5)
    want = rec["blocks.1.attn.hook_pattern"][0, 1]
    torch.testing.assert_close(arr(valid(view.pattern).data[0].z), want)
    assert list(view.pattern.data[0].x) == vt.unique_labels(strs)
    assert "attention=" in view.query_html and view.query_html.count("masked") == T - 6
    assert len(view.grid_frame) == L * H * view.grid_side ** 2
    for f in (view.scores, view.query_bar, view.summary_fig):
        valid(f)
    assert view.summary["entropy"].shape == (L, H)
    want = prompt_head_scores([rec[f"blocks.{i}.attn.hook_pattern"] for i in range(L)])  # L x (1, H, T, T)
    for k, v in want.items():
        torch.testing.assert_close(view.summary[k], v)
    assert view.selected_scores["prev_token"] == pytest.approx(float(view.summary["prev_token"][1, 1]))


# -- layers -----------------------------------------------------------------------------------------
def test_norm_figure(model: GPT, ids: list[int]) -> None:
    from gpt.analysis import residual_norms

    rec = record(model, ids, vl.NAMES)
    norms = residual_norms(rec, model.config.n_layer)
    labels = vt.unique_labels(vt.token_strs(TOK.token_str, ids))
    for key in vl.NORM_CHOICES.values():
        fig = valid(vl.norm_figure(norms, key, labels))
        torch.testing.assert_close(arr(fig.data[0].z), norms[key])
    with pytest.raises(ValueError, match="unknown norm"):
        vl.norm_figure(norms, "nope", labels)


def test_logit_lens_figure_shows_top_tokens_and_top5_hover(model: GPT, ids: list[int]) -> None:
    rec = record(model, ids, vl.NAMES)
    lens = logit_lens(model, rec, k=5, positions=[0, 1, 2], ids=ids)
    labels = vt.unique_labels(vt.token_strs(TOK.token_str, ids))
    fig = valid(vl.logit_lens_figure(lens.top_ids, lens.top_probs, lens.layers, labels[:3], TOK.token_str,
                                     lens.target_probs))
    tr = fig.data[0]
    assert tr.text[-1][2] == TOK.token_str(int(lens.top_ids[-1, 2, 0]))
    assert tr.hovertext[0][0].count("<br>") >= 5 and "p(actual next)" in tr.hovertext[0][0]
    torch.testing.assert_close(arr(tr.z), lens.top_probs[..., 0])
    assert tr.texttemplate == "%{text}"  # 3 positions: the tokens are drawn in the cells


def test_lens_window_and_embedding_ids() -> None:
    assert vl.lens_window(10, 3, 4) == [3, 4, 5, 6]
    assert vl.lens_window(10, 9, 4) == [6, 7, 8, 9]
    assert vl.lens_window(3, 0, 32) == [0, 1, 2]
    assert vl.embedding_ids(65, [3]) == list(range(65))
    big = vl.embedding_ids(50257, [10, 40000, 40000, 600])
    assert big[:500] == list(range(500)) and big[500:] == [600, 40000]


def test_embedding_and_position_figures(model: GPT) -> None:
    from gpt.analysis import embedding_pca, position_similarity

    coords, ratio = embedding_pca(model)
    fig = valid(vl.embedding_figure(coords, ratio, range(10), TOK.token_str, highlight=[3]))
    assert len(fig.data[0].x) == 10 and fig.data[0].marker.color[3] != fig.data[0].marker.color[0]
    assert "PC1" in fig.layout.xaxis.title.text
    sim = position_similarity(model)
    assert len(valid(vl.position_similarity_figure(sim)).data[0].z) == model.config.block_size
    pooled = valid(vl.position_similarity_figure(sim, max_side=8))
    assert len(pooled.data[0].z) == 8 and "pooled" in pooled.layout.title.text


def test_build_layers(model: GPT, ids: list[int]) -> None:
    insp = inspection(model, ids, vl.NAMES)
    strs = vt.token_strs(TOK.token_str, ids)
    per_model = vl.model_views(model)
    view = vl.build(insp, "mlp_out", vl.lens_window(len(ids), 4, 8), per_model)
    for f in (view.norm, view.lens, view.embeddings, view.positions):
        valid(f)
    assert list(view.lens.data[0].x) == vt.unique_labels(strs)[4:12]
    assert "mlp_out" in view.norm.layout.title.text
    assert view.positions is per_model[2]  # the per-checkpoint part is taken as given


# -- generate ---------------------------------------------------------------------------------------
def test_undo_step_and_views(model: GPT) -> None:
    gen = Generator(model, [1, 2, 3], temperature=1.0, seed=0, record=True)
    st = ag.GenState(ref="m", prompt=(1, 2, 3), ids=[1, 2, 3])
    for _ in range(3):
        ag.record_step(st, gen.step(k=5), 2.0)
    forced = gen.step(force=7, k=5)
    ag.record_step(st, forced, 2.0)
    view = vg.build(st, TOK.token_str)
    assert 'data-new-tokens="4"' in view.text and view.text.count("<span") == 7
    assert view.text.count("dashed") == 1  # the forced token is outlined
    chosen = [a for a in view.alternatives if a[3]]
    assert len(chosen) == 1 and chosen[0][0] == 7
    assert all(a[2] > 0 for a in view.alternatives if not a[3])
    att = valid(view.attention)
    L, H = model.config.n_layer, model.config.n_head
    assert len(att.data[0].y) == L * H and len(att.data[0].x) == forced.pos - forced.ctx_start
    valid(view.distribution)
    ag.undo_step(st)
    assert st.n_new == 3 and len(st.steps) == 3
    empty = ag.GenState(ref="m", prompt=(1,), ids=[1])
    with pytest.raises(ValueError, match="nothing to undo"):
        ag.undo_step(empty)
    assert vg.build(empty, TOK.token_str).distribution is None


def test_step_attention_figure_keeps_the_last_positions() -> None:  # (L, H, Tctx) -> rows L*H
    att = torch.rand(2, 3, 200)
    fig = valid(vg.step_attention_figure(att, ["a"] * 200, ctx_start=10, max_positions=50))
    assert len(fig.data[0].x) == 50 and fig.data[0].x[0] == "160:a"
    torch.testing.assert_close(arr(fig.data[0].z), att.reshape(6, 200)[:, 150:])
    with pytest.raises(ValueError):
        vg.step_attention_figure(att, ["a"] * 10)



def test_layers_model_views_are_pure() -> None:
    """The embedding PCA and position-similarity figure depend on the weights only and are computed
    afresh by every call (app.resources.model_views caches them per checkpoint): two calls agree,
    and another model gets its own."""
    from gpt.analysis import embedding_pca, position_similarity

    a, b = GPT(GPTConfig.preset("tiny", vocab_size=20)), GPT(GPTConfig.preset("tiny", vocab_size=20))
    first, again = vl.model_views(a), vl.model_views(a)
    assert again is not first  # no module-level cache any more
    torch.testing.assert_close(again[0], first[0])
    torch.testing.assert_close(again[1], first[1])
    assert again[2].to_dict() == first[2].to_dict()
    other = vl.model_views(b)
    assert not torch.equal(other[0], first[0])
    coords, ratio = embedding_pca(b)
    assert torch.equal(other[0], coords) and torch.equal(other[1], ratio)
    torch.testing.assert_close(arr(valid(other[2]).data[0].z), position_similarity(b))  # 32 <= MAX_SIM_SIDE


# -- issue 12: reading the pictures ----------------------------------------------------------------------
def test_one_glyph_legend_names_every_glyph_the_tokenizer_draws() -> None:
    """Point 11: the legend explains every whitespace glyph gpt.tokenizer.visible() draws, plus its
    code-point form, the BPE byte form, and the position prefix of axis labels."""
    import html

    from gpt.tokenizer import VISIBLE, GPT2Tokenizer, visible

    assert set(vt.GLYPH_NAMES) == set(VISIBLE)  # a new glyph in VISIBLE needs a name here
    text = html.unescape(vt.glyph_legend())
    for ch, glyph in VISIBLE.items():
        assert f">{glyph}</span> {vt.GLYPH_NAMES[ch]}" in text, glyph
    assert visible("\x07") == "<U+0007>" and "<U+0007>" in text
    bpe = GPT2Tokenizer()
    split = [bpe.token_str(i) for i in bpe.encode("☃")]  # a character split across byte tokens
    assert any(s.startswith("<0x") for s in split) and "<0xE2>" in text
    assert "position 5" in text


def test_attention_strip_has_its_own_palette_and_legend() -> None:
    """Point 12: "Where X attends" is drawn on the heatmaps' Blues (darkest = the row's largest
    weight), never on Next token's red..green surprise palette, and its legend gives the numbers,
    including what uniform attention would be."""
    from plotly.colors import get_colorscale, sample_colorscale

    w = torch.tensor([0.1, 0.6, 0.3, 0.0])
    out = vt.attention_html(["a", "b", "c", "d"], w, 2)
    blues = get_colorscale("Blues")
    darkest, palest = sample_colorscale(blues, [1.0])[0], sample_colorscale(blues, [0.0])[0]
    spans = out.split("<span")[1:]
    assert f"background:{darkest}" in spans[1]  # 0.6 is the row's largest
    assert f"background:{sample_colorscale(blues, [0.5])[0]}" in spans[2]  # 0.3 / 0.6
    assert "color:#fff" in spans[1] and "color:#111" in spans[0]  # readable on dark and light blue
    surprise = {vt.prob_color(p, log=lg) for p in (0.0, 0.1, 0.3, 0.5, 0.6, 1.0) for lg in (True, False)}
    assert not any(f"background:{c}" in out for c in surprise)
    legend = vt.attention_legend_html(w, 2)
    assert "0.600" in legend and "0.000" in legend and f"background:{darkest}" in legend
    assert f"background:{palest}" in legend and "uniform over its 3 keys would be 0.333" in legend
    flat = vt.attention_legend_html(torch.full((4,), 0.25), 3)  # uniform: darkest == uniform, said so
    assert "0.250" in flat and "would be 0.250" in flat
    assert "masked" in legend and "masked" not in flat  # a later key exists only in the first


def test_attention_how_to_read_caption_states_the_clip(model: GPT, ids: list[int]) -> None:
    """Point 12: the one-line caption says rows/columns/sums/mask, and the clip it names is the
    pattern colour bar's end, the largest weight outside row 0."""
    insp = inspection(model, ids, va.NAMES, layer=1, head=0)
    view = va.build(insp, query=3)
    pat = insp.rec["blocks.1.attn.hook_pattern"][0, 0]
    top = float(pat[1:].max())
    assert view.pattern.data[0].zmax == pytest.approx(top)
    for words in ("rows = query", "columns = key", "each row sums to 1", "upper triangle is masked",
                  f"clipped at {top:.3f}", "outside row 0"):
        assert words in view.how_to_read, words
    assert "0.6" in vt.attention_legend_html(torch.tensor([0.4, 0.6]), 1) and view.query_legend
    assert "clipped" not in va.how_to_read(1.0, 1)  # one token: nothing to clip


def test_fit_label_and_cell_text_size() -> None:
    assert vl.fit_label("·question", 4) == "·qu…" and vl.fit_label("ab", 4) == "ab"
    assert vl.fit_label("abc", 0) == "" and vl.fit_label("abc", 1) == "…"
    size, chars = vl.cell_text_size(32, 640, 1)  # characters: the largest font fits
    assert size == max(vl.LENS_FONTS) and chars >= 1
    size, chars = vl.cell_text_size(16, 640, 9)  # long BPE tokens: the smallest font, then cut
    assert size == min(vl.LENS_FONTS) and 3 <= chars < 9
    assert chars * vl.CHAR_EM * size <= 640 / 16  # what is kept fits its cell
    assert vl.cell_text_size(300, 640, 1)[1] == 0  # too narrow: no text at all


def test_logit_lens_cells_fit_and_mark_the_actual_next_token() -> None:
    """Point 13: texts are cut to fit their cells, and exactly the cells whose top guess is the
    actual next token are outlined (counted here from the ids, not from the figure)."""
    words = ["·the", "·question", "·to", "·be", "·or", "·not"]
    token_str = lambda i: words[i]  # noqa: E731
    top_ids = torch.tensor([[[0, 1], [1, 2], [3, 2], [3, 0]],  # (R=2, P=4, k=2): row 0 = embed
                            [[1, 0], [2, 1], [5, 3], [3, 2]]])
    top_probs = torch.full((2, 4, 2), 0.4)
    targets = [1, 2, 3, None]  # the token after each shown position; none after the last
    fig = valid(vl.logit_lens_figure(top_ids, top_probs, ["embed", "after block 0"], list("abcd"), token_str,
                                     targets=targets, width_px=4 * 40))
    tr = fig.data[0]
    size, chars = vl.cell_text_size(4, 160, max(len(w) for w in words))
    assert tr.textfont.size == size and all(len(t) <= chars for row in tr.text for t in row)
    assert tr.text[0][1] == vl.fit_label("·question", chars) and tr.text[0][1].endswith("…")
    assert "·question" in tr.hovertext[0][1]  # the full text on hover
    want = {(r, p) for r in range(2) for p in range(4) if targets[p] is not None and top_ids[r, p, 0] == targets[p]}
    got = {(round((s.y0 + s.y1) / 2), round((s.x0 + s.x1) / 2)) for s in fig.layout.shapes}
    assert got == want == {(1, 0), (1, 1), (0, 2)}
    assert "outlined" in fig.layout.title.text
    with pytest.raises(ValueError, match="targets"):
        vl.logit_lens_figure(top_ids, top_probs, ["a", "b"], list("abcd"), token_str, targets=[1])


def test_layers_lens_names_the_embed_row_and_marks_matches(model: GPT, ids: list[int]) -> None:
    """Point 13: the Layers page's lens gets the targets from the prompt, and the embed-row
    sentence speaks of tied embeddings (this model ties wte and lm_head)."""
    insp = inspection(model, ids, vl.NAMES)
    view = vl.build(insp, "resid_pre", vl.lens_window(len(ids), 0, 8), vl.model_views(model))
    lens = logit_lens(model, insp.rec, k=5, positions=list(range(8)), ids=ids)
    n = sum(int(lens.top_ids[r, p, 0]) == ids[p + 1] for r in range(lens.top_ids.size(0)) for p in range(8))
    assert len(view.lens.layout.shapes) == n
    assert model.lm_head.weight is model.transformer.wte.weight
    note = vl.lens_note(model)
    assert "embed" in note and "tied" in note and "p≈1" in note
    assert vl.lens_width("char") > vl.lens_width("gpt2")


def test_induction_scale_is_fixed_and_no_head_is_said_in_words() -> None:
    """Point 14: a noise-level induction map stays pale (0..1 scale), and the words say there is
    no induction head, with its max."""
    noise = torch.tensor([[0.001, 0.004], [0.007, 0.002]])
    fig = valid(va.induction_figure(noise))
    assert (fig.data[0].zmin, fig.data[0].zmax) == (0.0, 1.0)
    from app.views import heads as vh

    assert vh.verdict({"induction": noise}, "induction") == \
        "No induction head (max 0.007, L1H0; a head counts from 0.2)."
    two = vh.verdict({"prev_token": torch.tensor([[0.9, 0.1], [0.55, 0.3]])}, "prev_token")
    assert two == "2 previous-token heads: L0H0 (0.90), L1H0 (0.55) (score ≥ 0.5)."
    assert vh.verdict({"entropy": noise}, "entropy") == ""  # no threshold for entropy


def test_a_one_token_prompt_has_no_head_summary(model: GPT) -> None:
    """Point 16: with one token there is nothing to average over: no summary numbers, a note."""
    view = va.build(inspection(model, [3], va.NAMES), query=0)
    assert view.summary == {} and view.summary_fig is None and view.selected_scores == {}
    assert "needs ≥2 tokens" in view.summary_note
    two = va.build(inspection(model, [3, 4], va.NAMES), query=1)
    assert two.summary_note is None and two.summary_fig is not None
