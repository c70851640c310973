"""Scores for the test split -> metrics (the results dict), TensorBoard scalars and plots.

The scorers, each reported on its own whatever the config picks:
- detector: A(x) = sum_s w_s (a_s(x) - mu_s) / sigma_s, the stage-2 distances;
- a0: the training-free sum_s w_s standardised mean_hw ||D_s||^2;
- knn: the same fusion of k-NN cosine distances of GAP(F_s) to the normal training set;
- rotation: the rotation head's negative log-likelihood over the four rotations;
- patch_memory, and local (with model.local_head): the worst position's distance to
  the memory, and the segmentation head's largest logit.
mu_s, sigma_s are measured on normal training data (leave-one-out for k-NN). The final
score sums the standardised scores of the scorers named in `eval.scorer`.
Localisation maps are sum_s w_s ||D_s[h, w]||^2 / mu(A0_s), so that each scale
contributes on a comparable footing. All of this is `mscad_jax.scorer`'s one scoring
function, fitted here and saved to WORKDIR/scorer for `mscad_jax.export`. The
patch_knn score (eval.patch_knn: ridge residual, SPADE's or PatchCore's) is measured beside it, not part
of it, with the pixel AUROC of its own maps.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from mscad_jax import config as config_lib
from mscad_jax import files, fusion, knn, metrics, parallel, plots, scorer
from mscad_jax.data import input_pipeline, protocols, sources
from mscad_jax.models import anomem

# Normal training images used to measure mu_s, sigma_s (a seeded subset when larger).
MAX_STATS_EXAMPLES = 10000
# Held-out normal training images that give the statistics of SPADE's patch_knn.
MAX_HELD_OUT = 1000
# The patch kNN's name for the raw [0, 1] image, scored as one more map (eval.patch_knn_pixels).
PIXELS = "pixels"
# Its ridge penalty: the pixel baseline's (experiments/local_pixel_baseline.py; image ridge, window 4,
# Fashion-MNIST class 0: cutpaste 89.66 / scar 77.52 at 0.1, 89.28 / 77.00 at 1.0).
PIXEL_RIDGE_PENALTY = 0.1


def score_images(score_fn: Callable, args: tuple, images: np.ndarray, batch_size: int, mesh: Mesh,
                 keep_maps: bool = True) -> dict[str, np.ndarray]:
    """Runs `score_fn(*args, images_batch)` over `images`; concatenated host arrays."""
    chunks: dict[str, list[np.ndarray]] = {}
    for valid, batch in input_pipeline.eval_batches({"image": images}, batch_size, mesh):
        out = parallel.fetch(score_fn(*args, batch["image"]))
        for k, v in out.items():
            if keep_maps or not (k == "map" or k.startswith("map/")):
                chunks.setdefault(k, []).append(v[:valid])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def _nearest_images(bank: np.ndarray, queries: np.ndarray, held_rows: np.ndarray,
                    neighbours: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Indices of the `neighbours` nearest bank maps (`metric`, flattened) of every query
    and of every held-out bank row, [Q, K] and [len(held_rows), K]."""
    test_neighbours = knn.nearest_rows(bank, queries, neighbours, metric)[1]
    # One neighbour more than asked, then each held-out row's own index dropped: it is in
    # the bank, and an image must not be compared with itself.
    found = knn.nearest_rows(bank, bank[held_rows], neighbours + 1, metric)[1]
    others = found != held_rows[:, None]
    return test_neighbours, np.take_along_axis(found, np.argsort(~others, axis=1, kind="stable")[:, :neighbours], 1)


