"""trainers/metrics.py: the incremental metrics reader gives what a full read gives, as the file
grows, when its last line is half-written, and when it is replaced or shrinks."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from trainers.metrics import loss_series
from trainers import runs
from trainers.metrics import MetricsTail


def _row(it: int) -> dict:
    r: dict = {"iter": it, "train_loss": 3.0 / (1 + it), "lr": 1e-3, "tokens_per_s": 1000.0 + it,
               "elapsed_s": 0.1 * it}
    return r


def _as_lists(series: dict) -> dict:
    return {k: (list(xs), list(ys)) for k, (xs, ys) in series.items()}


def test_tail_matches_a_full_read_as_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(tmp_path)
    assert tail.update().rows == 0  # no file yet: no rows, no error
    for it in range(0, 300, 10):
        runs.append_jsonl(path, _row(it))
        if it % 50 == 0:
            runs.append_jsonl(path, {"iter": it, "val_loss": 2.0 + 1 / (1 + it), "train_loss_eval": 1.9})
        if it % 70 == 0:  # poll at irregular points
            got = tail.update()
            assert _as_lists(got.series) == loss_series(runs.read_metrics(tmp_path))
    got = tail.update()
    assert _as_lists(got.series) == loss_series(runs.read_metrics(tmp_path))
    assert got.rows == 30 + 6 and got.last_tokens_per_s == 1290.0
    assert len(got.series["train"][0]) == 30 and len(got.series["val"][0]) == 6


def test_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    runs.append_jsonl(path, _row(0))
    line = json.dumps(_row(5)) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[:17])  # the writer mid-flush
    tail = MetricsTail(tmp_path)
    assert list(tail.update().series["train"][0]) == [0.0]
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[17:])
    assert list(tail.update().series["train"][0]) == [0.0, 5.0]


def test_replaced_or_shrunk_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for it in range(10):
        runs.append_jsonl(path, _row(it))
    tail = MetricsTail(tmp_path)
    assert tail.update().rows == 10
    # a resume rewrites the file without the rows it redoes (trainer._truncate_metrics: os.replace)
    tmp = tmp_path / ".metrics.tmp"
    tmp.write_text("".join(json.dumps(_row(it)) + "\n" for it in range(4)), encoding="utf-8")
    os.replace(tmp, path)
    got = tail.update()
    assert got.rows == 4 and list(got.series["train"][0]) == [0.0, 1.0, 2.0, 3.0]
    path.write_text(json.dumps(_row(0)) + "\n", encoding="utf-8")  # same inode, shorter
    assert tail.update().rows == 1


def test_bad_lines_and_values_are_skipped_and_copies_are_independent(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('not json\n{"iter": 1, "train_loss": NaN}\n{"iter": 2, "train_loss": 1.5}\n'
                    '["a list"]\n{"train_loss": 9}\n', encoding="utf-8")
    tail = MetricsTail(tmp_path)
    got = tail.update()
    assert got.rows == 2 and list(got.series["train"][1]) == [1.5]
    assert got.last_tokens_per_s is None and not math.isnan(got.series["train"][1][0])
    runs.append_jsonl(path, _row(3))
    assert list(got.series["train"][0]) == [2.0]  # an earlier result does not change under us
    assert list(tail.update().series["train"][0]) == [2.0, 3.0]


def test_values_no_float_can_hold_are_skipped_not_raised(tmp_path: Path) -> None:
    """A hand-edited metrics.jsonl: an integer of 400 digits is valid JSON that float() refuses
    (OverflowError took the Train page down), and a bool is not an iteration."""
    big = "1" + "0" * 400
    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{{"iter": {big}, "train_loss": 1.0}}\n{{"iter": true, "train_loss": 1.0}}\n'
                    f'{{"iter": 4, "train_loss": {big}, "val_loss": 2.0, "tokens_per_s": {big}}}\n'
                    + "[" * 100_000 + "\n", encoding="utf-8")
    got = MetricsTail(tmp_path).update()
    assert got.rows == 1 and list(got.series["val"][0]) == [4.0] and len(got.series["train"][0]) == 0
    assert got.last_tokens_per_s is None
    assert loss_series(runs.read_metrics(tmp_path)) == {"train": ([], []), "val": ([4.0], [2.0]),
                                                        "train (eval)": ([], [])}
