"""Evaluation metrics for AnoMem (NumPy and scikit-learn only).

Conventions used throughout the package:

* label ``1`` is an anomaly (the positive class), label ``0`` is normal;
* a higher score means "more anomalous".

All metric values come from scikit-learn; this module only validates inputs
(so that a silently broken evaluation raises instead of printing a plausible
number). Score fusion is in `fusion`, tables in `report`, file writing in `files`.

This module deliberately does not import JAX, so evaluation scripts and
notebooks can use it on plain NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "auroc_per_anomaly_class",
    "fpr_at_tpr",
    "image_metrics",
    "per_scale_auroc",
    "pixel_auroc",
    "validate_scores_labels",
]



# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def as_binary_labels(labels: Any, name: str = "labels") -> np.ndarray:
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
    y = as_binary_labels(y_raw)
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


def auroc_per_anomaly_class(scores: Any, labels: Any, classes: Any) -> dict[str, float]:
    """AUROC of the normal rows (label 0) against the anomalies of each source class
    (label 1, grouped by `classes`): which kinds of anomaly the detector finds hard."""
    s, y = validate_scores_labels(scores, labels)
    c = np.asarray(classes)
    if c.shape != s.shape:
        raise ValueError(f"classes must have shape {s.shape}, got {c.shape}.")
    normal = y == 0
    out = {}
    for k in np.unique(c[y == 1]):
        rows = normal | ((y == 1) & (c == k))
        out[str(k.item())] = float(roc_auc_score(y[rows], s[rows]))
    return out


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
    gt = as_binary_labels(gt_raw, name="masks").ravel()
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