def add_patch_knn_scores(train: dict[str, np.ndarray], test: dict[str, np.ndarray], names: list[str],
                         bank_size: int, seed: int, neighbours: int = 0, radius: int = 0, distance: str = "nearest",
                         penalty: float = 1.0, window: int = 1, neighbours_on: str = "deepest",
                         pixel_window: int = 0) -> dict[str, np.ndarray]:
    """Adds 'patch_knn/<scale>', the largest over positions of 'patch_map/<scale>' [M, H_s, W_s]:
    how far each position is from the normal training patches. Returns the same image
    scores for held-out normal training images (their statistics).

    `neighbours=0`: PatchCore's bank, a random draw of `bank_size` patches from any
    position of half of the training images, cosine distance to the nearest; the other
    half is held out. `neighbours=K`: the patches within `radius` positions of the same
    place in the K nearest normal training images (cosine on the deepest scale's flattened
    map, or with `neighbours_on='same'` on each scale's own), measured by `distance`:
    'nearest', SPADE's cosine distance to the closest, or 'ridge', the residual of a ridge
    reconstruction out of them (`penalty`, `window`; knn.aligned_ridge_residual), or
    'image_ridge', the residual of one ridge reconstruction of the whole map out of those
    images' maps (knn.image_ridge_residual; `radius` does not apply). Held out is a
    seeded subset of up to `MAX_HELD_OUT` training images, each searched with itself left
    out. With `pixel_window` > 0 (and neighbours), 'patches/pixels' in `train` and `test`
    (the [0, 1] images) is scored too, as `PIXELS`: the same ridge distance with its own
    window and `PIXEL_RIDGE_PENALTY`, its neighbours picked by Euclidean pixel distance, as
    the raw-pixel floor picks them.
    """
    if pixel_window and not neighbours:
        raise ValueError(f"pixel_window={pixel_window}: the pixel map is a ridge fit out of the nearest images, "
                         "which needs neighbours > 0")
    rng = np.random.default_rng([seed, 9])
    count = len(train[f"patches/{names[0]}"])
    if neighbours >= count:
        raise config_lib.ConfigError(f"eval.patch_knn_neighbours={neighbours} needs more normal training images than "
                                     f"that; there are {count}")
    if neighbours:
        held_rows = np.sort(rng.choice(count, min(count, MAX_HELD_OUT), replace=False))
        # model.scales is a set of stages in any order: the deepest is the largest number.
        deepest_name = max(names, key=lambda n: int(n.removeprefix("scale")))
        nearest = {n: _nearest_images(train[f"patches/{n}"], test[f"patches/{n}"], held_rows, neighbours)
                   for n in (names if neighbours_on == "same" else [deepest_name])}
        if pixel_window:
            nearest[PIXELS] = _nearest_images(train[f"patches/{PIXELS}"], test[f"patches/{PIXELS}"], held_rows,
                                              neighbours, "euclidean")
            names = [*names, PIXELS]
    else:
        order = rng.permutation(count)
        bank_rows, held_rows = order[: count // 2], order[count // 2:]
    held_out = {}
    for n in names:
        patches = train.pop(f"patches/{n}")
        queries = test.pop(f"patches/{n}")
        if neighbours:
            test_neighbours, held_neighbours = nearest[n if neighbours_on == "same" or n == PIXELS else deepest_name]
            measure = functools.partial(knn.aligned_map, distance, patches, radius=radius,
                                        penalty=PIXEL_RIDGE_PENALTY if n == PIXELS else penalty,
                                        window=pixel_window if n == PIXELS else window)
            test_map, held_map = measure(queries, test_neighbours), measure(patches[held_rows], held_neighbours)
        else:
            channels = patches.shape[-1]
            bank = patches[bank_rows].reshape(-1, channels)
            bank = bank[np.random.default_rng([seed, 10]).choice(len(bank), min(bank_size, len(bank)), replace=False)]
            distance_map = lambda x: knn.knn_distance(bank, x.reshape(-1, channels), 1).reshape(x.shape[:3])  # noqa: E731
            test_map, held_map = distance_map(queries), distance_map(patches[held_rows])
        test[f"patch_map/{n}"] = test_map
        test[f"patch_knn/{n}"] = test_map.reshape(len(test_map), -1).max(axis=1)
        held_out[f"patch_knn/{n}"] = held_map.reshape(len(held_map), -1).max(axis=1)
    return held_out


def patch_localisation_maps(test: dict[str, np.ndarray], held_out_stats: dict[str, tuple[float, float]],
                            names: list[str], weights: tuple[float, ...], image_shape: tuple[int, int]) -> np.ndarray:
    """sum_s w_s patch_map_s / mu_s, each scale's map upsampled to the image and in units of
    its mean image score on held-out normal data (as fusion.localisation_maps does)."""
    total = 0.0
    for n, w in zip(names, weights):
        per_scale = test.pop(f"patch_map/{n}")
        upsampled = jax.image.resize(per_scale, (len(per_scale), *image_shape), "bilinear")
        total = total + w * np.asarray(upsampled) / max(held_out_stats[f"patch_knn/{n}"][0], fusion.SIGMA_FLOOR)
    return total


def evaluate(config: ml_collections.ConfigDict, data: protocols.ProtocolData, raw_fn: Callable,
             variables: dict[str, Any], workdir: str, mesh: Mesh, writer=None,
             pooled_fn: Callable | None = None) -> dict[str, Any]:
    """Fits the scorer on normal training images, scores the test split with it and
    returns the results (the caller writes results.json); writes the scorer state to
    `workdir/scorer` (what `mscad_jax.export` packages), scores.csv, TensorBoard scalars
    and plots.

    `raw_fn` is stage2.score_function (pure); `variables` holds 'frozen' (stage 1),
    'detector' and 'centers' (stage 2; empty dicts without it); `pooled_fn(frozen,
    images)` feeds the linear probe.
    """
    names = anomem.scale_names(config.model.scales)
    weights = tuple(float(w) for w in config.eval.score_weights) or (1.0,) * len(names)
    normal_train = data.train_images[~data.train_labelled_anomaly]
    if len(normal_train) > MAX_STATS_EXAMPLES:
        pick = np.random.default_rng([config.seed, 7]).choice(len(normal_train), MAX_STATS_EXAMPLES, replace=False)
        normal_train = normal_train[np.sort(pick)]
    variables = scorer.with_defaults(variables)
    raw_jit = parallel.jit_over_batch(raw_fn, mesh, 3)
    train = score_images(raw_jit, (variables["frozen"], variables["detector"], variables["centers"]), normal_train,
                         config.eval.batch_size, mesh, keep_maps=False)
    chosen = config_lib.scorer_names(config)
    state, spec = scorer.fit(train, variables, tuple(names), weights, chosen, config.eval.knn_k,
                             normal_images=normal_train, knn_metric=config.eval.knn_metric,
                             detector_weights=tuple(float(w) for w in config.eval.detector_weights))
    score_jit = parallel.jit_over_batch(scorer.make_scorer(raw_fn, spec), mesh, 1)
    test = score_images(score_jit, (parallel.replicate(state, mesh),), data.test_images, config.eval.batch_size, mesh)
    stats = {k: tuple(map(float, v)) for k, v in state["stats"].items()}
    patch_names = list(names)  # the patch kNN's maps: the scales, and the raw image with eval.patch_knn_pixels
    if config.eval.patch_knn:
        patch_weights = tuple(float(w) for w in config.eval.patch_knn_weights) or weights
        pixel_window = config.eval.patch_knn_pixels_window if config.eval.patch_knn_pixels else 0
        if pixel_window:
            train[f"patches/{PIXELS}"] = normal_train.astype(np.float32) / 255.0
            test[f"patches/{PIXELS}"] = data.test_images.astype(np.float32) / 255.0
            patch_names.append(PIXELS)
            patch_weights = (*patch_weights, float(config.eval.patch_knn_pixels))
        held_out = add_patch_knn_scores(train, test, names, config.eval.patch_bank_size, config.seed,
                                        config.eval.patch_knn_neighbours, config.eval.patch_knn_radius,
                                        config.eval.patch_knn_distance, config.eval.patch_knn_ridge_penalty,
                                        config.eval.patch_knn_window, config.eval.patch_knn_neighbours_on,
                                        pixel_window)
        held_out_stats = fusion.normal_statistics(held_out)
        stats |= held_out_stats
        test["score/patch_knn"] = np.asarray(fusion.combine(test, held_out_stats, "patch_knn", patch_names,
                                                            patch_weights))
        patch_maps = patch_localisation_maps(test, held_out_stats, patch_names, patch_weights,
                                             data.test_images.shape[1:3])
    final = test["score"]
    test_by_scorer = {s: test[f"score/{s}"] for s in (*fusion.SCORERS, "patch_knn") if f"score/{s}" in test}
    labels = data.test_labels
    maps = test["map"]
    image = metrics.image_metrics(final, labels)
    auroc_of = lambda s: metrics.image_metrics(test_by_scorer[s], labels)["auroc"] if s in test_by_scorer else None  # noqa: E731
    per_scale = lambda prefix, over=names: metrics.per_scale_auroc({n: test[f"{prefix}/{n}"] for n in over}, labels) \
        if f"{prefix}/{over[0]}" in test else None  # noqa: E731
    results: dict[str, Any] = {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "anomaly_type": config.anomaly_type,
        "normal_class": None if config.protocol == "ood" else (config.normal_class_name or config.normal_class),
        "class_names": None if data.class_names is None else list(data.class_names),
        "scorer": "+".join(chosen),
        **image,
        "auroc_per_anomaly_class": metrics.auroc_per_anomaly_class(final, labels, data.test_classes),
        "auroc_detector": auroc_of("detector"),
        "auroc_per_scale": per_scale("a"),
        "auroc_training_free": auroc_of("a0"),
        "auroc_training_free_per_scale": per_scale("a0"),
        "auroc_knn": auroc_of("knn"),
        "auroc_knn_per_scale": per_scale("knn"),
        "auroc_rotation": auroc_of("rotation"),
        "auroc_patch_memory": auroc_of("patch_memory"),
        "auroc_local": auroc_of("local"),
        "auroc_local_per_scale": per_scale("local"),
        "auroc_patch_knn": auroc_of("patch_knn"),
        "auroc_patch_knn_per_scale": per_scale("patch_knn", patch_names),
        "auroc_pixel_knn_floor": knn.pixel_floor_auroc(normal_train, data.test_images, labels)
        if config.eval.pixel_floor else None,
        "pixel_auroc": metrics.pixel_auroc(maps, data.test_masks),
        "pixel_auroc_patch_knn": metrics.pixel_auroc(patch_maps, data.test_masks) if config.eval.patch_knn else None,
        "num_test": int(len(labels)),
        "num_anomalies": int(labels.sum()),
        "num_train": int(len(data.train_images)),
        "num_train_labelled_anomalies": int(data.train_labelled_anomaly.sum()),
        "score_stats": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()},
        "threshold": float(state["threshold"]),
        "threshold_percentile": spec.threshold_percentile,
    }
    if config.eval.linear_eval and pooled_fn is not None:
        results["linear_eval_accuracy"] = linear_eval(config, data.probe, pooled_fn, (variables["frozen"],), mesh)
    if jax.process_index() == 0:
        if writer is not None:
            writer.write_scalars(0, {f"eval/{k}": v for k, v in _scalars(results).items()})
            writer.flush()
        if config.eval.plots:
            write_plots(os.path.join(workdir, "plots"), final, data, maps, config.eval.num_top_anomalies,
                        spec.map_weights)
        scorer.save(os.path.join(workdir, "scorer"), parallel.fetch(state), spec)
        files.write_scores_csv(os.path.join(workdir, "scores.csv"), final, data.test_classes, data.test_labels,
                               test_by_scorer, test, names, data.test_paths)
    return results


