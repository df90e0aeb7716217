"""The Features page under AppTest with the tiny trained run: without an SAE it offers training; with
one (trained here by trainers.train_sae) it lists the features sorted by frequency or max activation,
shows a feature's examples, histogram, logit table and activation on the prompt, the features on the
prompt; and its buttons put the feature in the sidebar Interventions, whose edit every page runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.views import features as vf
from gpt.sae import load_sae
from gpt.sae_index import load_index, sae_path

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
HOOK = "blocks.1.hook_resid_post"
PROMPT = "To be, or not to be"


@pytest.fixture
def with_sae(app_root: Path) -> Path:
    from trainers.train_sae import SAETrainConfig, train_sae

    run = app_root / "tiny-run"
    cfg = SAETrainConfig(hook=HOOK, steps=30, batch_tokens=256, eval_every=30, save_every=10, val_windows=4,
                         index_windows=8, expansion=2, k=4)
    assert train_sae(run, cfg, log=lambda _m: None)["state"] == "finished"
    return run


def start(page: str = "screens/features.py") -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    at.switch_page(page)
    at.session_state["prompt"] = PROMPT
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_without_an_sae_it_offers_training(app_root: Path) -> None:
    at = start()
    assert any("No SAE for this model yet" in i.value for i in at.info)
    assert any(b.label == "Train SAE" for b in at.button)
    assert at.selectbox(key="_sae_layer").value == 1  # the middle layer of 2


def test_feature_list_examples_and_prompt(with_sae: Path) -> None:
    at = start()
    idx = load_index(sae_path(with_sae, HOOK))
    frames = [d.value for d in at.dataframe]
    strip = next(f for f in frames if "token" in f.columns)
    assert len(strip) == len(PROMPT)  # one row per character of the prompt
    table = next(f for f in frames if "frequency %" in f.columns)
    assert list(table["frequency %"]) == sorted(table["frequency %"], reverse=True)
    assert (table["frequency %"] > 0).all()  # dead features hidden by default
    at.radio(key="ft_sort").set_value("max activation").run()
    table = next(d.value for d in at.dataframe if "frequency %" in d.value.columns)
    assert list(table["max act"]) == sorted(table["max act"], reverse=True)
    f = int(idx.freq.argmax())
    at.number_input(key="ft_feature").set_value(f).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(h.value == f"Feature {f}" for h in at.subheader)
    html = " ".join(m.value for m in at.markdown)
    assert html.count("activation=") > len(PROMPT)  # examples and the prompt, shaded token by token
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert sum(fig["data"][0]["y"]) == int(idx.hist[f].sum())
    logits = next(d.value for d in at.dataframe if "promotes" in d.value.columns)
    assert len(logits) == 10


def test_buttons_put_the_feature_in_the_sidebar(with_sae: Path) -> None:
    at = start()
    f = int(at.number_input(key="ft_feature").value)
    at.button(key="ft_ablate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    edit = at.session_state["edit"]
    assert edit.description == "1 SAE feature ablated" and edit.key[0][:2][0] == "sae_ablate"
    assert any("Edited model" in w.value for w in at.warning)
    at.button(key="ft_steer").click().run()
    assert at.session_state["edit"].description == "1 SAE feature steered"
    at.slider(key="iv_sae_alpha").set_value(5.0).run()
    assert at.session_state["edit"].key[-1][-1] == 5.0
    # the edit runs on Next token: the edited distribution differs from the original
    at.switch_page("screens/next_token.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) >= 3  # original, edited, Δloss
    sae = load_sae(sae_path(with_sae, HOOK))
    assert at.session_state["iv_spec"]["sae"][1:] == (f, "steer", 5.0) and sae.cfg.n_latents == 128
    at.button(key="iv_off_sidebar").click().run()
    assert at.session_state["edit"] is None


def test_views_sort_and_shade() -> None:
    class Idx:
        n_latents = 3
        freq = torch.tensor([0.1, 0.0, 0.3])
        max_act = torch.tensor([5.0, 0.0, 1.0])
        mean_act = torch.tensor([1.0, 0.0, 0.5])

    t = vf.feature_table(Idx(), "max activation")
    assert list(t["feature"]) == [0, 2, 1]
    assert list(vf.feature_table(Idx(), "frequency", min_freq=1e-9)["feature"]) == [2, 0]
    html = vf.shaded_html(["a", "b"], [0.0, 2.0], 2.0, peak=1)
    assert html.count("<span") == 2 and "outline" in html
    strip = vf.strip_table(torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]), ["x", "y"], top=2)
    assert list(strip.iloc[0][["#1", "#2"]]) == ["f 1 (2.00)", "f 2 (1.00)"]
    assert list(strip.iloc[1][["#1", "#2"]]) == ["", ""]


def test_export_bar_is_offered_and_computes_nothing_on_load(with_sae: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import export_history

    calls: list[str] = []
    monkeypatch.setattr(export_history, "page_tables", lambda *a, **k: calls.append("tables"))
    monkeypatch.setattr(export_history, "page_notebook", lambda *a, **k: calls.append("notebook"))
    at = start()
    labels = [b.label for b in at.download_button]
    assert {"Data (NPZ)", "Data (CSV)", "Open as notebook"} <= set(labels), labels
    assert "Figure (PNG)" not in labels  # no Altair chart here: the histogram is plotly (its modebar saves PNG)
    assert calls == []
