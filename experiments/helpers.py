"""Helpers of the experiment scripts (not of the library): how visible a local anomaly
is, loss curves from a run's TensorBoard events, a job's per-image score columns, and a
finished job's frozen stage 1 loaded and run over images (the probes on finished runs)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from clu import metric_writers

from mscad_jax import config as config_lib
from mscad_jax import evaluate, metrics, parallel, stage1
from mscad_jax.data import protocols


def local_contrast(clean: Any, corrupted: Any, masks: Any) -> np.ndarray:
    """How visible each local anomaly is: the mean, over its mask, of the largest
    per-channel change |corrupted - clean| in [0, 1] units (uint8 images are divided by
    255). A scar painted in the colour it covers scores ~0 and no detector can see it.

    Args:
      clean, corrupted: [N, H, W, C] images, the same images before and after the anomaly.
      masks: [N, H, W] anomalous pixels in {0, 1}, none of them empty.
    """
    a, b = np.asarray(clean), np.asarray(corrupted)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"clean and corrupted must be [N, H, W, C] of one shape, got {a.shape} and {b.shape}.")
    m = metrics.as_binary_labels(masks, name="masks").astype(np.float64)
    if m.shape != a.shape[:3]:
        raise ValueError(f"masks must have shape {a.shape[:3]}, got {m.shape}.")
    area = m.sum(axis=(1, 2))
    if np.any(area == 0):
        raise ValueError(f"masks {np.flatnonzero(area == 0).tolist()} are empty.")
    unit = 255.0 if np.issubdtype(a.dtype, np.integer) else 1.0
    change = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=-1) / unit
    return (change * m).sum(axis=(1, 2)) / area


def read_score_columns(path: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A job's scores.csv or validation_scores.csv (`files.write_scores_csv`) as float columns: the
    named ones, or every column but the file paths."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0]) if rows else []
    missing = [n for n in names or () if n not in header]
    if missing or not rows:
        raise ValueError(f"columns {missing} are not in {path}; it has {header}")
    return {n: np.array([r[n] for r in rows], np.float64) for n in (names or [k for k in header if k != "path"])}


def plot_loss_curves(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> str:
    """Plots one line per named series of `(step, value)` pairs.

    Empty series are skipped; an empty history still produces a (blank) plot
    so that callers need no special case early in training.

    Args:
      history: series name -> list of (step, value).
      path: destination PNG.
      title: optional axes title.

    Returns:
      `path` as a string.
    """
    import matplotlib.pyplot as plt

    from mscad_jax import plots

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    drawn = 0
    for name, points in history.items():
        pts = np.asarray(list(points), dtype=np.float64)
        if pts.size == 0:
            continue
        if pts.ndim != 2 or pts.shape[1] != 2:
            plt.close(fig)
            raise ValueError(f"series {name!r} must be a list of (step, value) pairs, got shape {pts.shape}.")
        order = np.argsort(pts[:, 0], kind="stable")
        ax.plot(pts[order, 0], pts[order, 1], label=str(name), lw=1.5)
        drawn += 1
    ax.set(xlabel="step", ylabel="value")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend()
    if title:
        ax.set_title(title)
    return plots.save_figure(fig, path)


def load_finished_job(workdir: str) -> tuple:
    """(config, protocol data, model, frozen stage-1 variables, mesh) of a workdir whose stage 1
    is finished and which has a validation split."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = config_lib.from_json(json.load(f))
    if config.validation.fraction <= 0:
        raise SystemExit(f"{workdir} has no validation split (validation.fraction=0)")
    mesh = parallel.make_mesh()
    data = protocols.build_protocol(config)
    normal = ~data.train_labelled_anomaly
    model, s1 = stage1.train(config, data.train_images[normal], data.train_labelled_anomaly[normal], workdir, mesh,
                             metric_writers.LoggingWriter(), restore_only=True)
    return config, data, model, {"params": s1.params, "batch_stats": s1.batch_stats}, mesh


def over_images(fn: Callable, mesh: Any) -> Callable[[Any, np.ndarray], dict[str, np.ndarray]]:
    """`fn(frozen, uint8 images) -> {name: [B, ...]}` jitted once, as a function of (frozen, uint8
    images) that runs it over every image in batches (`evaluate.score_images`)."""
    jitted = parallel.jit_over_batch(fn, mesh, 1)
    return lambda frozen, images: evaluate.score_images(jitted, (frozen,), images, 256, mesh)
