"""Score fusion: per-scale scores standardised with statistics of normal data and summed
with weights, per scorer; the scorers' sum; and the localisation maps.

Standardising puts scales (and scorers) whose raw scores live on very different ranges
onto a common footing before they are weighted and added. The functions are written
with jax.numpy so that one implementation serves both the host-side fitting of the
statistics (on NumPy arrays) and the jitted, exportable scorer (`mscad_jax.scoring.function`),
where the statistics are arrays of its state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax.scoring.spec import IMAGE_SCORERS, SCORERS

# Standard deviations below this are treated as this value, so a scale whose
# scores are constant on the normal data cannot produce inf/NaN when fused.
SIGMA_FLOOR = 1e-12

# (mean, std) as a pair of floats or a [2] array (inside the jitted scorer).
Stat = Any


def normal_statistics(scores: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(mean, std) of every scalar score on normal training data."""
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in scores.items()
            if not k.startswith(("map/", "feature/", "patches/"))}


def standardize(scores: Any, mean: Any, std: Any) -> jax.Array:
    """Returns `(scores - mean) / max(std, SIGMA_FLOOR)`."""
    return (jnp.asarray(scores, jnp.float32) - mean) / jnp.maximum(std, SIGMA_FLOOR)


def combine_scores(per_scale: Mapping[str, Any], stats: Mapping[str, Stat],
                   weights: Mapping[str, float]) -> jax.Array:
    """Fuses per-scale scores as `sum_s w_s * (a_s - mu_s) / sigma_s`.

    Args:
      per_scale: scale name -> [N] scores (all the same shape).
      stats: scale name -> (mean, std), e.g. measured on held-out normal data.
        Every scale in `per_scale` needs an entry; extra entries are ignored.
      weights: scale name -> weight. Every scale in `per_scale` needs a weight,
        and every weight must refer to a scale in `per_scale`.

    Returns:
      [N] fused scores.
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
            f"(scales with scores: {names}).")
    shapes = {n: jnp.shape(per_scale[n]) for n in names}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"per-scale scores differ in shape: {shapes}")
    return sum(float(weights[n]) * standardize(per_scale[n], stats[n][0], stats[n][1]) for n in names)


def combine(scores: Mapping[str, Any], stats: Mapping[str, Stat], kind: str, names: Sequence[str],
            weights: Sequence[float]) -> jax.Array:
    """Standardised weighted sum of the per-scale scores `kind/<scale>`."""
    keys = [f"{kind}/{n}" for n in names]
    return combine_scores({k: scores[k] for k in keys}, {k: stats[k] for k in keys}, dict(zip(keys, weights)))


def scorer_scores(scores: Mapping[str, Any], stats: Mapping[str, Stat], names: Sequence[str],
                  weights: Sequence[float], detector_weights: Sequence[float] = ()) -> dict[str, jax.Array]:
    """Each available scorer's image score, its scales fused with the normal statistics:
    the detector's with `detector_weights` (() = `weights`), every other's with `weights`."""
    out = {}
    for scorer in SCORERS:
        if scorer in IMAGE_SCORERS:
            if scorer in scores:
                out[scorer] = jnp.asarray(scores[scorer], jnp.float32)
        elif f"{scorer}/{names[0]}" in scores:
            own = detector_weights if scorer == "detector" and detector_weights else weights
            out[scorer] = combine(scores, stats, scorer, names, own)
    return out


def final_score(by_scorer: Mapping[str, Any], scorer_stats: Mapping[str, Stat], chosen: Sequence[str]) -> jax.Array:
    """The sum of the chosen scorers, each standardised once more so that each weighs
    the same in the sum."""
    return sum(standardize(by_scorer[s], scorer_stats[s][0], scorer_stats[s][1]) for s in chosen)


def heatmap_range(weights: Sequence[float]) -> tuple[float, float]:
    """The one colour range of every heatmap of a model: a normal pixel of a localisation
    map sits near sum(weights), so [0, 3 * sum(weights)] spans normal to clearly anomalous."""
    return 0.0, 3.0 * float(sum(weights))


def localisation_maps(scores: Mapping[str, Any], stats: Mapping[str, Stat], names: Sequence[str],
                      weights: Sequence[float]) -> jax.Array:
    """sum_s w_s map_s[h, w] / mu(map_level_s): each scale's map (function.raw_score_function)
    in units of its mean on normal data, so a normal pixel sits near sum(weights) in every
    run. Models saved before map_level existed had the memory's map, whose mean is A0."""
    level = lambda n: stats[f"map_level/{n}"] if f"map_level/{n}" in stats else stats[f"a0/{n}"]  # noqa: E731
    return sum(w * scores[f"map/{n}"] / jnp.maximum(level(n)[0], SIGMA_FLOOR) for n, w in zip(names, weights))
