"""The one scoring function: uint8 images -> final score, each scorer's score, the
per-scale scores and the localisation map.

`raw_score_function` computes what a trained model says of an image at every scale;
`fit` measures what the score depends on beyond the trained weights, on normal training
images: the k-NN bank (their features per scale, L2-normalised for the cosine metric;
with the `pixel_knn` scorer also the images themselves), the normal statistics (mean,
std) of every per-scale score and of every scorer, and the threshold (a percentile of
their final scores). Together with the frozen stage-1 variables and the stage-2 detector
it forms the scorer state, a pytree of arrays. `make_scorer` returns the pure function
`(state, images) -> outputs`.

Outputs, per image: 'score' (the sum of the chosen scorers, each standardised on normal
data), 'score/<scorer>' for every scorer the model has (for the image scorers,
rotation and pixel_knn, their raw score), the raw per-scale scores '<scorer>/<scale>'
(detector: the stage-2 distance a_s; a0: the training-free energy mean_hw ||D_s||^2;
knn: the k-NN distance of the scale's features) and 'map' [H, W]
(fusion.localisation_maps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax.data.input_pipeline import to_float
from mscad_jax.models import anomem
from mscad_jax.models.detector import MultiScaleDetector, metric_position_distances
from mscad_jax.ops import l2_normalize
from mscad_jax.scoring import fusion, knn
from mscad_jax.scoring.spec import PER_SCALE_SCORERS, ScorerSpec

# frozen, detector, centers, bank, [pixel_bank], stats, scorer_stats, normal_scores, threshold
ScorerState = dict[str, Any]
RawFunction = Callable[[dict, dict, dict, jax.Array], dict[str, jax.Array]]


def pool(features: jax.Array, how: str) -> jax.Array:
    """[B, H, W, C] -> the k-NN scorer's vectors: 'mean' (GAP, [B, C]) or 'flatten'
    ([B, H*W*C], which keeps where each feature is)."""
    if how == "flatten":
        return features.reshape(features.shape[0], -1)
    return features.mean(axis=(1, 2))


def raw_score_function(model: anomem.AnoMem, det: MultiScaleDetector | None, knn_pooling: str,
                       map_source: str = "memory", detector_pooling: str = "mean") -> RawFunction:
    """The pure (frozen, detector params, centers, images uint8) -> per-image raw scores.

    Returns {'detector/<scale>': [B] a_s = ||phi_s(D_s) - c_s||^2 (the metric detector's
    per-position distances pooled by `detector_pooling`), 'a0/<scale>': [B] mean_hw
    ||D_s||^2, 'map/<scale>': [B, H, W] the per-position map of `map_source` (memory:
    ||D_s[h, w]||^2; detector: ||W_s D_s[h, w]||^2) upsampled to the image,
    'map_level/<scale>': [B] that map's mean (the unit of the localisation maps),
    'feature/<scale>': the kNN vectors (`pool(F_s, knn_pooling)`)} and, when the model
    has a rotation head, 'rotation': [B] sum over the four rotations r of -log p(r | x
    rotated by r) (CSI's shifting-transformation score). With `det=None` (no stage 2
    yet) there are no detector entries.
    """
    names = anomem.scale_names(model.scales)

    def score(frozen, params, centers, images):
        x = to_float(images)
        outputs = anomem.frozen_outputs(model, frozen, x)
        deviations = anomem.deviation_maps(outputs, names)
        embeddings = None if det is None else det.apply(params, deviations)
        out = {}
        for n in names:
            energy = jnp.sum(deviations[n] ** 2, axis=-1)
            local = energy
            if embeddings is not None and det.zero_centre:
                distances = metric_position_distances(embeddings[n], deviations[n].shape)
                out[f"detector/{n}"] = distances.max(axis=(1, 2)) if detector_pooling == "max" \
                    else distances.mean(axis=(1, 2))
                local = distances if map_source == "detector" else energy
            elif embeddings is not None:
                out[f"detector/{n}"] = jnp.sum((embeddings[n] - centers[n]) ** 2, axis=-1)
            out[f"a0/{n}"] = energy.mean(axis=(1, 2))
            out[f"map/{n}"] = jax.image.resize(local, (x.shape[0],) + x.shape[1:3], "bilinear")
            out[f"map_level/{n}"] = local.mean(axis=(1, 2))
            out[f"feature/{n}"] = pool(outputs[n]["features"], knn_pooling)
        if model.rotation_head:
            rotated = [outputs] + [anomem.frozen_outputs(model, frozen, anomem.rotate(x, r))
                                   for r in range(1, anomem.NUM_ROTATIONS)]
            out["rotation"] = -sum(jax.nn.log_softmax(o[anomem.ROTATION_LOGITS])[:, r]
                                   for r, o in enumerate(rotated))
        return out

    return score


def fuse(raw: dict[str, Any], state: ScorerState, spec: ScorerSpec) -> dict[str, jax.Array]:
    """Per-scale scores (k-NN included) -> the scorer outputs (module docstring)."""
    by_scorer = fusion.scorer_scores(raw, state["stats"], spec.names, spec.weights, spec.map_weights)
    out = {"score": fusion.final_score(by_scorer, state["scorer_stats"], spec.scorers)}
    out |= {f"score/{s}": v for s, v in by_scorer.items()}
    # The raw per-scale scores; an image scorer's raw score is its 'score/<scorer>' already.
    out |= {k: v for k, v in raw.items() if "/" in k and k.split("/")[0] in PER_SCALE_SCORERS}
    if f"map/{spec.names[0]}" in raw:
        out["map"] = fusion.localisation_maps(raw, state["stats"], spec.names, spec.map_weights)
    return out


def make_scorer(model: anomem.AnoMem, det: MultiScaleDetector | None,
                spec: ScorerSpec) -> Callable[[ScorerState, jax.Array], dict[str, jax.Array]]:
    """The pure scoring function `(state, images uint8 [B, H, W, C]) -> outputs`."""
    raw_fn = raw_score_function(model, det, spec.knn_pooling, spec.map_source, spec.detector_pooling)

    def score(state: ScorerState, images: jax.Array) -> dict[str, jax.Array]:
        raw = raw_fn(state["frozen"], state["detector"], state["centers"], images)
        for n in spec.names:
            features = raw.pop(f"feature/{n}")
            if state.get("bank"):  # a state without the bank (`without_unchosen_banks`) has no knn scorer
                raw[f"knn/{n}"] = knn.knn_distance(features, state["bank"][n], spec.knn_k, spec.knn_metric)
        if "pixel_knn" in spec.available:
            raw["pixel_knn"] = knn.knn_distance(knn.pixels(images), knn.pixels(state["pixel_bank"]), spec.knn_k,
                                                "euclidean")
        return fuse(raw, state, spec)

    return score


def fit(train: dict[str, np.ndarray], variables: dict[str, Any], spec: ScorerSpec,
        normal_images: np.ndarray | None = None) -> tuple[ScorerState, ScorerSpec]:
    """The scorer state from `train`, the raw scores of normal training images, and the
    spec with `available` filled in.

    `variables` holds 'frozen', 'detector' and 'centers'. Each training image's k-NN
    score leaves the image itself out of the bank, so its statistics are those of an
    unseen normal image. `normal_images` (uint8, the images `train` was scored on) are
    the bank of the `pixel_knn` scorer, kept only when it is chosen: it costs an image
    per bank row.
    """
    train = dict(train)
    bank = {}
    for n in spec.names:
        features = np.asarray(train.pop(f"feature/{n}"), np.float32)
        # The cosine bank is stored normalised: scoring then normalises a unit vector.
        bank[n] = np.asarray(l2_normalize(features)) if spec.knn_metric == "cosine" else features
        train[f"knn/{n}"] = knn.host_knn_distance(bank[n], None, spec.knn_k, spec.knn_metric)
    pixel_bank = {}
    if "pixel_knn" in spec.scorers:
        if normal_images is None:
            raise ValueError("the pixel_knn scorer needs the normal training images (normal_images)")
        pixel_bank["pixel_bank"] = np.asarray(normal_images, np.uint8)
        train["pixel_knn"] = knn.host_knn_distance(np.asarray(knn.pixels(pixel_bank["pixel_bank"])), None,
                                                   spec.knn_k, "euclidean")
    stats = {k: np.asarray(v, np.float32) for k, v in fusion.normal_statistics(train).items()}
    by_scorer = fusion.scorer_scores(train, stats, spec.names, spec.weights, spec.map_weights)
    by_scorer = {s: np.asarray(v) for s, v in by_scorer.items()}
    missing = [s for s in spec.scorers if s not in by_scorer]
    if missing:
        raise ValueError(f"eval.scorer names {missing}, which this model does not produce "
                         f"(available: {', '.join(by_scorer)})")
    scorer_stats = {s: np.array([v.mean(), v.std()], np.float32) for s, v in by_scorer.items()}
    final = np.asarray(fusion.final_score(by_scorer, scorer_stats, spec.scorers))
    state = {**variables, "bank": bank, **pixel_bank, "stats": stats, "scorer_stats": scorer_stats}
    state |= threshold_state(final, spec.threshold_percentile)
    return state, dataclasses.replace(spec, available=tuple(by_scorer))


def threshold_state(normal_scores: np.ndarray, percentile: float) -> dict[str, np.ndarray]:
    """'normal_scores' (the final scores of the normal images the threshold is set on,
    sorted: another operating point can be read from them without refitting) and
    'threshold', their `percentile`-th percentile."""
    normal_scores = np.sort(np.asarray(normal_scores, np.float32))
    return {"normal_scores": normal_scores, "threshold": np.float32(np.percentile(normal_scores, percentile))}


def without_unchosen_banks(state: ScorerState, spec: ScorerSpec) -> tuple[ScorerState, ScorerSpec]:
    """The state and spec a model keeps (WORKDIR/scorer, the exported artifact): without
    the k-NN bank when knn is not a chosen scorer. The bank holds a feature vector of every
    training image, so it would make the model grow with the training set; evaluation
    still reports the knn baseline from the full state."""
    if "knn" in spec.scorers or "bank" not in state:
        return state, spec
    kept = {k: v for k, v in state.items() if k != "bank"}
    kept["stats"] = {k: v for k, v in state["stats"].items() if not k.startswith("knn/")}
    kept["scorer_stats"] = {k: v for k, v in state["scorer_stats"].items() if k != "knn"}
    return kept, dataclasses.replace(spec, available=tuple(s for s in spec.available if s != "knn"))
