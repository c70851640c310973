"""The score chosen on validation: of a few scorer combinations, the one whose fused score
ranks the validation split best (`eval.scorer_candidates`).

Each candidate is a '+'-joined set of scorers, fused exactly as the scoring function fuses
them (fusion.final_score with the scorer statistics of normal training images), so the
choice is a property of the fitted model: evaluation makes it once, saves it in the spec,
and the exported model scores with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mscad_jax import metrics
from mscad_jax.scoring import fusion


def choose_scorers(by_scorer: Mapping[str, Any], scorer_stats: Mapping[str, Any],
                   candidates: Sequence[tuple[str, ...]], labels: np.ndarray) -> tuple[tuple[str, ...], dict[str, float]]:
    """The candidate with the highest validation AUROC, and every candidate's AUROC keyed
    by its '+'-joined name. Ties go to the earlier candidate (the config's own scorer comes
    first), so a choice only moves away from it when validation says so.

    Args:
      by_scorer: scorer -> [N] validation scores (each scorer fused over its scales).
      scorer_stats: scorer -> (mean, std) on normal training images.
      candidates: scorer tuples; every scorer they name must be in `by_scorer`.
      labels: [N] 1 for anomalies, 0 for normal images; both must occur.
    """
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise ValueError("choosing eval.scorer on validation needs normal and anomalous validation images")
    aurocs: dict[str, float] = {}
    best, best_auroc = None, -np.inf
    for scorers in candidates:
        missing = [s for s in scorers if s not in by_scorer]
        if missing:
            raise ValueError(f"eval.scorer_candidates: {'+'.join(scorers)} needs {missing}, which this model does "
                             f"not produce (available: {', '.join(by_scorer)})")
        score = np.asarray(fusion.final_score(by_scorer, scorer_stats, scorers))
        auroc = metrics.image_metrics(score, labels)["auroc"]
        aurocs["+".join(scorers)] = auroc
        if auroc > best_auroc:
            best, best_auroc = tuple(scorers), auroc
    return best, aurocs
