"""The score chosen on validation (`eval.scorer_candidates`, mscad_jax.scoring.selection)."""

import numpy as np
import pytest

from mscad_jax.scoring import fusion
from mscad_jax.scoring.selection import choose_scorers

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
STATS = {"detector": (0.0, 1.0), "a0": (0.0, 1.0), "rotation": (0.0, 2.0)}


def test_the_candidate_that_ranks_validation_best_is_chosen_with_every_auroc_reported():
    by_scorer = {"detector": np.array([0., 1, 2, 5, 3, 4, 6, 7]),  # one normal above two anomalies
                 "a0": np.array([0., 1, 2, 3, 4, 5, 6, 7]),  # perfect
                 "rotation": np.array([7., 6, 5, 4, 3, 2, 1, 0])}  # reversed
    chosen, aurocs = choose_scorers(by_scorer, STATS, [("detector",), ("a0",), ("detector", "rotation")], LABELS)
    assert chosen == ("a0",)
    assert aurocs["detector"] == pytest.approx(14 / 16) and aurocs["a0"] == 1.0
    # A sum is fused as the scoring function fuses it: standardised with the normal statistics.
    fused = np.asarray(fusion.final_score(by_scorer, STATS, ("detector", "rotation")))
    pairs = fused[LABELS == 1][:, None] - fused[LABELS == 0][None, :]
    ranks = ((pairs > 0) + 0.5 * (pairs == 0)).mean()  # a tie counts half, as in the AUROC
    assert aurocs["detector+rotation"] == pytest.approx(ranks)


def test_a_tie_keeps_the_earlier_candidate():
    same = np.array([0., 1, 2, 3, 4, 5, 6, 7])
    chosen, _ = choose_scorers({"detector": same, "a0": same * 3}, STATS, [("detector",), ("a0",)], LABELS)
    assert chosen == ("detector",)
    chosen, _ = choose_scorers({"detector": same, "a0": same * 3}, STATS, [("a0",), ("detector",)], LABELS)
    assert chosen == ("a0",)


def test_a_scorer_the_model_lacks_or_a_one_sided_validation_is_refused():
    scores = {"detector": np.arange(8.0)}
    with pytest.raises(ValueError, match=r"detector\+knn needs \['knn'\].*available: detector"):
        choose_scorers(scores, STATS, [("detector",), ("detector", "knn")], LABELS)
    with pytest.raises(ValueError, match="normal and anomalous validation images"):
        choose_scorers(scores, STATS, [("detector",)], np.zeros(8, int))
