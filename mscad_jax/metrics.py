"""Evaluation metrics, score fusion and result writing for AnoMem (NumPy only).

Conventions used throughout the package:

* label ``1`` is an anomaly (the positive class), label ``0`` is normal;
* a higher score means "more anomalous".

All metric values come from scikit-learn; this module only validates inputs
(so that a silently broken evaluation raises instead of printing a plausible
number), combines per-scale scores, and writes results to disk.

This module deliberately does not import JAX, so evaluation scripts and
notebooks can use it on plain NumPy arrays.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "SIGMA_FLOOR",
    "atomic_write",
    "combine_scores",
    "fpr_at_tpr",
    "image_metrics",
    "per_scale_auroc",
    "pixel_auroc",
    "results_table",
    "standardize",
    "validate_scores_labels",
    "write_json_atomic",
]

# Standard deviations below this are treated as this value, so a scale whose
# scores are constant on the normal data cannot produce inf/NaN when fused.
SIGMA_FLOOR = 1e-12


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _as_binary_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Returns `labels` as an int64 array, checking every value is 0 or 1."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {arr.dtype}.")
    # Checked before the cast so that e.g. 0.5 or 255 are rejected rather than
    # truncated/interpreted; a mask stored as 0/255 is a common silent bug.
    bad = ~np.isin(arr, (0, 1))
    if np.any(bad):
        values = np.unique(arr[bad])[:10]
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (anomaly); found "
            f"{int(bad.sum())} other values, e.g. {values.tolist()}."
        )
    return arr.astype(np.int64)


def validate_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts a (scores, labels) pair for image-level metrics.

    Args:
      scores: 1-D array of finite anomaly scores (higher = more anomalous).
      labels: 1-D array of the same length with values in {0, 1} (1 = anomaly).

    Returns:
      `(scores, labels)` as float64 and int64 arrays.

    Raises:
      ValueError: if either input is not 1-D, the lengths differ, a label is
        not 0/1, only one class is present, or a score is NaN/inf. The message
        says which check failed and gives the relevant counts.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}.")
    y_raw = np.asarray(labels)
    if y_raw.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y_raw.shape}.")
    if s.shape[0] != y_raw.shape[0]:
        raise ValueError(
            f"scores and labels must have the same length, got {s.shape[0]} scores "
            f"and {y_raw.shape[0]} labels."
        )
    y = _as_binary_labels(y_raw)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "labels must contain both classes (0 = normal, 1 = anomaly) for "
            f"AUROC/AUPR/FPR95; got {n_neg} normal and {n_pos} anomalous samples."
        )
    finite = np.isfinite(s)
    if not np.all(finite):
        n_nan = int(np.isnan(s).sum())
        n_inf = int(np.isinf(s).sum())
        raise ValueError(
            f"scores must be finite; got {n_nan} NaN and {n_inf} inf values "
            f"out of {s.shape[0]} (first bad index {int(np.argmin(finite))})."
        )
    return s, y


# ---------------------------------------------------------------------------
# Image-level metrics
# ---------------------------------------------------------------------------


def fpr_at_tpr(scores: Any, labels: Any, tpr_target: float = 0.95) -> float:
    """False-positive rate at the first ROC threshold where TPR >= `tpr_target`.

    Thresholds are visited from the highest score down, as in `roc_curve`.
    """
    s, y = validate_scores_labels(scores, labels)
    # drop_intermediate=False: the default drops collinear ROC points, and the
    # point where TPR first reaches the target can be one of them (e.g. the
    # middle of a diagonal made of tied normal/anomalous scores), which would
    # report the FPR of a later, worse threshold.
    fpr, tpr, _ = roc_curve(y, s, pos_label=1, drop_intermediate=False)
    # tpr is non-decreasing and ends at 1.0, so a crossing index always exists.
    idx = int(np.argmax(tpr >= tpr_target))
    return float(fpr[idx])


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Image-level detection metrics.

    Args:
      scores: [N] anomaly scores, higher = more anomalous, all finite.
      labels: [N] ground truth in {0, 1}, 1 = anomaly; both classes required.

    Returns:
      `{"auroc", "aupr", "fpr95"}` as Python floats: area under the ROC curve,
      average precision with anomalies as the positive class, and the FPR at
      the first threshold whose TPR is at least 0.95.
    """
    s, y = validate_scores_labels(scores, labels)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s, pos_label=1)),
        "fpr95": fpr_at_tpr(s, y, 0.95),
    }


def per_scale_auroc(scores_per_scale: Mapping[str, Any], labels: Any) -> dict[str, float]:
    """AUROC of each scale's scores on its own, in the mapping's order."""
    out: dict[str, float] = {}
    for name, scores in scores_per_scale.items():
        try:
            s, y = validate_scores_labels(scores, labels)
        except ValueError as e:
            # Otherwise the caller cannot tell which scale was broken.
            raise ValueError(f"scale {name!r}: {e}") from e
        out[name] = float(roc_auc_score(y, s))
    return out


# ---------------------------------------------------------------------------
# Pixel-level metric
# ---------------------------------------------------------------------------


