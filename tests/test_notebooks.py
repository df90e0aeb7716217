"""app/notebooks.py: every generated notebook is valid nbformat 4, runs as a plain script in a
subprocess (no Jupyter server, no display), and the arrays it saves equal the app's export of the
same view (app.exporting.page_tables), under an edit and across checkpoints too."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app import exporting as ex
from app import notebooks as nb
from app.catalog import REPO
from app.inspection import Inspection, Loaded
from app.tracecache import record_forward
from app.views import attention as va
from app.views import layers as vl
from app.views import tokens as vt
from gpt import attribution, patching
from gpt.checkpoint import load, snapshot_dir
from gpt.edit import Edits

torch.set_num_threads(1)
BUNDLED = REPO / "checkpoints" / "shakespeare-char"


@pytest.fixture(scope="module")
def loaded() -> Loaded:
    model, tok, meta = load(BUNDLED)
    return Loaded(model.eval(), tok, meta, str(BUNDLED), "bundled", model.config)


def run_notebook(text: bytes, tmp: Path) -> dict[str, np.ndarray]:
    """Run the notebook's code cells as one script with the venv's python; return what it saved."""
    assert nb.is_valid(text)
    script, out = tmp / "nb.py", tmp / "nb.npz"
    script.write_text(nb.code_of(text))
    env = {**os.environ, nb.NPZ_ENV: str(out), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no notebook display" in done.stdout  # the plotting cell tolerated the missing display
    assert (tmp / "nanolens-figure.html").stat().st_size > 1000
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def same(app: list[ex.Table], got: dict[str, np.ndarray]) -> None:
    """The notebook saved every table the app exports, with equal values (float rounding aside)."""
    assert sorted(got) == sorted(t.name for t in app)
    for t in app:
        if t.values.dtype.kind in "US":
            assert got[t.name].tolist() == t.values.tolist(), t.name
        else:
            np.testing.assert_allclose(got[t.name], t.values, rtol=1e-5, atol=1e-5, err_msg=t.name)


def inspection(loaded: Loaded, names, edit: Edits | None = None, text: str = "ROMEO:\nBut soft, what light",
               layer: int = 3, head: int = 2) -> Inspection:
    ids = tuple(loaded.tokenizer.encode(text))
    return Inspection.of(loaded, ids, record_forward(loaded.model, ids, names, edit), names, layer, head, edit)


CASES = {
    "attention": (va.NAMES, {"query": 7}),
    "layers": (vl.NAMES, {}),
    "next_token": (vt.NAMES, {"pos": 5, "temperature": 0.8}),
}


@pytest.mark.parametrize("page", list(CASES))
def test_inspector_notebooks_recompute_the_app_numbers(page: str, loaded: Loaded, tmp_path: Path) -> None:
    names, settings = CASES[page]
    insp = inspection(loaded, names)
    text = nb.page_notebook(page, insp, settings)
    assert str(BUNDLED.resolve()) in text.decode() and "ROMEO" in text.decode()  # path and prompt are in it
    same(ex.page_tables(page, insp, settings), run_notebook(text, tmp_path))


def test_attribution_notebook_under_a_mean_ablation(loaded: Loaded, tmp_path: Path) -> None:
    ids = loaded.tokenizer.encode("ROMEO:\nBut soft, what light")
    edit = Edits().ablate_heads(2, [0, 3], "mean", ids).ablate_mlp(1)
    insp = inspection(loaded, tuple(attribution.NEEDS), edit=edit)
    tok = int(insp.rec["logits"][0, 10].argmax())
    settings = {"pos": 10, "token": tok, "other": (tok + 1) % loaded.config.vocab_size}
    text = nb.page_notebook("attribution", insp, settings)
    assert "ablate_heads" in text.decode()  # the edit travels as plain data
    app = ex.page_tables("attribution", insp, settings)
    assert np.abs(app[1].values[2, [0, 3]]).max() > 0  # mean ablation: the heads still write their mean
    same(app, run_notebook(text, tmp_path))


def test_patch_notebook_with_a_snapshot_as_source(loaded: Loaded, tmp_path: Path) -> None:
    tok = loaded.tokenizer
    clean, corrupt = tok.encode("ROMEO: good"), tok.encode("JULIO: good")
    answers = (tok.encode("n")[0], tok.encode("s")[0])
    src_ref = str(snapshot_dir(BUNDLED, 1000))
    source = load(src_ref)[0].eval()
    res = patching.sweep(loaded.model, clean, corrupt, "resid_pre", patching.metric_named("logit_diff", *answers),
                         source_model=source, direction="noise")
    settings = {"clean": clean, "corrupt": corrupt, "site": "resid_pre", "metric": "logit_diff",
                "answers": answers, "direction": "noise", "source": src_ref}
    text = nb.page_notebook("patch", None, settings, loaded=loaded)
    app = ex.page_tables("patch", None, {"result": res, "labels": [str(i) for i in clean],
                                         "n_head": loaded.config.n_head})
    same(app, run_notebook(text, tmp_path))


def test_an_edit_holding_a_tensor_is_refused_with_a_message(loaded: Loaded) -> None:
    edit = Edits().add("blocks.0.hook_resid_post", torch.ones(loaded.config.n_embd))
    insp = inspection(loaded, vt.NAMES, edit=edit)
    with pytest.raises(ValueError, match="turn it off in the sidebar"):
        nb.page_notebook("next_token", insp, {"pos": 1})
    with pytest.raises(ValueError, match="no notebook for page"):
        nb.notebook("home", {}, "x")
