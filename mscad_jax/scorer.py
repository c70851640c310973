"""The one scoring function: uint8 images -> final score, each scorer's score, the
per-scale scores and the localisation map.

`fit` measures what a score depends on beyond the trained weights, on normal training
images: the k-NN bank (their pooled or flattened features per scale, L2-normalised for
the cosine metric; with the `pixel_knn` scorer also the images themselves), the normal
statistics (mean, std) of every per-scale score and of every scorer, and the threshold
(a percentile of their final scores). Together with the frozen stage-1 variables and the
stage-2 detector it forms the scorer state, a pytree of arrays. `make_scorer` returns the
pure function `(state, images) -> scores`: evaluation jits it over the mesh,
`mscad_jax.export` serialises it with jax.export, and `mscad_jax.score` runs the exported
artifact, so the three cannot disagree.

Outputs, per image: 'score' (the sum of the chosen scorers, each standardised on normal
data), 'score/<scorer>' for every scorer the model has, the raw per-scale scores
'<prefix>/<scale>' (a: detector distance, a0: training-free energy, knn: k-NN cosine
or Euclidean distance, patch_memory: worst patch's distance to the memory, local: the
segmentation head's largest logit), 'pixel_knn' (the raw-pixel k-NN distance, the floor
every result is published beside, when it is a chosen scorer) and 'map' [H, W] (see
fusion.localisation_maps).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax import files, fusion, knn, losses

# The threshold is this percentile of the final scores of normal training images.
THRESHOLD_PERCENTILE = 95.0

ScorerState = dict[str, Any]  # frozen, detector, centers, bank, [pixel_bank], stats, scorer_stats, threshold


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """What the scoring function is, beside its arrays (written as spec.json)."""

    names: tuple[str, ...]  # scale names, e.g. scale2, scale3, scale4
    weights: tuple[float, ...]  # w_s per scale
    scorers: tuple[str, ...]  # the chosen scorers summed into 'score'
    available: tuple[str, ...]  # every scorer the model produces
    knn_k: int
    threshold_percentile: float = THRESHOLD_PERCENTILE
    knn_metric: str = "cosine"  # of the knn scorer: cosine | euclidean (eval.knn_metric)
    detector_weights: tuple[float, ...] = ()  # w_s of the detector and the maps; () = weights

    @property
    def map_weights(self) -> tuple[float, ...]:
        """w_s of the detector scorer and of the localisation maps (its deviation maps)."""
        return self.detector_weights or self.weights

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ScorerSpec":
        # A field missing from an older spec.json keeps its default (knn_metric: cosine).
        return cls(**{f.name: tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name]
                      for f in dataclasses.fields(cls) if f.name in d})


def knn_distance(features: jax.Array, bank: jax.Array, k: int) -> jax.Array:
    """Mean cosine distance of each row of `features` to its k nearest rows of the
    L2-normalised `bank` (the jitted counterpart of knn.knn_distance)."""
    similarity = losses.l2_normalize(features) @ bank.T
    return jnp.mean(1.0 - jax.lax.top_k(similarity, k)[0], axis=-1)


def euclidean_knn_distance(queries: jax.Array, bank: jax.Array, k: int) -> jax.Array:
    """Mean Euclidean distance of each row of `queries` to its k nearest rows of `bank`
    (the jitted counterpart of knn.knn_distance(..., 'euclidean'))."""
    # |q - b|^2 expanded, which subtracts numbers of similar size: both sides are centred
    # on the bank's mean first (features are mostly positive, so this shrinks them), and
    # HIGHEST keeps the cross term exact where the default would round it (TF32 on GPUs).
    centre = jnp.mean(bank, axis=0)
    queries, bank = queries - centre, bank - centre
    cross = jnp.matmul(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
    squared = jnp.sum(queries ** 2, -1)[:, None] - 2.0 * cross + jnp.sum(bank ** 2, -1)[None, :]
    nearest = -jax.lax.top_k(-squared, k)[0]
    return jnp.mean(jnp.sqrt(jnp.maximum(nearest, 0.0)), axis=-1)


def pixel_knn_distance(images: jax.Array, bank: jax.Array, k: int) -> jax.Array:
    """Mean Euclidean distance, on [0, 1] pixels, of each uint8 image to its k nearest
    images of the uint8 `bank`."""
    pixels = lambda x: x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0  # noqa: E731
    return euclidean_knn_distance(pixels(images), pixels(bank), k)


def fuse(raw: dict[str, Any], state: ScorerState, spec: ScorerSpec) -> dict[str, jax.Array]:
    """Per-scale scores (k-NN included) -> the scorer outputs (module docstring)."""
    by_scorer = fusion.scorer_scores(raw, state["stats"], spec.names, spec.weights, spec.map_weights)
    out = {"score": fusion.final_score(by_scorer, state["scorer_stats"], spec.scorers)}
    out |= {f"score/{s}": v for s, v in by_scorer.items()}
    out |= {k: v for k, v in raw.items() if k.split("/")[0] in fusion.SCORERS.values() or k.startswith("patches/")}
    if f"map/{spec.names[0]}" in raw:
        out["map"] = fusion.localisation_maps(raw, state["stats"], spec.names, spec.map_weights)
    return out


def make_scorer(raw_fn: Callable, spec: ScorerSpec) -> Callable[[ScorerState, jax.Array], dict[str, jax.Array]]:
    """The pure scoring function `(state, images uint8 [B, H, W, C]) -> outputs`.

    `raw_fn` is stage2.score_function: (frozen, detector params, centres, images) -> raw
    per-scale scores, maps and pooled features.
    """

    def score(state: ScorerState, images: jax.Array) -> dict[str, jax.Array]:
        raw = raw_fn(state["frozen"], state["detector"], state["centers"], images)
        for n in spec.names:
            distance = euclidean_knn_distance if spec.knn_metric == "euclidean" else knn_distance
            raw[f"knn/{n}"] = distance(raw.pop(f"feature/{n}"), state["bank"][n], spec.knn_k)
        if "pixel_knn" in spec.available:
            raw["pixel_knn"] = pixel_knn_distance(images, state["pixel_bank"], spec.knn_k)
        return fuse(raw, state, spec)

    return score


def fit(train: dict[str, np.ndarray], variables: dict[str, Any], names: tuple[str, ...],
        weights: tuple[float, ...], scorers: tuple[str, ...], knn_k: int,
        threshold_percentile: float = THRESHOLD_PERCENTILE,
        normal_images: np.ndarray | None = None, knn_metric: str = "cosine",
        detector_weights: tuple[float, ...] = ()) -> tuple[ScorerState, ScorerSpec]:
    """The scorer state from `train`, the raw scores of normal training images.

    `variables` holds 'frozen', 'detector' and 'centers'. Each training image's k-NN
    score leaves the image itself out of the bank (scikit-learn's search), so its
    statistics are those of an unseen normal image. `knn_metric` is that score's distance
    (cosine, or euclidean on the unnormalised vectors). `normal_images` (uint8, the images
    `train` was scored on) are the bank of the `pixel_knn` scorer, kept only when it is
    chosen: it costs an image per bank row. `detector_weights` fuse the detector's scales
    and the maps (() = `weights`).
    """
    train = dict(train)
    bank = {}
    for n in names:
        features = train.pop(f"feature/{n}")
        # The cosine bank is stored normalised, so that scoring is one product.
        bank[n] = np.asarray(losses.l2_normalize(jnp.asarray(features)) if knn_metric == "cosine" else features,
                             np.float32)
        train[f"knn/{n}"] = knn.knn_distance(features, None, knn_k, knn_metric)
    pixel_bank = {}
    if "pixel_knn" in scorers:
        if normal_images is None:
            raise ValueError("the pixel_knn scorer needs the normal training images (normal_images)")
        pixel_bank["pixel_bank"] = np.asarray(normal_images, np.uint8)
        train["pixel_knn"] = knn.knn_distance(pixel_bank["pixel_bank"] / np.float32(255.0), None, knn_k, "euclidean")
    stats = {k: np.asarray(v, np.float32) for k, v in fusion.normal_statistics(train).items()}
    by_scorer = fusion.scorer_scores(train, stats, names, weights, detector_weights)
    by_scorer = {s: np.asarray(v) for s, v in by_scorer.items()}
    missing = [s for s in scorers if s not in by_scorer]
    if missing:
        raise ValueError(f"eval.scorer names {missing}, which this model does not produce "
                         f"(available: {', '.join(by_scorer)})")
    scorer_stats = {s: np.array([v.mean(), v.std()], np.float32) for s, v in by_scorer.items()}
    final = np.asarray(fusion.final_score(by_scorer, scorer_stats, scorers))
    state = {**variables, "bank": bank, **pixel_bank, "stats": stats, "scorer_stats": scorer_stats,
             "threshold": np.float32(np.percentile(final, threshold_percentile))}
    spec = ScorerSpec(tuple(names), tuple(float(w) for w in weights), tuple(scorers), tuple(by_scorer), int(knn_k),
                      float(threshold_percentile), knn_metric, tuple(float(w) for w in detector_weights))
    return state, spec


# ---- the state on disk: arrays.npz (flat names, no pickle) + spec.json ----------------

SEPARATOR = "."


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{'frozen.params.encoder.Conv_0.kernel': array, ...}; empty dicts vanish."""
    out = {}
    for key, value in tree.items():
        if SEPARATOR in key:
            raise ValueError(f"state key {key!r} contains {SEPARATOR!r}")
        if isinstance(value, dict) or hasattr(value, "items"):
            out |= flatten(dict(value.items()), f"{prefix}{key}{SEPARATOR}")
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(SEPARATOR)
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def with_defaults(state: dict[str, Any]) -> ScorerState:
    """A state without stage 2 has no detector or centres: empty subtrees."""
    return {"detector": {}, "centers": {}, **state}


def save(directory: str, state: ScorerState, spec: ScorerSpec) -> None:
    """Writes `directory/arrays.npz` and `directory/spec.json`, each atomically."""
    flat = flatten(jax.tree.map(np.asarray, state))
    with files.atomic_write(os.path.join(directory, "arrays.npz"), "wb") as f:
        np.savez(f, **flat)
    files.write_json_atomic(os.path.join(directory, "spec.json"), dataclasses.asdict(spec))


def load(directory: str) -> tuple[ScorerState, ScorerSpec]:
    with np.load(os.path.join(directory, "arrays.npz"), allow_pickle=False) as z:
        state = with_defaults(unflatten({k: z[k] for k in z.files}))
    with open(os.path.join(directory, "spec.json"), encoding="utf-8") as f:
        spec = ScorerSpec.from_json(json.load(f))
    return state, spec
