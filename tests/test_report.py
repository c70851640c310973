"""Markdown result tables."""

from __future__ import annotations

import numpy as np

from mscad_jax import report


# ---------------------------------------------------------------------------
# results_table
# ---------------------------------------------------------------------------


def test_results_table_format_and_mean_row():
    rows = [
        {"class": "bottle", "auroc": 0.9, "pixel_auroc": 0.8, "n": 10},
        {"class": "cable", "auroc": np.float32(0.7), "pixel_auroc": None, "n": 20},
    ]
    table = report.results_table(rows, ["class", "auroc", "pixel_auroc", "n"])
    lines = table.strip().split("\n")
    assert lines[0] == "| class | auroc | pixel_auroc | n |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| bottle | 0.9000 | 0.8000 | 10 |"
    assert lines[3] == "| cable | 0.7000 | - | 20 |"
    # Mean ignores the missing pixel_auroc instead of treating it as 0.
    assert lines[4] == "| mean | 0.8000 | 0.8000 | 15.0000 |"
    assert len(lines) == 5


def test_results_table_all_numeric_and_default_keys():
    table = report.results_table([{"x": 1.0}, {"x": 2.0}])
    lines = table.strip().split("\n")
    assert lines[0] == "|  | x |"
    assert lines[-1] == "| mean | 1.5000 |"


def test_results_table_without_numeric_columns_has_no_mean_row():
    table = report.results_table([{"a": "x|y"}], ["a"])
    assert "mean" not in table
    assert "x\\|y" in table


def test_results_table_without_a_mean_row():
    text = report.results_table([{"stage": "stage1", "flops": 2.0}, {"stage": "stage2", "flops": 4.0}],
                                mean_row=False)
    assert "mean" not in text and text.count("\n") == 4
