"""Scores for the test split -> metrics (the results dict), TensorBoard scalars and plots.

The final score is A(x) = sum_s w_s (a_s(x) - mu_s) / sigma_s with mu_s, sigma_s
measured on the normal training data; the training-free score A0 is combined the same
way from A0_s. Localisation maps are sum_s w_s ||D_s[h, w]||^2 / mu(A0_s), so that
each scale contributes on a comparable footing.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from mscad_jax import config as config_lib
from mscad_jax import metrics, parallel, plots
from mscad_jax.data import input_pipeline, protocols, sources

# Normal training images used to measure mu_s, sigma_s (a seeded subset when larger).
MAX_STATS_EXAMPLES = 10000


def score_images(score_fn: Callable, args: tuple, images: np.ndarray, batch_size: int, mesh: Mesh,
                 keep_maps: bool = True) -> dict[str, np.ndarray]:
    """Runs `score_fn(*args, images_batch)` over `images`; concatenated host arrays."""
    chunks: dict[str, list[np.ndarray]] = {}
    for valid, batch in input_pipeline.eval_batches({"image": images}, batch_size, mesh):
        out = parallel.fetch(score_fn(*args, batch["image"]))
        for k, v in out.items():
            if keep_maps or not k.startswith("map/"):
                chunks.setdefault(k, []).append(v[:valid])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def normal_statistics(scores: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(mean, std) of every scalar score on normal training data."""
    return {k: (float(v.mean()), float(v.std())) for k, v in scores.items() if not k.startswith("map/")}


def combine(scores: dict[str, np.ndarray], stats: dict[str, tuple[float, float]], kind: str,
            names: list[str], weights: tuple[float, ...]) -> np.ndarray:
    """Standardised weighted sum of the per-scale scores `kind/<scale>`."""
    keys = [f"{kind}/{n}" for n in names]
    return metrics.combine_scores({k: scores[k] for k in keys}, {k: stats[k] for k in keys},
                                  dict(zip(keys, weights)))


def localisation_maps(scores: dict[str, np.ndarray], stats: dict[str, tuple[float, float]],
                      names: list[str], weights: tuple[float, ...]) -> np.ndarray:
    return sum(w * scores[f"map/{n}"] / max(stats[f"a0/{n}"][0], 1e-12) for n, w in zip(names, weights))


def evaluate(config: ml_collections.ConfigDict, data: protocols.ProtocolData, score_fn: Callable,
             score_args: tuple, names: list[str], workdir: str, mesh: Mesh, writer=None,
             pooled_fn: Callable | None = None, pooled_args: tuple = ()) -> dict[str, Any]:
    """Scores the test split; returns the results (the caller writes results.json) and
    writes TensorBoard scalars and plots."""
    weights = tuple(float(w) for w in config.eval.score_weights) or (1.0,) * len(names)
    normal_train = data.train_images[~data.train_labelled_anomaly]
    if len(normal_train) > MAX_STATS_EXAMPLES:
        pick = np.random.default_rng([config.seed, 7]).choice(len(normal_train), MAX_STATS_EXAMPLES, replace=False)
        normal_train = normal_train[np.sort(pick)]
    train_scores = score_images(score_fn, score_args, normal_train, config.eval.batch_size, mesh, keep_maps=False)
    stats = normal_statistics(train_scores)
    test = score_images(score_fn, score_args, data.test_images, config.eval.batch_size, mesh)
    labels = data.test_labels
    has_detector = any(k.startswith("a/") for k in test)

    a0 = combine(test, stats, "a0", names, weights)
    final = combine(test, stats, "a", names, weights) if has_detector else a0
    maps = localisation_maps(test, stats, names, weights)
    image = metrics.image_metrics(final, labels)
    results: dict[str, Any] = {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "anomaly_type": config.anomaly_type,
        "normal_class": None if config.protocol == "ood" else config.normal_class,
        **image,
        "auroc_per_scale": metrics.per_scale_auroc({n: test[f"a/{n}"] for n in names}, labels)
        if has_detector else None,
        "auroc_training_free": metrics.image_metrics(a0, labels)["auroc"],
        "auroc_training_free_per_scale": metrics.per_scale_auroc({n: test[f"a0/{n}"] for n in names}, labels),
        "pixel_auroc": metrics.pixel_auroc(maps, data.test_masks),
        "num_test": int(len(labels)),
        "num_anomalies": int(labels.sum()),
        "num_train": int(len(data.train_images)),
        "num_train_labelled_anomalies": int(data.train_labelled_anomaly.sum()),
        "score_stats": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()},
    }
    if config.eval.linear_eval and pooled_fn is not None:
        results["linear_eval_accuracy"] = linear_eval(config, pooled_fn, pooled_args, mesh)
    if jax.process_index() == 0:
        if writer is not None:
            writer.write_scalars(0, {f"eval/{k}": v for k, v in _scalars(results).items()})
            writer.flush()
        if config.eval.plots:
            write_plots(os.path.join(workdir, "plots"), final, labels, data.test_images, maps,
                        config.eval.num_top_anomalies)
    return results


def _scalars(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[k] = float(v)
        elif isinstance(v, dict) and k.startswith("auroc"):
            out.update({f"{k}/{s}": float(x) for s, x in v.items()})
    return out


def write_plots(directory: str, scores: np.ndarray, labels: np.ndarray, images: np.ndarray, maps: np.ndarray,
                k: int) -> None:
    os.makedirs(directory, exist_ok=True)
    plots.plot_roc(scores, labels, os.path.join(directory, "roc.png"))
    plots.plot_score_histograms(scores, labels, os.path.join(directory, "score_histograms.png"))
    plots.plot_top_anomalies(images.astype(np.float32) / 255.0, maps, scores,
                             os.path.join(directory, "top_anomalies.png"), k=k)


def linear_eval(config: ml_collections.ConfigDict, pooled_fn: Callable, pooled_args: tuple, mesh: Mesh) -> float:
    """Accuracy of a logistic-regression probe on frozen pooled features (all classes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    channels = config_lib.DATASETS[config.dataset][2]
    load = lambda split: sources.load_split(  # noqa: E731
        config.dataset, split, config.image_size, channels, data_dir=config.data_dir,
        coarse_label=config.coarse_label, image_folder_dir=config.image_folder_dir)
    train, test = load("train"), load("test")
    if len(train) > config.eval.linear_eval_max_examples:
        pick = np.random.default_rng([config.seed, 8]).choice(len(train), config.eval.linear_eval_max_examples,
                                                               replace=False)
        train = train.take(np.sort(pick))
    features = lambda split: score_images(pooled_fn, pooled_args, split.images, config.eval.batch_size, mesh)["pooled"]  # noqa: E731
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features(train), train.labels)
    accuracy = float(probe.score(features(test), test.labels))
    logging.info("linear evaluation accuracy: %.4f", accuracy)
    return accuracy
