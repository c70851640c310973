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


@pytest.mark.parametrize("metric", knn.METRICS)
@pytest.mark.parametrize("radius", [0, 1])
def test_aligned_patch_distance_matches_a_loop_over_positions(radius, metric):
    rng = np.random.default_rng(4)
    bank, queries = rng.normal(size=(5, 3, 4, 2)), rng.normal(size=(3, 3, 4, 2))
    neighbours = np.array([[0, 2], [4, 1], [3, 3]])
    got = knn.aligned_patch_distance(bank, queries, neighbours, radius, metric, chunk=2)
    want = np.zeros((3, 3, 4))
    for q in range(3):
        for y in range(3):
            for x in range(4):
                best = np.inf
                for b in neighbours[q]:
                    # positions outside the map repeat the border (edge padding)
                    for yy in range(y - radius, y + radius + 1):
                        for xx in range(x - radius, x + radius + 1):
                            u, v = queries[q, y, x], bank[b, min(max(yy, 0), 2), min(max(xx, 0), 3)]
                            distance = 1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) if metric == "cosine" \
                                else np.linalg.norm(u - v)
                            best = min(best, distance)
                want[q, y, x] = best
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_aligned_patch_distance_is_zero_where_a_neighbour_matches_and_local_elsewhere():
    rng = np.random.default_rng(5)
    bank = rng.normal(size=(4, 5, 5, 3))
    query = bank[2:3].copy()
    query[0, 1, 3] = -query[0, 1, 3]  # one position points the opposite way
    got = knn.aligned_patch_distance(bank, query, np.array([[2]]))
    assert got[0, 1, 3] == pytest.approx(2.0, abs=1e-5)
    got[0, 1, 3] = 0.0
    np.testing.assert_allclose(got, 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        knn.aligned_patch_distance(bank, query[:, :4], np.array([[2]]))


def _window_mean_reference(residual: np.ndarray, window: int) -> np.ndarray:
    """[B, H, W, C] mean over offsets -(window // 2) .. window - 1 - window // 2 along each
    axis, positions beyond the border counting as zeros: the window knn documents."""
    out = np.zeros_like(residual)
    h, w = residual.shape[1:3]
    offsets = range(-(window // 2), window - window // 2)
    for y in range(h):
        for x in range(w):
            for dy in offsets:
                for dx in offsets:
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        out[:, y, x] += residual[:, y + dy, x + dx]
    return out / window ** 2


def _ridge_reference(basis: np.ndarray, query: np.ndarray, penalty: float) -> np.ndarray:
    """query - basis a for the ridge coefficients a, in float64, solved as the least squares
    of the augmented system [basis; sqrt(penalty) I] a = [query; 0]."""
    basis = np.asarray(basis, np.float64)
    design = np.vstack([basis, np.sqrt(penalty) * np.eye(basis.shape[1])])
    target = np.concatenate([query, np.zeros(basis.shape[1])])
    return query - basis @ np.linalg.lstsq(design, target, rcond=None)[0]


@pytest.mark.parametrize("radius,window", [(0, 1), (1, 1), (0, 2), (1, 3)])
def test_aligned_ridge_residual_matches_a_float64_least_squares_per_position(radius, window):
    rng = np.random.default_rng(6)
    bank, queries = rng.normal(size=(5, 3, 4, 6)), rng.normal(size=(3, 3, 4, 6))
    neighbours = np.array([[0, 2], [4, 1], [3, 3]])
    penalty = 0.5
    got = knn.aligned_ridge_residual(bank, queries, neighbours, penalty, radius, window, chunk=2)
    residual = np.zeros((3, 3, 4, 6))
    for q in range(3):
        for y in range(3):
            for x in range(4):
                # rows: the neighbours' vectors within `radius` (edge-padded)
                rows = [bank[b, min(max(yy, 0), 2), min(max(xx, 0), 3)] for b in neighbours[q]
                        for yy in range(y - radius, y + radius + 1) for xx in range(x - radius, x + radius + 1)]
                residual[q, y, x] = _ridge_reference(np.array(rows).T, queries[q, y, x], penalty)
    want = np.linalg.norm(_window_mean_reference(residual, window), axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_image_ridge_residual_matches_a_float64_least_squares_of_the_whole_map(window):
    rng = np.random.default_rng(8)
    bank, queries = rng.normal(size=(5, 3, 4, 2)), rng.normal(size=(3, 3, 4, 2))
    neighbours = np.array([[0, 2, 4], [4, 1, 0], [3, 3, 2]])
    penalty = 0.3
    got = knn.image_ridge_residual(bank, queries, neighbours, penalty, window, chunk=2)
    residual = np.stack([_ridge_reference(bank[neighbours[q]].reshape(3, -1).T, queries[q].ravel(), penalty)
                         for q in range(3)]).reshape(queries.shape)
    want = np.linalg.norm(_window_mean_reference(residual, window), axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_image_ridge_finds_a_shifted_box_that_each_place_can_explain_on_its_own():
    rng = np.random.default_rng(9)
    bank = rng.normal(size=(6, 6, 6, 4))
    query = 0.6 * bank[0:1] + 0.4 * bank[2:3]  # one blend of two neighbours everywhere...
    query[0, 1, 3:5] = bank[0, 1, 3:5]  # ... but another in a small box
    neighbours = np.array([[0, 2]])
    whole = knn.image_ridge_residual(bank, query, neighbours, penalty=1e-4)
    per_place = knn.aligned_ridge_residual(bank, query, neighbours, penalty=1e-4)
    np.testing.assert_allclose(per_place, 0.0, atol=1e-3)  # each place alone is a blend
    box = np.zeros((6, 6), bool)
    box[1, 3:5] = True
    assert whole[0][box].min() > 5 * whole[0][~box].max()


def test_aligned_map_picks_the_distance_and_refuses_what_does_not_apply():
    rng = np.random.default_rng(10)
    bank, query = rng.normal(size=(4, 3, 3, 2)), rng.normal(size=(1, 3, 3, 2))
    neighbours = np.array([[1, 3]])
    np.testing.assert_array_equal(knn.aligned_map("nearest", bank, query, neighbours, 1, metric="euclidean"),
                                  knn.aligned_patch_distance(bank, query, neighbours, 1, "euclidean"))
    np.testing.assert_array_equal(knn.aligned_map("ridge", bank, query, neighbours, 1, 0.5, 2),
                                  knn.aligned_ridge_residual(bank, query, neighbours, 0.5, 1, 2))
    np.testing.assert_array_equal(knn.aligned_map("image_ridge", bank, query, neighbours, 0, 0.5, 2),
                                  knn.image_ridge_residual(bank, query, neighbours, 0.5, 2))
    with pytest.raises(ValueError, match="radius=1: image_ridge"):
        knn.aligned_map("image_ridge", bank, query, neighbours, 1)
    with pytest.raises(ValueError, match="'farthest'"):
        knn.aligned_map("farthest", bank, query, neighbours)
    with pytest.raises(ValueError, match="window=0"):
        knn.image_ridge_residual(bank, query, neighbours, 0.5, 0)


def test_aligned_ridge_residual_is_small_for_a_blend_of_the_neighbours_and_local_elsewhere():
    rng = np.random.default_rng(7)
    bank = rng.normal(size=(4, 5, 5, 8))
    query = 0.3 * bank[1:2] + 0.7 * bank[3:4]  # normal: a blend of two neighbours everywhere...
    query[0, 2, 1] += 4.0  # ... but one position
    got = knn.aligned_ridge_residual(bank, query, np.array([[1, 3]]), penalty=1e-4)
    assert got[0, 2, 1] > 1.0
    got[0, 2, 1] = 0.0
    np.testing.assert_allclose(got, 0.0, atol=1e-3)
    # the nearest single neighbour explains neither blend: SPADE's distance stays large
    assert knn.aligned_patch_distance(bank, query, np.array([[1, 3]]), metric="euclidean").min() > 0.5
    with pytest.raises(ValueError, match="penalty=0"):
        knn.aligned_ridge_residual(bank, query, np.array([[1, 3]]), penalty=0)
    with pytest.raises(ValueError, match="do not match"):
        knn.aligned_ridge_residual(bank, query[:, :4], np.array([[1, 3]]), penalty=1.0)


def test_nearest_rows_orders_the_neighbours_and_leaves_each_row_out():
    bank = np.array([[0.0], [1.0], [3.0], [7.0]])
    distances, indices = knn.nearest_rows(bank, None, 2, "euclidean")
    np.testing.assert_array_equal(indices, [[1, 2], [0, 2], [1, 0], [2, 1]])
    np.testing.assert_allclose(distances, [[1, 3], [1, 2], [2, 3], [4, 6]])
