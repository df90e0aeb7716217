"""app/views/walkthrough(_stages): the pure parts of the Walkthrough page, on a small random GPT.

The stages must show the model's real values (checked against the modules computed by hand), record
only what they show, and have the shapes the diagram prints; the training table must mark the true
next token (its losses: tests/test_analysis.py); the generation step must show what gpt.generate
draws from."""
from __future__ import annotations

import re

import pytest
import torch

from app.generation import Settings
from app.inspection import Inspection, Loaded
from app.views import walkthrough as vw
from app.views import walkthrough_stages as vs
from gpt.analysis import training_example
from gpt.config import GPTConfig
from gpt.generate import Generator, sampling_distribution
from gpt.heads import attention_steps
from gpt.model import GPT
from gpt.record import Recorder

T = 11


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    m = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so the LN stages are really tested
        for mod in m.modules():
            if isinstance(mod, type(m.transformer.ln_f)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return m


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return torch.randint(40, (T,), generator=torch.Generator().manual_seed(1)).tolist()


def record(model: GPT, ids: list[int], names: tuple[str, ...]) -> Recorder:
    rec = Recorder(list(names))
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec)
    return rec


def label(i: int) -> str:
    return f"t{i}"


class LabelTokenizer:
    """Just what an Inspection reads of a tokenizer: token_str, here `label`."""

    def token_str(self, i: int) -> str:
        return label(i)


def inspection(model: GPT, ids: list[int], rec: Recorder | None, names: tuple[str, ...], layer: int,
               head: int = 0) -> Inspection:
    loaded = Loaded(model=model, tokenizer=LabelTokenizer(), meta={}, ref="test", label="test",  # type: ignore[arg-type]
                    config=model.config)
    return Inspection.of(loaded, tuple(ids), rec, names, layer, head)


# -- training ------------------------------------------------------------------------------------------
def test_training_table_marks_the_true_next_token(model: GPT, ids: list[int]) -> None:
    tv = training_example(model, ids, k=5)
    table = vw.training_table(tv, label)
    assert len(table) == T - 1 and table["target y"].tolist() == [label(i) for i in ids[1:]]
    for t, row in table.iterrows():
        in_top = int(tv.target_rank[t]) <= 5
        assert (f"✓{label(ids[t + 1])} " in row["predicted top 5 (✓ = target)"]) == in_top
    assert float(vw.loss_figure(tv, [label(i) for i in ids[1:]]).layout.shapes[0].y0) == pytest.approx(tv.mean)


# -- stages --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [s for s in vs.STAGE_KEYS if s != "ids"])
def test_each_stage_records_only_its_names_and_has_the_printed_shape(model: GPT, ids: list[int], stage: str) -> None:
    layer = 1
    names = vs.stage_names(stage, layer)
    rec = record(model, ids, names)
    assert set(rec.names()) == set(names)  # nothing else is recorded
    sv = vs.stage_values(stage, layer, rec, model)
    printed = vs.stage_shapes(model.config, T)[stage].split("→")[-1]  # the output shape
    dims = tuple(int(d) for d in re.findall(r"\d+", printed))
    assert sv.shape[-len(dims):] == dims and sv.values.shape == (T, sv.shape[-1])
    assert all(n.shape == (T,) for n in sv.norms.values())
    insp = inspection(model, ids, rec, names, layer)
    assert insp.labels == [f"{p}:{label(i)}" for p, i in enumerate(ids)]
    detail = vw.stage_detail(insp, stage)
    assert len(detail.figures) == 1 + (stage == "mlp") and bool(detail.panels) == (stage == "attn")
    fig = detail.figures[0]  # the values heatmap beside the norms, on the same position rows
    assert fig.data[0].type == "heatmap" and list(fig.data[0].y) == insp.labels
    assert fig.layout.yaxis2.matches == "y" and len(fig.data) == 1 + len(sv.norms) + (stage == "attn")
    torch.testing.assert_close(torch.tensor(fig.data[1].x), next(iter(sv.norms.values())))


def test_the_ids_stage_has_no_figures(model: GPT, ids: list[int]) -> None:
    detail = vw.stage_detail(inspection(model, ids, None, (), 0), "ids")
    assert detail.values is None and detail.figures == [] and detail.panels == []


