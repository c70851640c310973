"""What the score is, beside its arrays: `ScorerSpec`, built from a config here and only
here, and the scorer registry.

Evaluation, export and the scoring command read scoring settings from the spec (saved
as WORKDIR/scorer/spec.json and in an artifact's metadata), never from the config, so an
exported model scores exactly as the evaluation that measured it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Scorers whose score is a standardised, weighted sum over scales of per-scale scores
# keyed '<scorer>/<scale>'.
PER_SCALE_SCORERS = ("detector", "a0", "knn")
# Scorers with one score per image, keyed by the scorer's name.
IMAGE_SCORERS = ("rotation", "pixel_knn")
SCORERS = PER_SCALE_SCORERS + IMAGE_SCORERS
KNN_METRICS = ("cosine", "euclidean")
KNN_POOLINGS = ("mean", "flatten")
# What the localisation map shows per position: the memory's deviation energy ||D_s||^2,
# or the metric detector's learned distance ||W_s D_s||^2 (what stage 2 learned).
MAP_SOURCES = ("memory", "detector")
# How the metric detector's per-position distances become its per-scale image score:
# their mean (the distance stage 2 trains) or their maximum (a defect in one place).
DETECTOR_POOLINGS = ("mean", "max")
# The threshold is this percentile of the final scores of normal training images.
THRESHOLD_PERCENTILE = 95.0
# The raw-pixel k-NN floor printed beside every result uses this many neighbours.
PIXEL_FLOOR_K = 5
# Per-scale key prefixes of earlier versions -> today's names (spec.json, arrays.npz).
LEGACY_PREFIXES = {"a": "detector"}


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """The scoring settings (written as spec.json)."""

    names: tuple[str, ...]  # scale names, e.g. scale2, scale3, scale4
    weights: tuple[float, ...]  # w_s per scale of every scorer but the detector
    scorers: tuple[str, ...]  # the chosen scorers summed into 'score'
    available: tuple[str, ...] = ()  # every scorer the fitted model produces (set by fitting)
    knn_k: int = 5  # neighbours of the knn and pixel_knn scorers
    threshold_percentile: float = THRESHOLD_PERCENTILE
    knn_metric: str = "cosine"  # cosine | euclidean
    detector_weights: tuple[float, ...] = ()  # w_s of the detector and the maps; () = weights
    knn_pooling: str = "mean"  # the knn vectors: mean (GAP) | flatten
    pixel_threshold_percentile: float = 99.0  # of normal images' map pixels: the defect-mask threshold
    map_source: str = "memory"  # MAP_SOURCES
    detector_pooling: str = "mean"  # DETECTOR_POOLINGS

    @property
    def map_weights(self) -> tuple[float, ...]:
        """w_s of the detector scorer and of the localisation maps (its deviation maps)."""
        return self.detector_weights or self.weights

    @classmethod
    def from_json(cls, d: dict[str, Any], defaults: "ScorerSpec | None" = None) -> "ScorerSpec":
        """The spec of a spec.json; a field an older file lacks comes from `defaults`
        (the spec its run's config gives), else keeps the dataclass default."""
        values = {} if defaults is None else dataclasses.asdict(defaults)
        values |= {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                   if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**values)


def scale_names(scales) -> tuple[str, ...]:
    return tuple(f"scale{s}" for s in scales)


def scorer_names(entries) -> tuple[str, ...]:
    """The scorers of `eval.scorer`; 'knn+rotation' and ('knn', 'rotation') are the same
    (a `--config.eval.scorer=knn+rotation` flag arrives as one string)."""
    return tuple(name for entry in entries for name in str(entry).split("+") if name)


def from_config(config) -> ScorerSpec:
    """The spec a config asks for (`available` is filled in by fitting)."""
    names = scale_names(config.model.scales)
    weights = tuple(float(w) for w in config.eval.score_weights) or (1.0,) * len(names)
    return ScorerSpec(names=names, weights=weights, scorers=scorer_names(config.eval.scorer),
                      knn_k=int(config.eval.knn_k), knn_metric=config.eval.knn_metric,
                      detector_weights=tuple(float(w) for w in config.eval.detector_weights),
                      knn_pooling=config.eval.knn_pooling,
                      pixel_threshold_percentile=float(config.eval.pixel_threshold_percentile),
                      map_source=config.eval.map_source, detector_pooling=config.eval.detector_pooling)


def check_eval_section(ev, model, detector: str, fail) -> None:
    """The `eval` section's scoring fields against the registries above (`detector`:
    stage2.detector); `fail(field, value, allowed)` raises the config error."""
    scorers = scorer_names(ev.scorer)
    if not scorers or len(set(scorers)) != len(scorers) or not set(scorers) <= set(SCORERS):
        fail("eval.scorer", scorers, f"distinct names from {', '.join(SCORERS)}, joined with '+'")
    if "rotation" in scorers and not model.rotation_head:
        fail("eval.scorer", scorers, "the rotation scorer needs model.rotation_head=True")
    if ev.knn_pooling not in KNN_POOLINGS:
        fail("eval.knn_pooling", ev.knn_pooling, f"allowed: {', '.join(KNN_POOLINGS)}")
    if ev.knn_metric not in KNN_METRICS:
        fail("eval.knn_metric", ev.knn_metric, f"allowed: {', '.join(KNN_METRICS)}")
    if not 0.0 < ev.pixel_threshold_percentile < 100.0:
        fail("eval.pixel_threshold_percentile", ev.pixel_threshold_percentile, "a percentile in (0, 100)")
    for field, allowed in (("map_source", MAP_SOURCES), ("detector_pooling", DETECTOR_POOLINGS)):
        if ev[field] not in allowed:
            fail(f"eval.{field}", ev[field], f"allowed: {', '.join(allowed)}")
        if ev[field] != allowed[0] and detector != "metric":
            fail(f"eval.{field}", ev[field], "needs stage2.detector=metric (the detector with a distance per position)")
    if ev.knn_k < 1:
        fail("eval.knn_k", ev.knn_k, "must be a positive integer")
    count = len(tuple(model.scales))
    for field in ("score_weights", "detector_weights"):
        weights = tuple(ev[field])
        if weights and len(weights) != count:
            fail(f"eval.{field}", weights, f"one weight per scale in model.scales={tuple(model.scales)}, or () for all 1")
