"""app/export_history.py: the Timeline's and the Features page's tables hold the page's own numbers
(checked against the files the jobs wrote and against independent forwards), survive the NPZ and CSV
round trip with their labels, and each generated notebook, run as a plain script in a subprocess,
saves arrays equal to the app's export (to 1e-5)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app import export_history as eh
from app import exporting as ex
from app.inspection import Inspection, Loaded
from gpt.checkpoint import list_snapshots, load
from gpt.edit import Edits
from gpt.record import Recorder
from tests.test_notebooks import run_notebook, same

torch.set_num_threads(1)
HOOK = "blocks.1.hook_resid_post"


def insp_of(ckpt: Path, text: str, edit: Edits | None = None) -> Inspection:
    model, tok, meta = load(ckpt)
    loaded = Loaded(model.eval(), tok, meta, str(ckpt), "test", model.config)
    return Inspection.of(loaded, tuple(tok.encode(text)), None, (), 1, 1, edit)


def own_loss(ckpt: str, ids: tuple[int, ...]) -> float:
    """The prompt's loss, with the model's own targets= path (not gpt.analysis)."""
    model = load(ckpt)[0].eval()
    with torch.no_grad():
        return float(model(torch.tensor([ids[:-1]]), targets=torch.tensor([ids[1:]]))[1])


def round_trips(tables: list[ex.Table]) -> None:
    """NPZ and CSV give back every table's values and labels."""
    back = ex.read_npz(ex.to_npz(tables))
    for t in tables:
        assert back[t.name].tolist() == t.values.tolist() or np.allclose(back[t.name], t.values, equal_nan=True)
        for axis, labels in t.axes:
            assert back[f"{t.name}.{axis}"].tolist() == list(labels)
        if t.values.dtype.kind in "fiu" and t.values.ndim <= 2 and t.values.size:
            labels, vals = ex.read_csv(ex.to_csv(t), t.values.ndim)
            assert labels == [list(ls) for _, ls in t.axes][: len(labels)]
            np.testing.assert_array_equal(vals, t.values.astype(np.float64))


# -- Timeline ----------------------------------------------------------------------------------------
@pytest.fixture
def analysed(tmp_path: Path, tiny_checkpoint):
    from tests.analysis_fixture import analysed_run

    return analysed_run(tmp_path / "root", tiny_checkpoint.run_dir, tiny_checkpoint.text)


def test_timeline_tables_are_the_analysis_files_and_the_prompt_losses(analysed, tiny_checkpoint) -> None:
    paths = {it: str(p) for it, p in list_snapshots(analysed.run_dir)}
    insp = insp_of(Path(paths[max(paths)]), tiny_checkpoint.text[:24])
    settings = {"run": str(analysed.run_dir), "paths": paths, "score": "induction_random"}
    tables = {t.name: t for t in eh.page_tables("timeline", insp, settings)}
    S = len(analysed.iters)
    for name, v in analysed.scores.items():  # as the job's writer wrote them (JSON: float rounding aside)
        t = tables[f"scores_{name}"]
        np.testing.assert_allclose(t.values, v.numpy(), atol=1e-6)
        assert t.axes[0] == ("iter", tuple(str(i) for i in analysed.iters)) and t.axes[1][1][1] == "L1"
    val = tables["loss_val"]
    assert val.values.tolist() == [x for _, x in analysed.val]
    assert val.axes[0][1] == tuple(str(it) for it, _ in analysed.val)
    ev = tables["events"]  # the jump first (L1H1 between snapshot 1 and 2), then the val loss's fall
    jump = ev.values[0]
    assert jump.tolist() == pytest.approx([analysed.iters[1], analysed.iters[2],
                                           float(analysed.scores["induction_random"][1, 1, 1]),
                                           float(analysed.scores["induction_random"][2, 1, 1])], abs=1e-6)
    assert ev.axes[0][1][0].startswith("L1H1's induction score rose") and "val loss fell sharply" in ev.axes[0][1][1]
    pl = tables["prompt_loss"]
    assert pl.values.shape == (S,)
    assert pl.values.tolist() == pytest.approx([own_loss(paths[it], insp.ids) for it in analysed.iters], abs=1e-5)
    round_trips(list(tables.values()))
    # what the page already read gives the same tables
    from gpt.score_history import read_history

    again = eh.page_tables("timeline", insp, {**settings, "history": read_history(analysed.run_dir)})
    assert [t.name for t in again] == list(tables) and all(np.array_equal(a.values, tables[a.name].values, equal_nan=True)
                                                           for a in again)


def test_timeline_notebook_recomputes_the_analysis_view(analysed, tiny_checkpoint, tmp_path: Path) -> None:
    paths = {it: str(p) for it, p in list_snapshots(analysed.run_dir)}
    insp = insp_of(Path(paths[max(paths)]), tiny_checkpoint.text[:24])
    settings = {"run": str(analysed.run_dir), "paths": paths, "score": "induction_natural"}
    text = eh.page_notebook("timeline", insp, settings)
    assert str(analysed.run_dir.resolve()) in text.decode() and "'analysis'" in text.decode()
    app = eh.page_tables("timeline", insp, settings)
    assert len(next(t for t in app if t.name == "events").values) >= 2  # markers to compare
    same(app, run_notebook(text, tmp_path))