def test_stage_values_are_the_models_own(model: GPT, ids: list[int]) -> None:
    idx = torch.tensor([ids])
    h = model.transformer.h
    with torch.no_grad():
        x0 = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))  # (1, T, C)
        ln1 = h[0].ln_1(x0)
        mid = x0 + h[0].attn(ln1)
        post = mid + h[0].mlp(h[0].ln_2(mid))
        x = h[1](post)
        logits = model.lm_head(model.transformer.ln_f(x))

    def values(stage: str, layer: int = 0) -> torch.Tensor:
        return vs.stage_values(stage, layer, record(model, ids, vs.stage_names(stage, layer)), model).values

    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values("embed"), x0[0], **close)
    torch.testing.assert_close(values("tok_emb") + values("pos_emb"), x0[0], **close)
    torch.testing.assert_close(values("ln1"), ln1[0], **close)  # gain and bias applied
    torch.testing.assert_close(values("resid_mid"), mid[0], **close)
    torch.testing.assert_close(values("resid_post"), post[0], **close)
    torch.testing.assert_close(values("ln_f", 1), model.transformer.ln_f(x)[0], **close)
    torch.testing.assert_close(values("logits"), logits[0], **close)
    sv = vs.stage_values("resid_mid", 0, record(model, ids, vs.stage_names("resid_mid", 0)), model)
    before, added, after = sv.norms.values()
    torch.testing.assert_close(after, mid[0].norm(dim=-1), **close)
    torch.testing.assert_close(before, x0[0].norm(dim=-1), **close)
    assert not torch.allclose(before, after)


def test_attention_panels_draw_one_opened_head(model: GPT, ids: list[int]) -> None:
    layer, head = 1, 1
    rec = record(model, ids, vs.stage_names("attn", layer))
    s = attention_steps(rec, layer, head)  # its tensors: tests/test_heads.py
    panels = vs.attention_panels(s, [label(i) for i in ids], model.config.n_head)
    assert [p.heading[0] for p in panels] == ["①", "②"] and "⑤" in panels[1].heading
    assert "q·kᵀ" in panels[1].heading and f"({T}, {T})" in panels[1].note
    steps = panels[1].figures[0]
    titles = [a.text for a in steps.layout.annotations]
    assert titles[0].startswith("<b>② q·kᵀ/√") and any("⑤ z" in t for t in titles)
    torch.testing.assert_close(torch.tensor(steps.data[0].z), s.raw)  # the panels draw these tensors
    torch.testing.assert_close(torch.tensor(steps.data[3].z), s.pattern)


def test_big_matrices_are_cut_and_big_vocabularies_reduced() -> None:
    sv = vs.StageValues("mlp", 0, torch.randn(100, 1000), {"‖x‖": torch.ones(100)}, hidden=torch.randn(100, 4000))
    keep = vs.cut_columns(sv.values)
    assert keep == vs.MAX_CELLS // 100 and vs.cut_columns(torch.zeros(3, 5), 10) == 5
    fig = vs.stage_figure(sv, [str(i) for i in range(100)])
    assert len(fig.data[0].z[0]) == keep and f"first {keep} shown" in fig.layout.annotations[0].text
    assert len(vs.hidden_figure(sv.hidden, [str(i) for i in range(100)]).data[0].z[0]) == keep
    logits = torch.zeros(3, 5000)
    logits[1, 4321] = 9.0
    cols = vs.logits_columns(logits, max_columns=8)
    assert len(cols) == 8 and 4321 in cols and cols == sorted(cols)
    assert vs.logits_columns(torch.zeros(3, 65)) == list(range(65))


# -- diagram -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [GPTConfig.preset("tiny"), GPTConfig.preset("cpu-small"), GPTConfig.preset("gpt2"),
                                 GPTConfig(block_size=8, vocab_size=5, n_layer=1, n_head=1, n_embd=4)],
                         ids=["tiny", "cpu-small", "gpt2", "one-layer"])
def test_diagram_is_drawn_from_the_config(cfg: GPTConfig) -> None:
    fig = vw.diagram_figure(cfg, 7, "attn", cfg.n_layer - 1)
    keys = list(fig.data[0].customdata)
    assert set(vs.STAGE_KEYS) <= set(keys)  # every stage is a box
    assert [k for k in keys if k.startswith("block:")] == [f"block:{i}" for i in range(cfg.n_layer)]
    text = " ".join(a.text for a in fig.layout.annotations)
    assert f"(1, 7, {cfg.n_embd})" in text and f"(1, 7, {cfg.vocab_size})" in text
    assert f"(1, {cfg.n_head}, 7, {cfg.head_dim})" in text and f"n_layer = {cfg.n_layer}" in text
    outlined = {k for k, w in zip(keys, fig.data[0].marker.line.width) if w > 1}
    assert outlined == {"attn", f"block:{cfg.n_layer - 1}"}


