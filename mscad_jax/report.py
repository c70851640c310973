"""Markdown tables for people: the per-run summary and the per-class sweep tables."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# results.json keys of earlier versions -> today's (one name per concept).
LEGACY_RESULT_KEYS = {"auroc_per_scale": "auroc_detector_per_scale", "auroc_training_free": "auroc_a0",
                      "auroc_training_free_per_scale": "auroc_a0_per_scale"}


def current_keys(results: Mapping[str, Any]) -> dict[str, Any]:
    """A results.json of any version under today's keys (tools that read old sweeps)."""
    return {LEGACY_RESULT_KEYS.get(k, k): v for k, v in results.items()}


def lookup(results: Mapping[str, Any], key: str) -> Any:
    """results[key], a dotted key reaching into nested dicts ('validation.auroc'); None
    where any part is missing."""
    value: Any = results
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _is_number(v: Any) -> bool:
    # bool is an Integral subclass but "True" is not something to average.
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _fmt_cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if _is_number(v):
        return f"{float(v):.4f}"
    # A literal pipe would split the cell.
    return str(v).replace("|", "\\|")


def results_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None,
                  mean_row: bool = True) -> str:
    """Formats rows (e.g. one per class) as a markdown table with a mean row.

    Args:
      rows: one mapping per table row. Missing keys and None print as "-".
      keys: column order; defaults to the union of the rows' keys in first-seen
        order.
      mean_row: False leaves out the mean row.

    Returns:
      Markdown text: header, separator, one line per row and, if any column is
      numeric, a final "mean" row. A column counts as numeric when all its
      non-missing values are real numbers (bools excluded); its mean ignores
      missing values. The "mean" label goes in the first non-numeric column, or
      in an extra leading column if every column is numeric.
    """
    if keys is None:
        keys = list(dict.fromkeys(k for row in rows for k in row))
    keys = list(keys)

    numeric: dict[str, bool] = {}
    for k in keys:
        present = [row[k] for row in rows if row.get(k) is not None]
        numeric[k] = bool(present) and all(_is_number(v) for v in present)

    label_col = next((k for k in keys if not numeric[k]), None)
    extra_col = mean_row and label_col is None and any(numeric.values())
    header = ([""] if extra_col else []) + [_fmt_cell(k) for k in keys]

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = ([""] if extra_col else []) + [_fmt_cell(row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")

    if mean_row and rows and any(numeric.values()):
        cells = ["mean"] if extra_col else []
        for k in keys:
            if numeric[k]:
                vals = [float(row[k]) for row in rows if row.get(k) is not None]
                cells.append(f"{float(np.mean(vals)):.4f}")
            else:
                cells.append("mean" if k == label_col else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SUMMARY_KEYS = ("dataset", "protocol", "normal_class", "scorer", "auroc", "aupr", "fpr95", "auroc_detector",
                "auroc_a0", "auroc_knn", "auroc_rotation", "auroc_pixel_knn_floor", "pixel_knn_floor_k", "pixel_auroc",
                "linear_eval_accuracy", "num_test", "num_anomalies", "validation.auroc", "validation.auroc_detector",
                "validation.auroc_knn", "validation.auroc_pixel_knn_floor", "threshold", "threshold_test_fpr",
                "threshold_test_tpr")


def format_summary(results: dict[str, Any]) -> str:
    """The headline results as a two-column markdown table."""
    rows = ["| result | value |", "|---|---|"]
    results = current_keys(results)
    for k in SUMMARY_KEYS:
        v = lookup(results, k)
        rows.append(f"| {k} | {'-' if v is None else f'{v:.4f}' if isinstance(v, float) else v} |")
    return "\n".join(rows)