def test_timeline_without_analysis_scores_every_snapshot(tiny_checkpoint, tmp_path: Path) -> None:
    from gpt.heads import head_scores

    run = tmp_path / "plain" / "tiny-run"
    shutil.copytree(tiny_checkpoint.run_dir, run)
    paths = {it: str(p) for it, p in list_snapshots(run)}
    insp = insp_of(Path(paths[max(paths)]), tiny_checkpoint.text[:20])
    per = [(it, head_scores(load(p)[0])) for it, p in paths.items()]  # what the page scores (cached there)
    settings = {"run": str(run), "paths": paths, "score": "prev_token", "snapshot_scores": per}
    app = eh.page_tables("timeline", insp, settings)
    names = {t.name for t in app}
    assert {"scores_prev_token", "scores_induction", "scores_entropy", "scores_first_token"} <= names
    assert "events" not in names  # no markers without the analysis
    ind = next(t for t in app if t.name == "scores_induction")
    np.testing.assert_allclose(ind.values[-1], per[-1][1].induction.numpy(), atol=0)
    text = eh.page_notebook("timeline", insp, settings)
    assert "'snapshots'" in text.decode()
    (tmp_path / "nb").mkdir()
    same(app, run_notebook(text, tmp_path / "nb"))


# -- Features ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sae_run(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainers.train_sae import SAETrainConfig, train_sae

    run = tmp_path_factory.mktemp("sae") / "tiny-run"
    shutil.copytree(tiny_checkpoint.run_dir, run)
    cfg = SAETrainConfig(hook=HOOK, steps=30, batch_tokens=256, eval_every=30, save_every=10, val_windows=4,
                         index_windows=8, expansion=2, k=4)
    assert train_sae(run, cfg, log=lambda _m: None)["state"] == "finished"
    return run


def test_features_tables_are_the_index_and_independent_forwards(sae_run: Path, tiny_checkpoint) -> None:
    from gpt.sae import load_sae
    from gpt.sae_index import load_index, sae_path

    folder = sae_path(sae_run, HOOK)
    insp = insp_of(sae_run / "latest", tiny_checkpoint.text[:30])
    idx = load_index(folder)
    f = int(idx.freq.argmax())
    tables = {t.name: t for t in eh.page_tables("features", insp, {"folder": str(folder), "feature": f})}
    fl = tables["feature_list"]
    assert fl.values.shape == (idx.n_latents, 3) and fl.axes[1][1] == ("frequency", "max_act", "mean_act")
    np.testing.assert_array_equal(fl.values[:, 0], idx.freq.numpy())
    assert tables["histogram"].values.sum() == int(idx.hist[f].sum()) > 0
    k = len(tables["example_windows"].values)
    assert k == int((idx.top_win[f] >= 0).sum()) > 0
    w, p = tables["example_windows"].values[0]
    peak = tables["example_tokens"].values[0, tables["example_tokens"].axes[1][1].index("0")]  # offset 0
    assert peak == insp.token_str(int(idx.windows[w, p]))  # the example's peak token
    # the prompt's activations and the logit weights, from an independent forward and matmul
    sae, model = load_sae(folder), insp.model
    rec = Recorder([HOOK])
    with torch.no_grad():
        model(torch.tensor([insp.ids]), rec=rec)
        lat = sae.encode(rec[HOOK][0])  # (T, n)
        logits = model.lm_head.weight @ (model.transformer.ln_f.weight * sae.W_dec[f])  # (V,)
    np.testing.assert_allclose(tables["prompt_activation"].values, lat[:, f].numpy(), atol=1e-5)
    np.testing.assert_allclose(tables["promoted"].values, logits.topk(10).values.numpy(), atol=1e-5)
    assert tables["promoted"].axes[0][1][0] == f"{int(logits.argmax())}:{insp.token_str(int(logits.argmax()))}"
    np.testing.assert_allclose(tables["suppressed"].values, logits.sort().values[:10].numpy(), atol=1e-5)
    top = tables["prompt_top_features"].values  # (T, 3), -1 where fewer fire
    for t in range(len(insp.ids)):
        firing = [i for i in top[t] if i >= 0]
        assert set(firing) <= set(torch.nonzero(lat[t] > 0).flatten().tolist())
        assert len(firing) == min(3, int((lat[t] > 0).sum()))
    round_trips(list(tables.values()))


@pytest.mark.parametrize("edited", [False, True])
def test_features_notebook_recomputes_the_page(sae_run: Path, tiny_checkpoint, tmp_path: Path, edited: bool) -> None:
    from gpt.sae_index import load_index, sae_path

    folder = sae_path(sae_run, HOOK)
    edit = Edits().ablate_heads(0, [1], "zero") if edited else None
    insp = insp_of(sae_run / "latest", tiny_checkpoint.text[:30], edit)
    f = int(load_index(folder).max_act.argmax())
    settings = {"folder": str(folder), "feature": f}
    app = eh.page_tables("features", insp, settings)
    if edited:  # the edit reaches the prompt's activations (the index, held out, does not change)
        plain = eh.page_tables("features", insp_of(sae_run / "latest", tiny_checkpoint.text[:30]), settings)
        assert not np.allclose(app[-1].values, plain[-1].values)
    text = eh.page_notebook("features", insp, settings)
    assert str(Path(folder).resolve()) in text.decode() and f"FEATURE = {f}" in text.decode()
    same(app, run_notebook(text, tmp_path))


def test_exports_need_the_page_inspection() -> None:
    with pytest.raises(ValueError, match="needs the page's Inspection"):
        eh.page_tables("features", None, {})
    with pytest.raises(ValueError, match="needs the page's Inspection"):
        ex.page_tables("timeline", None, {})  # through app.exporting's dispatch