def test_pick_reads_a_click() -> None:
    def ev(data) -> dict:
        return {"selection": {"points": [{"curve_number": 0, "customdata": data}], "point_indices": [0]}}
    assert vw.pick(ev("mlp"), "tok_emb", 4) == ("mlp", None)
    assert vw.pick(ev(["ln_f"]), "attn", 4) == ("ln_f", None)
    assert vw.pick(ev("block:3"), "attn", 4) == ("attn", 3)  # an in-block stage is kept
    assert vw.pick(ev("block:2"), "logits", 4) == ("resid_post", 2)  # else the block's output
    for bad in (ev("block:9"), ev("nope"), ev(None), {"selection": {"points": []}}, None, {}):
        assert vw.pick(bad, "attn", 4) is None


# -- generation ----------------------------------------------------------------------------------------
def test_a_generation_step_shows_the_crop_and_what_is_drawn(model: GPT) -> None:
    B = model.config.block_size
    long = torch.randint(40, (B + 5,), generator=torch.Generator().manual_seed(2)).tolist()
    gen = Generator(model, long, temperature=0.7, top_k=5, seed=3)
    step = gen.step()
    assert step.cropped and step.ctx_start == 5  # the loop kept the last block_size tokens
    note = vw.crop_note(step.pos, B)
    assert f"ids[5:] (1, {B})" in note and "first 5 are cropped away" in note
    assert "nothing to crop" in vw.crop_note(B, B)
    table = vw.step_table(step, 0.7, 5, None, label)
    drawn = sampling_distribution(step.logits, 0.7, 5)
    for _, row in table.iterrows():
        assert row["p at temperature 0.7"] == pytest.approx(float(drawn[row["id"]]))
    assert table.loc[table["sampled"] != "", "id"].tolist() == [step.token]
    assert table["logit"].is_monotonic_decreasing or table["sampled"].iloc[-1]
    html = vw.context_html(gen.ids, label, step.ctx_start, step.pos)
    assert html.count("line-through") == 5 and html.count("outline") == 1
    assert len(vw.step_figure(table).data) == 2


def test_the_loop_steps_show_the_step_as_drawn(model: GPT) -> None:
    B = model.config.block_size
    assert "give a prompt longer than" in vw.loop_intro(B, B) and "Next token" in vw.loop_intro(B, B)
    assert "give a prompt longer" not in vw.loop_intro(B + 1, B) and "cropped away" in vw.loop_intro(B + 1, B)
    long = torch.randint(40, (B + 5,), generator=torch.Generator().manual_seed(2)).tolist()
    settings = Settings(temperature=0.7, top_k=5, top_p=1.0, seed=3)
    gen = Generator(model, long, **settings.generator_kwargs())
    step = gen.step()
    parts, table = vw.loop_steps(step, settings, gen.ids, model.config, label)
    assert [kind for kind, _ in parts] == ["markdown"] * 3 + ["figure"] + ["markdown"] * 3
    assert table.equals(vw.step_table(step, 0.7, 5, None, label))  # what was drawn from
    assert parts[0][1].endswith(vw.crop_note(step.pos, B))
    assert f"({model.config.vocab_size},)" in parts[1][1] and "only the top 5 kept" in parts[2][1]
    fig = parts[3][1]
    assert list(fig.data[1].x) == pytest.approx(table["p at temperature 0.7"].tolist())
    assert f"`{label(step.token)}` (id {step.token})" in parts[4][1] and f"{step.prob:.3f}" in parts[4][1]
    assert f"grows to {len(gen.ids)} tokens" in parts[5][1]
    assert parts[6][1] == vw.context_html(gen.ids, label, step.ctx_start, step.pos)
    greedy = Settings(temperature=0.0)
    _, g_table = vw.loop_steps(Generator(model, long[:4], temperature=0.0).step(), greedy, long[:5],
                               model.config, label)
    assert g_table["p at temperature 0"].max() == 1.0  # greedy: one-hot


def test_ids_strip_shows_each_token_with_its_id_escaped() -> None:
    html = vw.ids_html(["a", "<b>", "·"], [3, 14, 15])
    assert html.count("position ") == 3 and ">14</span>" in html
    assert "<b>" not in html and "&#60;b&#62;" in html  # token text never becomes markup


