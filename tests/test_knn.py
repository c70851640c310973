"""k-NN scores against explicit NumPy loops; the raw-pixel floor."""

import numpy as np
import pytest

from mscad_jax import knn


def _ref(bank, queries, k, metric, leave_out_self=False):
    out = []
    for i, q in enumerate(queries):
        if metric == "cosine":
            d = [1 - np.dot(q, b) / (np.linalg.norm(q) * np.linalg.norm(b)) for b in bank]
        else:
            d = [np.linalg.norm(q - b) for b in bank]
        if leave_out_self:
            d = [x for j, x in enumerate(d) if j != i]
        out.append(np.mean(sorted(d)[:k]))
    return np.array(out)


@pytest.mark.parametrize("metric", knn.METRICS)
@pytest.mark.parametrize("k", [1, 3])
def test_knn_distance_matches_reference(metric, k):
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(12, 5)), rng.normal(size=(7, 5))
    np.testing.assert_allclose(knn.knn_distance(bank, queries, k, metric), _ref(bank, queries, k, metric),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", knn.METRICS)
def test_bank_scored_against_itself_leaves_each_row_out(metric):
    bank = np.random.default_rng(1).normal(size=(9, 4))
    got = knn.knn_distance(bank, None, 2, metric)
    np.testing.assert_allclose(got, _ref(bank, bank, 2, metric, leave_out_self=True), rtol=1e-4, atol=1e-5)
    assert np.all(got > 0)  # a row's zero distance to itself is not counted


def test_images_are_flattened():
    bank = np.random.default_rng(2).normal(size=(6, 2, 2, 3))
    np.testing.assert_allclose(knn.knn_distance(bank, bank[:2], 1, "euclidean"), 0.0, atol=1e-3)


def test_bad_arguments_name_the_problem():
    bank = np.zeros((4, 3))
    with pytest.raises(ValueError, match="metric"):
        knn.knn_distance(bank, bank, 1, "manhattan")
    with pytest.raises(ValueError, match="k=5"):
        knn.knn_distance(bank, bank, 5)
    with pytest.raises(ValueError, match="k=4"):
        knn.knn_distance(bank, None, 4)


def test_pixel_floor_separates_distinct_images():
    rng = np.random.default_rng(3)
    normal = rng.integers(0, 60, (20, 6, 6, 1), dtype=np.uint8)
    test = np.concatenate([rng.integers(0, 60, (10, 6, 6, 1)), rng.integers(190, 255, (10, 6, 6, 1))]).astype(np.uint8)
    labels = np.array([0] * 10 + [1] * 10)
    assert knn.pixel_floor_auroc(normal, test, labels) == 1.0
    assert knn.pixel_floor_auroc(normal, test, 1 - labels) == 0.0


def test_the_jitted_knn_of_the_scorer_matches_the_sklearn_search():
    """scorer.knn_distance (in the exported function) against knn.knn_distance (fitting)."""
    import jax
    import jax.numpy as jnp

    from mscad_jax import losses, scorer

    rng = np.random.default_rng(3)
    bank, queries = rng.normal(size=(50, 12)), rng.normal(size=(7, 12))
    want = knn.knn_distance(bank, queries, 4)
    unit_bank = losses.l2_normalize(jnp.asarray(bank, jnp.float32))
    got = jax.jit(scorer.knn_distance, static_argnums=2)(jnp.asarray(queries, jnp.float32), unit_bank, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