def pixel_auroc(maps: Any, masks: Any | None) -> float | None:
    """Pixel-level AUROC over all pixels of all images.

    Args:
      maps: [N, H, W] anomaly maps (higher = more anomalous), all finite.
      masks: [N, H, W] ground-truth masks with values in {0, 1}, or None when the
        dataset has no segmentation masks.

    Returns:
      The AUROC of the flattened maps against the flattened masks, or None when
      `masks` is None or contains no anomalous pixel (the metric is undefined;
      e.g. a class whose test split only has normal images). Likewise None when
      every pixel is anomalous, since that also leaves a single class.
    """
    if masks is None:
        return None
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"maps must have shape [N, H, W], got {m.shape}.")
    gt_raw = np.asarray(masks)
    if gt_raw.shape != m.shape:
        raise ValueError(f"maps and masks must have the same shape, got {m.shape} and {gt_raw.shape}.")
    gt = _as_binary_labels(gt_raw, name="masks").ravel()
    n_pos = int(gt.sum())
    if n_pos == 0 or n_pos == gt.size:
        return None
    flat = m.ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError(
            f"maps must be finite; got {int(np.isnan(flat).sum())} NaN and "
            f"{int(np.isinf(flat).sum())} inf values out of {flat.size} pixels."
        )
    return float(roc_auc_score(gt, flat))


# ---------------------------------------------------------------------------
# Multi-scale score fusion
# ---------------------------------------------------------------------------


def standardize(scores: Any, mean: float, std: float) -> np.ndarray:
    """Returns `(scores - mean) / max(std, SIGMA_FLOOR)` as float64."""
    s = np.asarray(scores, dtype=np.float64)
    return (s - float(mean)) / max(float(std), SIGMA_FLOOR)


def combine_scores(
    per_scale: Mapping[str, Any],
    stats: Mapping[str, tuple[float, float]],
    weights: Mapping[str, float],
) -> np.ndarray:
    """Fuses per-scale scores as `sum_s w_s * (a_s - mu_s) / sigma_s`.

    Standardizing with statistics of normal data puts scales whose raw
    distances live on very different ranges onto a common footing before
    weighting.

    Args:
      per_scale: scale name -> [N] scores (all the same shape).
      stats: scale name -> (mean, std), e.g. measured on held-out normal data.
        Every scale in `per_scale` needs an entry; extra entries are ignored.
      weights: scale name -> weight. Every scale in `per_scale` needs a weight,
        and every weight must refer to a scale in `per_scale`.

    Returns:
      [N] float64 fused scores.
    """
    if not per_scale:
        raise ValueError("per_scale is empty; nothing to combine.")
    names = list(per_scale)
    missing_stats = [n for n in names if n not in stats]
    missing_weights = [n for n in names if n not in weights]
    # A weight for a scale that was not computed is almost certainly a config
    # typo; ignoring it would silently change the fused score.
    unused_weights = [n for n in weights if n not in per_scale]
    if missing_stats or missing_weights or unused_weights:
        raise ValueError(
            "combine_scores: inconsistent scales: "
            f"missing stats for {missing_stats}, missing weights for {missing_weights}, "
            f"weights for scales without scores {unused_weights} "
            f"(scales with scores: {names})."
        )
    total: np.ndarray | None = None
    shape = None
    for name in names:
        mu, sigma = stats[name]
        term = float(weights[name]) * standardize(per_scale[name], mu, sigma)
        if shape is None:
            shape = term.shape
        elif term.shape != shape:
            raise ValueError(f"scale {name!r} has scores of shape {term.shape}, expected {shape}.")
        total = term if total is None else total + term
    assert total is not None
    return total


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


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


def results_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> str:
    """Formats rows (e.g. one per class) as a markdown table with a mean row.

    Args:
      rows: one mapping per table row. Missing keys and None print as "-".
      keys: column order; defaults to the union of the rows' keys in first-seen
        order.

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
    extra_col = label_col is None and any(numeric.values())
    header = ([""] if extra_col else []) + [_fmt_cell(k) for k in keys]

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = ([""] if extra_col else []) + [_fmt_cell(row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")

    if rows and any(numeric.values()):
        cells = ["mean"] if extra_col else []
        for k in keys:
            if numeric[k]:
                vals = [float(row[k]) for row in rows if row.get(k) is not None]
                cells.append(f"{float(np.mean(vals)):.4f}")
            else:
                cells.append("mean" if k == label_col else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Atomic file writing
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file next to `path`; on success renames it onto `path`.

    The temporary file is in the same directory so that `os.replace` is an
    atomic rename on the same filesystem: readers see either the old file or
    the complete new one, never a partial write. If the body raises, the
    temporary file is removed and `path` is left untouched. Parent
    directories are created as needed.

    Args:
      path: destination file.
      mode: "w" (text, UTF-8) or "wb" (binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, as for a
    # normally created file (tempfile.mkstemp would leave it 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            # Without fsync a power loss after the rename can leave an empty file.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _json_default(obj: Any) -> Any:
    """`json.dump` hook for values the stdlib encoder does not know."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        # Covers np.float32/np.int64/np.bool_ etc.
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Writes `obj` as JSON to `path` atomically (temp file + `os.replace`).

    NumPy scalars and arrays are converted to Python numbers and lists. NaN and
    inf are written as the (non-standard but Python-readable) `NaN`/`Infinity`.
    On any error, including an unserializable value, `path` keeps its previous
    contents and no temporary file is left behind.
    """
    # Serialize fully before touching the filesystem so an encoding error
    # never even creates the temp file.
    text = json.dumps(obj, indent=indent, default=_json_default)
    with atomic_write(path, "w") as f:
        f.write(text)
        f.write("\n")

