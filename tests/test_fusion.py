"""Standardisation and multi-scale score fusion."""

from __future__ import annotations

import numpy as np
import pytest

from mscad_jax.scoring import fusion


# ---------------------------------------------------------------------------
# standardize / combine_scores
# ---------------------------------------------------------------------------


def test_standardize_and_sigma_floor():
    np.testing.assert_allclose(fusion.standardize([1.0, 3.0, 5.0], 3.0, 2.0), [-1.0, 0.0, 1.0])
    out = fusion.standardize([1.0, 1.0 + 2**-20], 1.0, 0.0)  # std 0 is floored, not divided by
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [0.0, 2**-20 / fusion.SIGMA_FLOOR], rtol=1e-5)


def test_combine_scores_matches_manual():
    per_scale = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([10.0, 0.0, -10.0])}
    stats = {"a": (2.0, 0.5), "b": (0.0, 10.0), "unused": (0.0, 1.0)}
    weights = {"a": 0.25, "b": 2.0}
    out = fusion.combine_scores(per_scale, stats, weights)
    # a: (x-2)/0.5 = [-2, 0, 2] * 0.25 = [-0.5, 0, 0.5]
    # b: x/10 = [1, 0, -1] * 2 = [2, 0, -2]
    np.testing.assert_allclose(out, [1.5, 0.0, -1.5])


def test_combine_scores_sigma_zero_is_floored():
    out = fusion.combine_scores({"a": np.array([1.0, 1.0])}, {"a": (1.0, 0.0)}, {"a": 1.0})
    np.testing.assert_array_equal(out, [0.0, 0.0])


def test_combine_scores_inconsistent_scales_raise():
    per_scale = {"a": np.zeros(3), "b": np.zeros(3)}
    with pytest.raises(ValueError, match=r"missing stats for \['b'\]"):
        fusion.combine_scores(per_scale, {"a": (0, 1)}, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r"missing weights for \['a'\]"):
        fusion.combine_scores(per_scale, {"a": (0, 1), "b": (0, 1)}, {"b": 1})
    with pytest.raises(ValueError, match=r"without scores \['c'\]"):
        fusion.combine_scores(per_scale, {"a": (0, 1), "b": (0, 1)}, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match="shape"):
        fusion.combine_scores(
            {"a": np.zeros(3), "b": np.zeros(4)}, {"a": (0, 1), "b": (0, 1)}, {"a": 1, "b": 1}
        )
