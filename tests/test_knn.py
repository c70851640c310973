"""The one k-NN distance against explicit NumPy loops; the raw-pixel floor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscad_jax.scoring import knn


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
    want = _ref(bank, queries, k, metric)
    np.testing.assert_allclose(knn.host_knn_distance(bank, queries, k, metric), want, rtol=1e-4, atol=1e-5)
    jitted = jax.jit(knn.knn_distance, static_argnums=(2, 3))  # as the exported scorer runs it
    np.testing.assert_allclose(jitted(jnp.asarray(queries, jnp.float32), jnp.asarray(bank, jnp.float32), k, metric),
                               want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", knn.METRICS)
def test_bank_scored_against_itself_leaves_each_row_out(metric, monkeypatch):
    monkeypatch.setattr(knn, "CHUNK", 4)  # rows of several chunks: each leaves out its own row
    bank = np.random.default_rng(1).normal(size=(9, 4))
    got = knn.host_knn_distance(bank, None, 2, metric)
    np.testing.assert_allclose(got, _ref(bank, bank, 2, metric, leave_out_self=True), rtol=1e-4, atol=1e-5)
    assert np.all(got > 0)  # a row's zero distance to itself is not counted


def test_a_duplicate_row_still_counts_when_its_twin_is_left_out():
    bank = np.array([[0.0], [0.0], [5.0]])
    np.testing.assert_allclose(knn.host_knn_distance(bank, None, 1, "euclidean"), [0.0, 0.0, 5.0], atol=1e-5)


def test_images_are_flattened():
    bank = np.random.default_rng(2).normal(size=(6, 2, 2, 3))
    np.testing.assert_allclose(knn.host_knn_distance(bank, bank[:2], 1, "euclidean"), 0.0, atol=1e-3)


def test_bad_arguments_name_the_problem():
    bank = np.zeros((4, 3))
    with pytest.raises(ValueError, match="metric"):
        knn.host_knn_distance(bank, bank, 1, "manhattan")
    with pytest.raises(ValueError, match="k=5"):
        knn.host_knn_distance(bank, bank, 5)
    with pytest.raises(ValueError, match="k=4"):
        knn.host_knn_distance(bank, None, 4)


def test_pixel_floor_separates_distinct_images():
    rng = np.random.default_rng(3)
    normal = rng.integers(0, 60, (20, 6, 6, 1), dtype=np.uint8)
    test = np.concatenate([rng.integers(0, 60, (10, 6, 6, 1)), rng.integers(190, 255, (10, 6, 6, 1))]).astype(np.uint8)
    labels = np.array([0] * 10 + [1] * 10)
    assert knn.pixel_floor_auroc(normal, test, labels, 5) == 1.0
    assert knn.pixel_floor_auroc(normal, test, 1 - labels, 5) == 0.0


def test_pixel_floor_scores_match_a_float64_reference():
    """The mean Euclidean distance on [0, 1] pixels to the k nearest normal images."""
    rng = np.random.default_rng(4)
    normal = rng.integers(0, 256, (12, 5, 5, 1), dtype=np.uint8)
    images = rng.integers(0, 256, (7, 5, 5, 1), dtype=np.uint8)
    a = normal.reshape(12, -1).astype(np.float64) / 255
    b = images.reshape(7, -1).astype(np.float64) / 255
    distances = np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1))
    reference = np.sort(distances, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(knn.pixel_floor_scores(normal, images, 3), reference, rtol=1e-5)


def test_euclidean_distance_survives_a_large_common_offset():
    """Features far from 0 and close together: the centred expansion keeps them apart."""
    rng = np.random.default_rng(4)
    bank = 1000.0 + rng.normal(size=(20, 8)) * 0.01
    queries = 1000.0 + rng.normal(size=(5, 8)) * 0.01
    np.testing.assert_allclose(knn.host_knn_distance(bank, queries, 3, "euclidean"),
                               _ref(bank, queries, 3, "euclidean"), rtol=2e-3)