def _scalars(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[k] = float(v)
        elif isinstance(v, dict) and k.startswith("auroc"):
            out.update({f"{k}/{s}": float(x) for s, x in v.items()})
    return out


def write_plots(directory: str, scores: np.ndarray, data: protocols.ProtocolData, maps: np.ndarray, k: int,
                weights: tuple[float, ...]) -> None:
    """ROC, score histograms and the top anomalies. The heatmaps share one colour range
    from the normal statistics: each scale's map is divided by its mean on normal
    training images (fusion.localisation_maps), so a normal pixel sits near sum(weights);
    the range is fusion.heatmap_range(weights) in every run."""
    files.makedirs(directory)
    plots.plot_roc(scores, data.test_labels, os.path.join(directory, "roc.png"))
    plots.plot_score_histograms(scores, data.test_labels, os.path.join(directory, "score_histograms.png"))
    plots.plot_top_anomalies(data.test_images.astype(np.float32) / 255.0, maps, scores,
                             os.path.join(directory, "top_anomalies.png"), k=k, labels=data.test_labels,
                             classes=data.test_classes, masks=data.test_masks,
                             heat_range=fusion.heatmap_range(weights))


def linear_eval(config: ml_collections.ConfigDict, probe: tuple[sources.Split, sources.Split], pooled_fn: Callable,
                pooled_args: tuple, mesh: Mesh) -> float:
    """Accuracy of a logistic-regression probe on frozen pooled features (all classes;
    the splits come from `protocols.build_protocol`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = probe
    features = lambda split: score_images(pooled_fn, pooled_args, split.images, config.eval.batch_size, mesh)["pooled"]  # noqa: E731
    probe_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe_model.fit(features(train), train.labels)
    accuracy = float(probe_model.score(features(test), test.labels))
    logging.info("linear evaluation accuracy: %.4f", accuracy)
    return accuracy
