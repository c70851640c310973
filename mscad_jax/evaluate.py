"""Scores for the test split -> metrics (the results dict), TensorBoard scalars and plots.

The scorers, each reported on its own whatever the config picks (mscad_jax.scoring):
- detector: A(x) = sum_s w_s (a_s(x) - mu_s) / sigma_s, the stage-2 distances;
- a0: the training-free sum_s w_s standardised mean_hw ||D_s||^2;
- knn: the same fusion of k-NN distances of F_s (pooled or flattened) to the normal
  training set;
- rotation: the rotation head's negative log-likelihood over the four rotations;
- pixel_knn: the raw-pixel k-NN distance (the floor itself, as a scorer).
mu_s, sigma_s are measured on normal training data (leave-one-out for k-NN). The final
score sums the standardised scores of the scorers the spec names. Localisation maps are
sum_s w_s ||D_s[h, w]||^2 / mu(A0_s). All of this is the one scoring function, fitted
here and saved to WORKDIR/scorer for `mscad_jax.export`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from mscad_jax import files, metrics, parallel, plots
from mscad_jax.data import input_pipeline, protocols, sources
from mscad_jax.models import anomem
from mscad_jax.models.detector import MultiScaleDetector
from mscad_jax.scoring import fusion, knn
from mscad_jax.scoring import function as scoring
from mscad_jax.scoring import spec as scoring_spec
from mscad_jax.scoring import state as scoring_state

# Normal training images used to measure mu_s, sigma_s (a seeded subset when larger).
MAX_STATS_EXAMPLES = 10000
# Without a validation split, the pixel threshold comes from this many training normals' maps.
MAX_PIXEL_THRESHOLD_IMAGES = 1000


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


def evaluate(config: ml_collections.ConfigDict, data: protocols.ProtocolData, model: anomem.AnoMem,
             det: MultiScaleDetector | None, variables: dict[str, Any], workdir: str, mesh: Mesh, writer=None,
             pooled_fn: Callable | None = None) -> dict[str, Any]:
    """Fits the scorer on normal training images, scores the test split with it and
    returns the results (the caller writes results.json); writes the scorer state to
    `workdir/scorer` (what `mscad_jax.export` packages), scores.csv, TensorBoard scalars
    and plots.

    `variables` holds 'frozen' (stage 1), 'detector' and 'centers' (stage 2; empty dicts
    without it); `pooled_fn(frozen, images)` feeds the linear probe. The scoring settings
    are read once, into the spec (`scoring.spec.from_config`).
    """
    spec = scoring_spec.from_config(config)
    names = spec.names
    normal_train = data.train_images[~data.train_labelled_anomaly]
    if len(normal_train) > MAX_STATS_EXAMPLES:
        pick = np.random.default_rng([config.seed, 7]).choice(len(normal_train), MAX_STATS_EXAMPLES, replace=False)
        normal_train = normal_train[np.sort(pick)]
    variables = scoring_state.with_defaults(variables)
    raw_jit = parallel.jit_over_batch(scoring.raw_score_function(model, det, spec.knn_pooling, spec.map_source,
                                                                     spec.detector_pooling), mesh, 3)
    train = score_images(raw_jit, (variables["frozen"], variables["detector"], variables["centers"]), normal_train,
                         config.eval.batch_size, mesh, keep_maps=False)
    state, spec = scoring.fit(train, variables, spec, normal_images=normal_train)
    score_jit = parallel.jit_over_batch(scoring.make_scorer(model, det, spec), mesh, 1)
    # One copy of the state on the devices for every split (the bank is most of it); the
    # threshold fields set below are not read by the scoring function.
    on_devices = parallel.replicate(state, mesh)
    score = lambda images: score_images(score_jit, (on_devices,), images, config.eval.batch_size, mesh)  # noqa: E731
    score(data.test_images[:1])  # compiles, so that the rate below is scoring alone
    start = time.perf_counter()
    test = score(data.test_images)
    images_per_s = len(data.test_images) / (time.perf_counter() - start)
    validation = None
    if data.validation is not None:
        v = data.validation
        validation_scores = score(v.images)
        validation = split_results(validation_scores, v.labels, v.classes, v.masks, names, data.class_names)
        validation_by_scorer = validation.pop("by_scorer")
        validation |= {"num_normal": int((v.labels == 0).sum()), "num_anomalies": int(v.labels.sum()),
                       "anomalies": v.source}
        # The threshold promises a false-positive rate on unseen normal images, so it is set
        # on held-out ones: the training normals were fitted on (detector, k-NN bank).
        state |= scoring.threshold_state(validation.pop("scores")[v.labels == 0], spec.threshold_percentile)
        normal_maps = validation.pop("maps")[v.labels == 0]
    else:  # no held-out normals: the training normals' maps (the detector was fitted on them)
        normal_maps = score(normal_train[:MAX_PIXEL_THRESHOLD_IMAGES])["map"]
    # Defect masks (mscad_jax.score) mark the map pixels above what normal images reach.
    state["pixel_threshold"] = np.float32(np.percentile(normal_maps, spec.pixel_threshold_percentile))
    stats = {k: tuple(map(float, v)) for k, v in state["stats"].items()}
    labels = data.test_labels
    final, maps = test["score"], test["map"]
    split = split_results(test, labels, data.test_classes, data.test_masks, names, data.class_names)
    test_by_scorer = split.pop("by_scorer")
    split.pop("scores"), split.pop("maps")
    threshold = float(state["threshold"])
    results: dict[str, Any] = {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "anomaly_type": config.anomaly_type,
        "normal_class": None if config.protocol == "ood" else (config.normal_class_name or config.normal_class),
        "class_names": None if data.class_names is None else list(data.class_names),
        "scorer": "+".join(spec.scorers),
        **split,
        **_floor_results(normal_train, data.test_images, labels, data.test_classes, data.class_names,
                         config.eval.pixel_floor),
        "pixel_knn_floor_k": scoring_spec.PIXEL_FLOOR_K,
        "num_test": int(len(labels)),
        "num_anomalies": int(labels.sum()),
        "num_train": int(len(data.train_images)),
        "num_train_labelled_anomalies": int(data.train_labelled_anomaly.sum()),
        "score_stats": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()},
        # Each scorer's standardisation in the final sum (fusion.final_score), kNN's too
        # when the saved model drops its bank: with scores.csv it recomputes any scorer
        # combination offline (experiments/score_combinations.py).
        "scorer_stats": {k: {"mean": float(v[0]), "std": float(v[1])} for k, v in state["scorer_stats"].items()},
        "threshold": threshold,
        "threshold_percentile": spec.threshold_percentile,
        "pixel_threshold": float(state["pixel_threshold"]),
        "threshold_set_on": "held-out normal training images" if validation else "normal training images",
        # What the threshold does on the test split: the share of normal test images it
        # flags (its false-positive rate) and of anomalies (its true-positive rate).
        "threshold_test_fpr": float(np.mean(final[labels == 0] > threshold)),
        "threshold_test_tpr": float(np.mean(final[labels == 1] > threshold)),
        "validation": validation,
        # Speed of the scoring function on the test split (images already in memory, all
        # devices), and below the size of the model it saves: what the export packages.
        "scoring_images_per_s": images_per_s,
    }
    if validation is not None and config.eval.pixel_floor:
        v = data.validation
        validation |= _floor_results(normal_train, v.images, v.labels, v.classes, data.class_names, True)
    if config.eval.linear_eval and pooled_fn is not None:
        results["linear_eval_accuracy"] = linear_eval(config, data.probe, pooled_fn, (variables["frozen"],), mesh)
    if jax.process_index() == 0:
        if writer is not None:
            writer.write_scalars(0, {f"eval/{k}": v for k, v in _scalars(results).items()})
            writer.flush()
        if config.eval.plots:
            write_plots(os.path.join(workdir, "plots"), final, data, maps, config.eval.num_top_anomalies,
                        spec.map_weights)
        scoring_state.save(os.path.join(workdir, "scorer"), *scoring.without_unchosen_banks(parallel.fetch(state), spec))
        results["model_megabytes"] = files.size(os.path.join(workdir, "scorer", "arrays.npz")) / 2**20
        files.write_scores_csv(os.path.join(workdir, "scores.csv"), final, data.test_classes, data.test_labels,
                               test_by_scorer, test, list(names), data.test_paths)
        if validation is not None:  # the same per image on the validation split, where choices are made
            files.write_scores_csv(os.path.join(workdir, "validation_scores.csv"), validation_scores["score"],
                                   data.validation.classes, data.validation.labels, validation_by_scorer,
                                   validation_scores, list(names))
    return results


def per_anomaly_class(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray,
                       class_names: tuple[str, ...] | None) -> dict[str, float]:
    """AUROC of each anomaly class against the normal images, keyed by the class's name
    where the dataset has names (an image folder's defect folders)."""
    per_class = metrics.auroc_per_anomaly_class(scores, labels, classes)
    if class_names:
        per_class = {class_names[int(k)] if 0 <= int(k) < len(class_names) else k: v for k, v in per_class.items()}
    return per_class


def _floor_results(normal_train: np.ndarray, images: np.ndarray, labels: np.ndarray, classes: np.ndarray,
                   class_names: tuple[str, ...] | None, enabled: bool) -> dict[str, Any]:
    """The raw-pixel 5-NN floor on one split, overall and per anomaly class, so that every
    AUROC the job reports has its floor beside it (None when `eval.pixel_floor` is off)."""
    if not enabled:
        return {"auroc_pixel_knn_floor": None, "auroc_pixel_knn_floor_per_anomaly_class": None}
    floor = knn.pixel_floor_scores(normal_train, images, scoring_spec.PIXEL_FLOOR_K)
    return {"auroc_pixel_knn_floor": metrics.image_metrics(floor, labels)["auroc"],
            "auroc_pixel_knn_floor_per_anomaly_class": per_anomaly_class(floor, labels, classes, class_names)}


def split_results(scores: dict[str, np.ndarray], labels: np.ndarray, classes: np.ndarray, masks: np.ndarray | None,
                  names, class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The metrics of one scored split (test or validation): AUROC, AUPR and FPR95 of the
    final score, AUROC per anomaly class (keyed by the class's name where the dataset has
    names: an image folder's defect folders), each scorer's AUROC alone and per scale,
    pixel AUROC; 'by_scorer' and 'scores' carry the scores themselves for the caller."""
    per_class = per_anomaly_class(scores["score"], labels, classes, class_names)
    by_scorer = {s: scores[f"score/{s}"] for s in scoring_spec.SCORERS if f"score/{s}" in scores}
    auroc_of = lambda s: metrics.image_metrics(by_scorer[s], labels)["auroc"] if s in by_scorer else None  # noqa: E731
    per_scale = lambda prefix: metrics.per_scale_auroc({n: scores[f"{prefix}/{n}"] for n in names}, labels) \
        if f"{prefix}/{names[0]}" in scores else None  # noqa: E731
    return {**metrics.image_metrics(scores["score"], labels),
            "auroc_per_anomaly_class": per_class,
            **{f"auroc_{s}": auroc_of(s) for s in scoring_spec.SCORERS},
            **{f"auroc_{s}_per_scale": per_scale(s) for s in scoring_spec.PER_SCALE_SCORERS},
            "pixel_auroc": metrics.pixel_auroc(scores["map"], masks),
            "by_scorer": by_scorer, "scores": scores["score"], "maps": scores["map"]}


def _scalars(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a results dict, flat: 'auroc', 'auroc_knn_per_scale/scale2',
    'validation/auroc', ..."""
    out = {}
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict) and k.startswith("auroc"):
            out.update({f"{prefix}{k}/{s}": float(x) for s, x in v.items()})
        elif isinstance(v, dict) and k == "validation":
            out.update(_scalars(v, "validation/"))
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
