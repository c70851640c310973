"""Diagnostic plots for AnoMem evaluation and training, written as PNG files.

Every function renders one figure with matplotlib's non-interactive Agg
backend (so it works on headless training machines), writes it through a
temporary file that is renamed into place (a crash never leaves a truncated
PNG), closes the figure (long evaluation loops would otherwise accumulate
figures and memory), and returns the path it wrote.

Conventions: label 1 = anomaly, higher score = more anomalous.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

# Must precede the pyplot import: pyplot picks its backend on first import,
# and an interactive one fails (or opens windows) without a display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from mscad_jax.files import atomic_write  # noqa: E402
from mscad_jax.metrics import as_binary_labels, validate_scores_labels  # noqa: E402

__all__ = [
    "heatmap_overlay",
    "plot_roc",
    "plot_score_histograms",
    "plot_top_anomalies",
    "top_k_indices",
]

_DPI = 100


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> str:
    """Writes `fig` as PNG to `path` atomically and closes it, even on error."""
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    return os.fspath(path)


def plot_roc(
    scores: Any,
    labels: Any,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> str:
    """Plots the ROC curve (anomaly = positive) with its AUROC in the legend.

    Args:
      scores: [N] finite anomaly scores.
      labels: [N] in {0, 1}; both classes must be present.
      path: destination PNG.
      title: optional axes title.

    Returns:
      `path` as a string.
    """
    s, y = validate_scores_labels(scores, labels)
    fpr, tpr, _ = roc_curve(y, s, pos_label=1)
    auroc = roc_auc_score(y, s)
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_score_histograms(
    scores: Any,
    labels: Any,
    path: str | os.PathLike[str],
    title: str | None = None,
    bins: int = 50,
) -> str:
    """Overlaid density histograms of normal vs anomalous scores.

    Both classes share one set of bin edges so their bars are directly
    comparable. A class with no samples is simply not drawn, which allows
    plotting e.g. scores of normal-only data.

    Args:
      scores: [N] finite anomaly scores.
      labels: [N] in {0, 1}.
      path: destination PNG.
      title: optional axes title.
      bins: number of shared bins.

    Returns:
      `path` as a string.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = as_binary_labels(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {s.shape} and {y.shape}.")
    if s.size == 0:
        raise ValueError("scores is empty; nothing to plot.")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite; got {int((~np.isfinite(s)).sum())} non-finite values.")
    edges = np.histogram_bin_edges(s, bins=bins)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for value, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        part = s[y == value]
        if part.size:
            ax.hist(part, bins=edges, density=True, alpha=0.5, color=color, label=f"{name} (n={part.size})")
    ax.set(xlabel="Anomaly score", ylabel="Density")
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def top_k_indices(scores: Any, k: int) -> np.ndarray:
    """Indices of the `min(k, N)` highest scores, highest first.

    Ties keep the original order (stable sort), so results are deterministic.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    # argsort places NaN last, so a NaN score is treated as least anomalous.
    return np.argsort(-s, kind="stable")[:k]


def top_anomaly_title(index: int, score: float, label: int | None = None, cls: int | None = None) -> str:
    """`#12 anomalous (class 3)` over an image of the top-anomalies grid, its score below."""
    truth = "" if label is None else (" anomalous" if label else " normal")
    source = "" if cls is None or cls < 0 else f" (class {int(cls)})"
    return f"#{int(index)}{truth}{source}"


def plot_top_anomalies(
    images: Any,
    heatmaps: Any,
    scores: Any,
    path: str | os.PathLike[str],
    k: int = 8,
    *,
    labels: Any | None = None,
    classes: Any | None = None,
    masks: Any | None = None,
    heat_range: tuple[float, float] | None = None,
) -> str:
    """Shows the `k` highest-scoring images and their anomaly heatmaps.

    Top row: the images, titled with their index and, given `labels` / `classes`, their
    true label (normal / anomalous) and source class; bottom row: the same images with
    the heatmap overlaid (jet colormap, alpha 0.5) and the score. All overlays share
    one colour range, `heat_range` (e.g. set from normal statistics, so that the
    colours mean the same in every run), else the range of the shown maps. Given
    `masks`, the ground-truth anomalous region is outlined in white. Heatmaps may have
    a lower resolution than the images (e.g. a feature-map grid); they are stretched
    over the image.

    Args:
      images: [N, H, W, C] floats in [0, 1] with C = 1 or 3 ([N, H, W] is
        treated as grayscale).
      heatmaps: [N, h, w] anomaly maps.
      scores: [N] image scores used to pick the top `k`.
      path: destination PNG.
      k: number of images to show; clipped to N.
      labels: optional [N] true labels, 1 = anomaly.
      classes: optional [N] source classes (negative: none, e.g. another dataset).
      masks: optional [N, H, W] ground-truth anomaly masks.
      heat_range: optional (vmin, vmax) of the heatmap colours.

    Returns:
      `path` as a string.
    """
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape [N, H, W, C] with C in (1, 3), got {np.shape(images)}.")
    maps = np.asarray(heatmaps, dtype=np.float32)
    s = np.asarray(scores, dtype=np.float64)
    n = imgs.shape[0]
    if n == 0:
        raise ValueError("images is empty; nothing to plot.")
    if maps.ndim != 3 or maps.shape[0] != n or s.shape != (n,):
        raise ValueError(
            f"expected heatmaps [N, h, w] and scores [N] with N={n}, got {maps.shape} and {s.shape}."
        )
    for name, extra in (("labels", labels), ("classes", classes)):
        if extra is not None and np.shape(extra) != (n,):
            raise ValueError(f"{name} must have shape [{n}], got {np.shape(extra)}.")
    if masks is not None and np.shape(masks) != imgs.shape[:3]:
        raise ValueError(f"masks must have shape {imgs.shape[:3]}, got {np.shape(masks)}.")
    idx = top_k_indices(s, k)
    k = idx.size
    h, w = imgs.shape[1:3]
    # Clipping avoids matplotlib's "clipping input data" warning for values
    # slightly outside [0, 1] after de-normalisation.
    imgs = np.clip(imgs, 0.0, 1.0)
    if heat_range is None:
        finite = maps[idx][np.isfinite(maps[idx])]
        heat_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin, vmax = map(float, heat_range)
    if vmax <= vmin:
        vmax = vmin + 1.0

    fig, axes = plt.subplots(2, k, figsize=(2.0 * k, 4.4), squeeze=False, layout="constrained")
    # Heatmap extent matching the image's pixel grid, so a coarser map is
    # stretched over the whole image rather than drawn in a corner.
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    for col, i in enumerate(idx):
        img = imgs[i]
        kwargs: dict[str, Any] = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if img.shape[-1] == 1 else {}
        disp = img[..., 0] if img.shape[-1] == 1 else img
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(disp, **kwargs)
        top.set_title(top_anomaly_title(i, s[i], None if labels is None else int(np.asarray(labels)[i]),
                                        None if classes is None else int(np.asarray(classes)[i])), fontsize=8)
        bottom.imshow(disp, **kwargs)
        bottom.imshow(maps[i], cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear")
        if masks is not None and np.any(np.asarray(masks)[i] > 0.5):
            bottom.contour(np.asarray(masks)[i], levels=[0.5], colors="white", linewidths=1.0)
        bottom.set_title(f"score {s[i]:.3g}", fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    return save_figure(fig, path)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, heat_range: tuple[float, float],
                    min_size: int = 256) -> np.ndarray:
    """An image with its anomaly map over it (jet colours at half opacity), as uint8 RGB.

    `heat_range` fixes the colours for every image of a run (never per image, which
    would paint every image's most normal pixel blue and its most anomalous red). Small
    images are enlarged by an integer factor (nearest) to at least `min_size` pixels.
    """
    image = np.asarray(image, np.float32) / 255.0
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    vmin, vmax = map(float, heat_range)
    level = np.clip((np.asarray(heat, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](level)[..., :3]
    out = 0.5 * image[..., :3] + 0.5 * colours
    factor = max(1, -(-min_size // max(out.shape[:2])))
    out = np.repeat(np.repeat(out, factor, axis=0), factor, axis=1)
    return np.round(out * 255.0).astype(np.uint8)
