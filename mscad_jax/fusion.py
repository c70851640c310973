"""Score fusion (NumPy only): per-scale scores standardised with statistics of normal
data and summed with weights, per scorer; and the localisation maps.

Standardising puts scales (and scorers) whose raw scores live on very different ranges
onto a common footing before they are weighted and added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Standard deviations below this are treated as this value, so a scale whose
# scores are constant on the normal data cannot produce inf/NaN when fused.
SIGMA_FLOOR = 1e-12


# Scorer name (config `eval.scorer`) -> prefix of its per-scale score keys; None: one key.
SCORERS: dict[str, str | None] = {"detector": "a", "a0": "a0", "knn": "knn", "rotation": None,
                                  "patch_memory": "patch_memory", "patch_knn": "patch_knn"}


def normal_statistics(scores: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(mean, std) of every scalar score on normal training data."""
    return {k: (float(v.mean()), float(v.std())) for k, v in scores.items()
            if not k.startswith(("map/", "feature/", "patches/"))}


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




def scorer_scores(scores: dict[str, np.ndarray], stats: dict[str, tuple[float, float]], names: list[str],
                  weights: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Each available scorer's image score, its scales fused with the normal statistics."""
    out = {}
    for scorer, prefix in SCORERS.items():
        if prefix is None:
            if scorer in scores:
                out[scorer] = scores[scorer]
        elif f"{prefix}/{names[0]}" in scores:
            out[scorer] = combine(scores, stats, prefix, names, weights)
    return out


def combine(scores: dict[str, np.ndarray], stats: dict[str, tuple[float, float]], kind: str,
            names: list[str], weights: tuple[float, ...]) -> np.ndarray:
    """Standardised weighted sum of the per-scale scores `kind/<scale>`."""
    keys = [f"{kind}/{n}" for n in names]
    return combine_scores({k: scores[k] for k in keys}, {k: stats[k] for k in keys},
                                  dict(zip(keys, weights)))


def localisation_maps(scores: dict[str, np.ndarray], stats: dict[str, tuple[float, float]],
                      names: list[str], weights: tuple[float, ...]) -> np.ndarray:
    return sum(w * scores[f"map/{n}"] / max(stats[f"a0/{n}"][0], 1e-12) for n, w in zip(names, weights))
