"""The sidebar Interventions panel under AppTest with the tiny trained run (2 layers, 2 heads):
ticking heads puts a banner on every inspector page and runs them under the edit, Next token shows
original and edited distributions with Δloss, Generate steps the edited model (parity with
gpt.generate.Generator), the Walkthrough's stages show the edited model's values, "turn off" works, bad neuron lists get their message, and a smaller model
clears the parts it does not have."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app import resources
from app.views import interventions as vi
from gpt.edit import Edits
from gpt.generate import Generator
from gpt.record import Recorder

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = {"attention": "screens/attention.py", "layers": "screens/layers.py",
         "next_token": "screens/next_token.py", "generate": "screens/generate.py",
         "walkthrough": "screens/walkthrough.py"}
PROMPT = "To be, or not to be"


@pytest.fixture
def root(app_root: Path) -> Path:
    return app_root


def start(page: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page(PAGES[page])
    at.session_state["prompt"] = PROMPT
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def banner(at: AppTest) -> str:
    return " ".join(w.value for w in at.warning if "Edited model" in w.value)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def tick_two_heads(at: AppTest) -> AppTest:
    at.checkbox(key="iv_h_0_0").check()
    at.checkbox(key="iv_h_1_1").check().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page", ["attention", "layers", "next_token", "walkthrough"])
def test_two_ticked_heads_show_the_banner_and_turn_off_removes_it(root: Path, page: str) -> None:
    at = start(page)
    assert banner(at) == ""
    tick_two_heads(at)
    assert "2 heads ablated (zero)" in banner(at)
    assert at.session_state["edit"] == Edits().ablate_heads(0, [0]).ablate_heads(1, [1])
    at.button(key="iv_off_banner").click().run()
    assert banner(at) == "" and at.session_state["edit"] is None
    assert not at.checkbox(key="iv_h_0_0").value


def test_next_token_shows_original_and_edited_distributions_and_dloss(root: Path) -> None:
    at = start("next_token")
    assert len(charts(at)) == 1
    tick_two_heads(at)
    figs = charts(at)
    titles = [f["layout"].get("title", {}).get("text", "") for f in figs]
    assert any("original" in t for t in titles) and any("edited" in t for t in titles)
    # Δloss against an independent computation: the model run directly, with and without the edit
    loaded = resources.load_model(at.session_state["model_ref"])
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT)])
    model, e = loaded.model, Edits().ablate_heads(0, [0]).ablate_heads(1, [1])
    with torch.no_grad():
        lo, le = model(ids, targets=ids)[0], model(ids, targets=ids, edit=e)[0]  # (1, T, V) each
    ce = lambda lg: torch.nn.functional.cross_entropy(lg[0, :-1].float(), ids[0, 1:], reduction="none")
    want = (ce(le) - ce(lo)).tolist()
    got = [f for f in figs if f["layout"].get("yaxis", {}).get("title", {}).get("text") == "Δloss (nats)"]
    assert len(got) == 1
    assert got[0]["data"][0]["y"] == pytest.approx(want, abs=1e-5)
    assert any(abs(v) > 1e-6 for v in want), "the ablation should change the loss somewhere"


def test_walkthrough_shows_the_edited_models_values(root: Path) -> None:
    at = start("walkthrough")
    at.selectbox(key="wt_stage").set_value("resid_post").run()
    at.selectbox(key="layer").set_value(1).run()

    def after_norms() -> list[float]:  # the norms of resid_post at each position, as drawn
        return [d["x"] for f in charts(at) for d in f["data"] if d.get("name") == "after"][0]
    before = after_norms()
    at.checkbox(key="iv_h_0_0").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "1 head ablated (zero)" in banner(at)
    loaded = resources.load_model(at.session_state["model_ref"])
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT)])
    want = {}
    for label, e in (("original", None), ("edited", Edits().ablate_heads(0, [0]))):
        rec = Recorder(["blocks.1.hook_resid_post"])
        with torch.no_grad():
            loaded.model(ids, rec=rec, edit=e)
        want[label] = rec["blocks.1.hook_resid_post"][0].float().norm(dim=-1).tolist()  # (T,)
    assert before == pytest.approx(want["original"], abs=1e-5)
    assert after_norms() == pytest.approx(want["edited"], abs=1e-5)
    assert max(abs(a - b) for a, b in zip(want["original"], want["edited"])) > 1e-4


def test_walkthrough_training_tab_trains_on_the_edited_model(root: Path) -> None:
    at = start("walkthrough")
    at.session_state["wt_tab"] = "Training"
    at.checkbox(key="iv_h_0_0").check().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: float(m.value) for m in at.metric}["loss returned by forward(x, y)"]
    loaded = resources.load_model(at.session_state["model_ref"])
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT)])
    with torch.no_grad():  # forward(x, y) under the same ablation, and without it
        edited = loaded.model(ids[:, :-1], ids[:, 1:], edit=Edits().ablate_heads(0, [0]))[1].item()
        original = loaded.model(ids[:, :-1], ids[:, 1:])[1].item()
    assert abs(edited - original) > 1e-3, "the ablation should change the loss"
    assert shown == pytest.approx(edited, abs=1e-3)


def test_generate_steps_the_edited_model(root: Path) -> None:
    at = start("generate")
    tick_two_heads(at)
    assert "2 heads ablated (zero)" in banner(at)
    for _ in range(6):
        at.button(key="gen_step").click().run()
    assert not at.exception
    gen = at.session_state["gen"]
    loaded = resources.load_model(at.session_state["model_ref"])
    e = Edits().ablate_heads(0, [0]).ablate_heads(1, [1])
    ref = Generator(loaded.model, gen["prompt"], temperature=1.0, seed=1337, edit=e)
    want = [ref.step().token for _ in range(6)]
    assert list(gen["ids"][len(gen["prompt"]):]) == want


def test_mean_ablation_runs_on_generate(root: Path) -> None:
    at = start("generate")
    at.radio(key="iv_how").set_value("mean")
    tick_two_heads(at)
    assert "2 heads ablated (mean)" in banner(at)
    at.button(key="gen_step").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.session_state["gen"]["ids"]) == len(at.session_state["gen"]["prompt"]) + 1


@pytest.mark.parametrize("text, says", [("3, x", "'x' is not a whole number"),
                                        ("1, 9999", "9999 is outside this layer's 0..255")])
def test_bad_neuron_list_gets_its_message(root: Path, text: str, says: str) -> None:
    at = start("next_token")
    at.text_input(key="iv_neurons").input(text).run()
    assert not at.exception
    assert any(says in e.value for e in at.error), [e.value for e in at.error]
    assert at.session_state["edit"] is None  # nothing half-applied; the text stays to be fixed
    assert at.text_input(key="iv_neurons").value == text


def test_neurons_listed_are_ablated(root: Path) -> None:
    at = start("next_token")
    at.text_input(key="iv_neurons").input("1, 5").run()
    assert at.session_state["edit"] == Edits().ablate_neurons(0, [1, 5])
    assert "2 neurons ablated (zero)" in banner(at)


def test_a_smaller_model_clears_the_parts_it_lacks(root: Path) -> None:
    at = start("attention")
    # as if the previous model had 4 layers x 4 heads: L3H3 and MLP 3 ticked there
    at.session_state["_iv_shape"] = (4, 4, 512)
    at.session_state["iv_spec"] = {"how": "zero", "heads": ((0, 1), (3, 3)), "mlp": (3,), "neurons": (3, (7,))}
    at.session_state["iv_h_3_3"] = True
    at.session_state["iv_mlp_3"] = True
    at.session_state["iv_h_0_1"] = True
    at.run()
    assert not at.exception
    assert at.session_state["iv_spec"]["heads"] == ((0, 1),)
    assert at.session_state["iv_spec"]["mlp"] == ()
    assert at.session_state["edit"] == Edits().ablate_heads(0, [1])
    assert any("smaller" in c.value for c in at.caption)


def test_clamp_and_build_are_pure() -> None:
    spec = {"how": "zero", "heads": ((0, 1), (2, 0), (1, 5)), "mlp": (0, 4), "neurons": (1, (3, 300))}
    assert vi.clamp(spec, 2, 2, 256) == {"how": "zero", "heads": ((0, 1),), "mlp": (0,), "neurons": (1, (3,))}
    assert vi.build(vi.EMPTY) is None
    assert vi.build({"how": "zero", "heads": ((1, 0),), "mlp": (), "neurons": (0, ())}).key == \
        Edits().ablate_heads(1, [0]).key
