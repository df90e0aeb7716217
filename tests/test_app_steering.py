"""The Generate page's steering panel under AppTest, on the tiny trained run: the default and steered
columns step together from one seed (alpha 0 keeps them identical, KL 0), back and force work in
both, the alpha sweep is drawn, a saved vector is reloaded, and bad input gets its message.
Also app.steering_pair.SteeringPair directly, against two seeded gpt.generate.Generators."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.generation import Settings
from app.inspection import Loaded
from app.steering_pair import SteeringPair
from gpt import steering
from gpt.checkpoint import load
from gpt.compare import kl_per_position
from gpt.config import GPTConfig
from gpt.generate import Generator
from gpt.model import GPT
from gpt.tokenizer import CharTokenizer

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PROMPT = "To be, or not to be"


@pytest.fixture
def root(app_root: Path) -> Path:
    return app_root


def steer_page(alpha: float = 4.0) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    at.switch_page("screens/generate.py")
    at.session_state["prompt"] = PROMPT
    at.run()
    at.toggle(key="gen_steer").set_value(True).run()
    at.number_input(key="steer_alpha").set_value(alpha).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "info", "warning", "error", "caption", "success")
                     for e in getattr(at, kind))


def charts(at: AppTest) -> dict[str, dict]:
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[spec["layout"].get("title", {}).get("text", "")] = spec
    return out


def test_two_columns_step_together_back_and_force(root: Path) -> None:
    at = steer_page(alpha=6.0)
    for _ in range(3):
        at.button(key="steer_step").click().run()
    assert not at.exception
    d, s = at.session_state["steer_default"], at.session_state["steer_steered"]
    n = len(PROMPT)
    assert len(d["ids"]) == len(s["ids"]) == n + 3 and d["prompt"] == s["prompt"]
    assert "3 new tokens in each column" in texts(at)
    kl = charts(at)["KL(steered ‖ default) of the next-token distributions"]["data"][0]["y"]
    assert len(kl) == 3 and kl[0] > 0  # the steering moved the first distribution already
    assert [b.proto.label for b in at.get("download_button")][-3:] == ["Data (NPZ)", "Data (CSV)", "Open as notebook"]
    at.button(key="steer_back").click().run()
    assert "2 new tokens in each column" in texts(at)
    assert len(at.session_state["steer_default"]["ids"]) == len(at.session_state["steer_steered"]["ids"]) == n + 2
    before = at.session_state["steer_default"]["ids"]
    force = [b for b in at.button if b.key and b.key.startswith("steer_force_steered_")]
    token = int(force[0].key.rsplit("_", 1)[1])
    force[0].click().run()
    s = at.session_state["steer_steered"]
    assert s["ids"][-1] == token and s["steps"][-1].forced and len(s["ids"]) == n + 2
    assert at.session_state["steer_default"]["ids"] == before  # the other column is untouched
    force = [b for b in at.button if b.key and b.key.startswith("steer_force_default_")]
    token = int(force[0].key.rsplit("_", 1)[1])
    force[0].click().run()
    assert at.session_state["steer_default"]["ids"][-1] == token
    at.button(key="steer_step10").click().run()
    assert "12 new tokens in each column" in texts(at)
    at.button(key="steer_reset").click().run()
    assert "0 new tokens in each column" in texts(at)


def test_alpha_zero_columns_are_identical(root: Path) -> None:
    at = steer_page(alpha=0.0)
    at.button(key="steer_step10").click().run()
    d, s = at.session_state["steer_default"], at.session_state["steer_steered"]
    assert d["ids"] == s["ids"] and len(d["ids"]) == len(PROMPT) + 10
    assert "the texts agree so far" in texts(at)
    assert charts(at)["KL(steered ‖ default) of the next-token distributions"]["data"][0]["y"] == [0.0] * 10
    at.number_input(key="steer_alpha").set_value(8.0).run()  # another steering edit: both start over
    assert "0 new tokens in each column" in texts(at)


def test_the_alpha_sweep_is_drawn(root: Path) -> None:
    at = steer_page()
    at.radio(key="steer_source").set_value("token").run()
    sweep = charts(at)["α sweep: p('!') after the prompt"]["data"][0]
    frame = at.dataframe[0].value
    model, tok, _ = load(root / "tiny-run")  # the same sweep run directly
    t = tok.encode("!")[0]
    rows = steering.alpha_sweep(model, tok.encode(PROMPT), steering.token_direction(model, t),
                                (0, 1, 2, 4, 8), t)
    assert sweep["x"] == list(frame["α"]) == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert sweep["y"] == pytest.approx([r.prob for r in rows], rel=1e-9)
    assert list(frame["first 40 tokens (greedy)"]) == [tok.decode(r.tokens).replace("\n", "⏎") for r in rows]
    assert all(len(r.tokens) == 40 for r in rows)
    at.text_input(key="steer_watch_token").input("ab").run()
    assert "'ab' is 2 tokens for this model; give exactly one" in texts(at)


def test_a_saved_vector_is_reloaded(root: Path) -> None:
    at = steer_page()
    at.radio(key="steer_source").set_value("head").run()
    at.selectbox(key="steer_head_head").set_value(1).run()
    words = [m.value for m in at.markdown if m.value.startswith("**Vector:**")][0]
    assert "output of L0H1" in words
    at.text_input(key="steer_name").input("my-head").run()
    at.button(key="steer_save").click().run()
    assert not at.exception
    saved = root / "tiny-run" / "steering"
    assert (saved / "my-head.safetensors").is_file() and (saved / "my-head.json").is_file()
    assert f"in the run folder {root / 'tiny-run'}" in texts(at)
    at.radio(key="steer_source").set_value("saved").run()
    assert at.selectbox(key="steer_saved").value == "my-head"
    again = [m.value for m in at.markdown if m.value.startswith("**Vector:**")][0]
    assert again == words  # the same source, norm and place, made on this model
    at.button(key="steer_step").click().run()
    assert not at.exception and "1 new tokens in each column" in texts(at)


def test_bad_contrast_input_gets_its_message(root: Path) -> None:
    at = steer_page()
    at.radio(key="steer_source").set_value("contrast").run()
    assert "**Vector:** contrast of 2 vs 2 prompts" in texts(at)
    at.text_area(key="steer_neg").input("\n\n").run()
    assert "the second prompt set is empty: type at least one prompt, one per line" in texts(at)
    at.text_area(key="steer_neg").input("I hate you\nno").run()
    at.radio(key="steer_policy").set_value("aligned").run()
    assert "'aligned' compares position by position and needs equal lengths" in texts(at)
    at.text_area(key="steer_pos").input("I løve you").run()
    assert "line 1 of the first prompt set has characters this model does not know: 'ø'" in texts(at)
    assert not at.exception


@pytest.mark.parametrize("ablate", [False, True])
def test_pair_equals_two_seeded_generators(ablate: bool) -> None:
    """Stepped, backed and stepped again, the columns are what two seeded Generators give by hand:
    the default under the active intervention (`base`), the steered under base + steering."""
    from gpt.edit import Edits

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    tok = CharTokenizer("".join(chr(32 + i) for i in range(65)))
    loaded = Loaded(model, tok, {}, "mem", "mem", model.config, "s")
    edit = steering.steering_edit(model, steering.token_direction(model, 7), 3.0)
    base = Edits().ablate_heads(0, [1]) if ablate else None
    pair = SteeringPair({})
    prompt = [1, 2, 3]
    pair.sync(loaded, prompt, Settings(seed=5), base, edit)
    pair.step(6)
    pair.back()
    pair.step(2)
    gd, gs, kl = pair.sync(loaded, prompt, Settings(seed=5), base, edit)
    want = []
    for e in (base, (base + edit) if base else edit):  # by hand: same seed, 6 draws, back (no rewind), 2 draws
        g = Generator(model, prompt, seed=5, edit=e, record=True)  # as GenerationSession: same kernels
        logits = [g.step().logits for _ in range(6)]
        g.back()
        logits = logits[:5] + [g.step().logits for _ in range(2)]
        want.append((g.ids, logits))
    assert gd.ids == want[0][0] and gs.ids == want[1][0]
    by_hand = [float(kl_per_position(s[None], d[None])[0]) for d, s in zip(want[0][1], want[1][1])]
    assert kl == pytest.approx(by_hand, abs=1e-12) and len(kl) == 7


# -- the pure views (app/views/steering.py) ---------------------------------------------------------------
def test_views_parse_with_messages_and_draw_valid_figures() -> None:
    import plotly.graph_objects as go

    from app.views import steering as vs

    tok = CharTokenizer("abc \n")
    assert vs.prompt_lines(tok, "ab\n\n  \nc a\n", "first") == [tok.encode("ab"), tok.encode("c a")]
    with pytest.raises(ValueError, match="line 2 of the second prompt set has characters .*'z'"):
        vs.prompt_lines(tok, "ab\nzz", "second")
    assert vs.token_id(tok, "b") == tok.encode("b")[0]
    for text, msg in (("", "type a token"), ("ab", "is 2 tokens"), ("q", "does not know: 'q'")):
        with pytest.raises(ValueError, match=msg):
            vs.token_id(tok, text)
    rows = [steering.SweepRow(a, p, (0, 4, 1)) for a, p in ((0.0, 1e-9), (2.0, 0.5))]
    for fig in (vs.sweep_figure(rows, "'a'"), vs.kl_figure([0.0, 1.5], 3)):
        go.Figure(fig.to_dict())  # plotly's validation: light_figure skips it
    assert vs.sweep_figure(rows, "'a'").data[0].y == (1e-9, 0.5)
    frame = vs.sweep_frame(rows, tok.decode)
    assert list(frame["first 40 tokens (greedy)"]) == ["a⏎b"] * 2 and list(frame["p(token)"]) == [1e-9, 0.5]


def test_an_sae_feature_is_a_source(root: Path) -> None:
    """An SAE feature's decoder direction as the steering vector: the bundled model's shipped SAE
    gives exactly W_dec[f] at its own hook; a feature out of range gets a message; a model with no
    SAE (the tiny run) says where to train one."""
    from app import resources
    from app.resources import steering as rs
    from gpt.sae import load_sae

    loaded = resources.load_model(str(Path(MAIN).parents[1] / "checkpoints" / "shakespeare-char"))
    choices = resources.sae_choices(loaded)
    assert choices, "the bundled model ships an SAE"
    folder = next(iter(choices.values()))
    sae = load_sae(folder)
    sv = rs.make_vector(loaded, ("sae", folder, 5))
    assert torch.equal(sv.vector, sae.W_dec[5].detach().float())
    assert (sv.layer, sv.site) == (sae.layer, sae.hook.split(".hook_", 1)[1])
    assert "SAE feature 5" in sv.source
    with pytest.raises(ValueError):
        rs.make_vector(loaded, ("sae", folder, sae.cfg.n_latents))
    at = steer_page()
    at.radio(key="steer_source").set_value("sae").run()
    assert not at.exception and "No SAE for this model yet" in texts(at)