def test_long_prompts_draw_only_the_last_positions_of_a_head(model: GPT, ids: list[int],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vs, "MAX_ATTN_POSITIONS", 5)
    s = attention_steps(record(model, ids, vs.stage_names("attn", 0)), 0, 0)
    panels = vs.attention_panels(s, [label(i) for i in ids], model.config.n_head)
    raw = panels[1].figures[0]
    assert len(raw.data[0].z) == 5 and len(raw.data[0].z[0]) == 5 and "last 5" in raw.layout.annotations[0].text
    assert list(raw.data[0].y) == [label(i) for i in ids[-5:]]
    torch.testing.assert_close(torch.tensor(raw.data[0].z), s.raw[-5:, -5:])


# -- issue 12, point 17: twelve layers ---------------------------------------------------------------------
TWELVE = GPTConfig(block_size=64, vocab_size=65, n_layer=12, n_head=12, n_embd=48)


def label_rects(fig, width_px: float = vw.DIAGRAM_PX) -> list[tuple[float, float, float, float, float]]:
    """(row y, x0, x1, top, bottom) in pixels of every shape label (the monospace annotations) of a
    diagram drawn `width_px` wide, from the figure itself: its x range, each label's x and yshift."""
    lo, hi = fig.layout.xaxis.range
    per = width_px / (hi - lo)
    out = []
    for a in fig.layout.annotations:
        if a.font and a.font.family == "monospace":
            lines = a.text.split("<br>")
            half = max(map(len, lines)) * vw.LABEL_CHAR_PX / 2
            top = -a.yshift
            out.append((a.y, (a.x - lo) * per - half, (a.x - lo) * per + half, top, top + len(lines) * vw.LABEL_LINE_PX))
    return out


@pytest.mark.parametrize("cfg, T", [(TWELVE, 57), (GPTConfig.preset("gpt2"), 1024), (GPTConfig.preset("tiny"), 7),
                                    (GPTConfig(block_size=64, vocab_size=65, n_layer=48, n_head=4, n_embd=32), 20)],
                         ids=["12-layers", "gpt2-long", "tiny", "48-layers"])
def test_diagram_shape_labels_and_boxes_do_not_overlap(cfg: GPTConfig, T: int) -> None:
    fig = vw.diagram_figure(cfg, T, "attn", 0)
    rects = label_rects(fig)
    assert len(rects) >= 10
    for i, (y, a0, a1, t0, b0) in enumerate(rects):
        for y2, c0, c1, t1, b1 in rects[i + 1:]:
            assert not (y == y2 and a0 < c1 and c0 < a1 and t0 < b1 and t1 < b0), (y, a0, a1, c0, c1)
    lo, hi = fig.layout.xaxis.range
    per = vw.DIAGRAM_PX / (hi - lo)
    pts = fig.data[0]
    blocks = sorted((x, s) for x, s, k in zip(pts.x, pts.marker.size, pts.customdata) if k.startswith("block:"))
    for (xa, sa), (xb, sb) in zip(blocks, blocks[1:]):  # neighbouring block boxes stay apart
        assert (xb - xa) * per > (sa + sb) / 2, (xa, xb, sa, sb)


def test_twelve_layers_drop_the_lm_head_label_below_ln_f() -> None:
    nodes = vw.diagram_nodes(TWELVE, 57, 0)
    drops = vw.label_drops(nodes)
    assert drops["ln_f"] == 0 and drops["logits"] > 0  # they would collide on one line
    assert all(v == 0 for v in vw.label_drops(vw.diagram_nodes(GPTConfig.preset("tiny"), 7, 0)).values())


def test_sampling_step_bars_have_readable_token_labels(model: GPT) -> None:
    step = Generator(model, [1, 2, 3], temperature=1.0, seed=0).step()
    fig = vw.step_figure(vw.step_table(step, 1.0, None, None, label))
    assert fig.layout.yaxis.tickfont.size >= 12  # the token names (was 10 px, read as ~8)
    assert fig.layout.xaxis.tickfont.size >= 11 and fig.layout.xaxis2.tickfont.size >= 11


def test_per_head_norms_carry_their_own_position_labels() -> None:
    rows = [f"{i}:t{i}" for i in range(57)]
    sv = vs.StageValues("attn", 0, torch.randn(57, 48), {"‖x‖": torch.rand(57)}, head_norms=torch.rand(57, 12))
    fig = vs.stage_figure(sv, rows)
    lay = fig.layout
    assert lay.yaxis3.showticklabels is True and lay.yaxis3.matches == "y"  # same rows, labelled
    assert lay.yaxis2.showticklabels is False  # the norms beside the values need none
    room = (lay.xaxis3.domain[0] - lay.xaxis2.domain[1]) * vs.PANEL_PX  # px between the norms and the head panel
    assert room >= max(map(len, rows)) * 6.2
