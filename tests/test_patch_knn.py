"""experiments/patch_knn.py, the patch kNN baseline for local anomalies, against
explicit NumPy loops and float64 least squares."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
import patch_knn as knn  # noqa: E402


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


def test_patch_knn_scores_the_worst_position_against_held_out_training_patches():
    rng = np.random.default_rng(0)
    train = {"patches/scale2": rng.normal(size=(6, 2, 2, 3))}
    test = {"patches/scale2": rng.normal(size=(4, 2, 2, 3))}
    test["patches/scale2"][0] = train["patches/scale2"][0]  # a test image equal to a training image
    held_out = knn.add_patch_knn_scores(train, test, ["scale2"], bank_size=1000, seed=0)
    assert "patches/scale2" not in train and "patches/scale2" not in test  # the big arrays are dropped
    order = np.random.default_rng([0, 9]).permutation(6)
    bank_rows, stats_rows = order[:3], order[3:]
    original = np.random.default_rng(0)
    train_patches = original.normal(size=(6, 2, 2, 3))
    test_patches = original.normal(size=(4, 2, 2, 3))
    test_patches[0] = train_patches[0]
    bank = train_patches[bank_rows].reshape(-1, 3)

    def worst(x):
        unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
        distance = 1.0 - unit(x.reshape(-1, 3)) @ unit(bank).T
        return distance.min(axis=1).reshape(len(x), -1).max(axis=1)

    np.testing.assert_allclose(test["patch_knn/scale2"], worst(test_patches), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(held_out["patch_knn/scale2"], worst(train_patches[stats_rows]), rtol=1e-4, atol=1e-5)
    if 0 in bank_rows:  # an image whose patches are all in the bank scores 0
        assert test["patch_knn/scale2"][0] == pytest.approx(0.0, abs=1e-5)


def test_spade_patch_knn_compares_each_place_with_the_nearest_images_never_with_itself():
    rng = np.random.default_rng(1)
    train = {"patches/scale2": rng.normal(size=(6, 2, 2, 3)), "patches/scale3": rng.normal(size=(6, 1, 1, 4))}
    originals = {k: v.copy() for k, v in train.items()}
    test = {k: v[[0, 3]].copy() for k, v in train.items()}  # test images equal to training images 0 and 3
    test["patches/scale2"][1, 0, 1] += 5.0  # ... the second with one position changed at scale 2
    reordered = [{k: v.copy() for k, v in d.items()} for d in (train, test)]
    held_out = knn.add_patch_knn_scores(train, test, ["scale2", "scale3"], bank_size=1, seed=0, neighbours=1)
    # The neighbours come from the deepest scale whatever the order of model.scales.
    swapped = knn.add_patch_knn_scores(*reordered, ["scale3", "scale2"], bank_size=1, seed=0, neighbours=1)
    for n in ("scale2", "scale3"):
        np.testing.assert_array_equal(swapped[f"patch_knn/{n}"], held_out[f"patch_knn/{n}"])
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    deepest = unit(originals["patches/scale3"].reshape(6, -1))
    similarity = deepest @ deepest.T
    np.fill_diagonal(similarity, -np.inf)  # held-out images are searched with themselves left out
    nearest_other = similarity.argmax(axis=1)
    for n in ("scale2", "scale3"):
        maps = originals[f"patches/{n}"]
        cosine = np.sum(unit(maps) * unit(maps[nearest_other]), axis=-1)
        want = (1.0 - cosine).reshape(6, -1).max(axis=1)
        np.testing.assert_allclose(held_out[f"patch_knn/{n}"], want, rtol=1e-4, atol=1e-5)  # all 6 held out
    assert test["patch_knn/scale3"] == pytest.approx([0.0, 0.0], abs=1e-5)
    # Test images are searched against the whole bank: each finds its own original, so only
    # the changed position differs.
    original = originals["patches/scale2"][3, 0, 1]
    moved = 1.0 - np.dot(unit(original), unit(original + 5.0))
    want_map = np.zeros((2, 2, 2))
    want_map[1, 0, 1] = moved
    np.testing.assert_allclose(test["patch_map/scale2"], want_map, atol=1e-5)
    assert test["patch_knn/scale2"] == pytest.approx([0.0, moved], abs=1e-5)
    with pytest.raises(ValueError, match="--neighbours=6"):
        knn.add_patch_knn_scores({"patches/scale2": np.ones((6, 2, 2, 3))}, {"patches/scale2": np.ones((1, 2, 2, 3))},
                                      ["scale2"], bank_size=1, seed=0, neighbours=6)


@pytest.mark.parametrize("distance,window,neighbours_on", [("ridge", 1, "deepest"), ("ridge", 2, "deepest"),
                                                           ("image_ridge", 1, "deepest"), ("image_ridge", 2, "deepest"),
                                                           ("image_ridge", 2, "same")])
def test_ridge_patch_knn_reconstructs_from_the_nearest_other_images(distance, window, neighbours_on):
    rng = np.random.default_rng(2)
    train = {"patches/scale2": rng.normal(size=(7, 2, 2, 3)), "patches/scale3": rng.normal(size=(7, 1, 1, 4))}
    originals = {k: v.copy() for k, v in train.items()}
    test = {k: rng.normal(size=(2, *v.shape[1:])) for k, v in train.items()}
    queries = {k: v.copy() for k, v in test.items()}
    held_out = knn.add_patch_knn_scores(train, test, ["scale2", "scale3"], bank_size=1, seed=0, neighbours=2,
                                             distance=distance, penalty=0.5, window=window, neighbours_on=neighbours_on)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    picked_by = set()
    for n in ("scale2", "scale3"):
        chooser = n if neighbours_on == "same" else "scale3"  # scale3 is the deepest
        bank, bank_queries = (unit(x[f"patches/{chooser}"].reshape(len(x[f"patches/{chooser}"]), -1))
                              for x in (originals, queries))
        similarity = bank @ bank.T
        np.fill_diagonal(similarity, -np.inf)  # held-out images are searched with themselves left out
        held_neighbours = np.argsort(-similarity, axis=1)[:, :2]
        test_neighbours = np.argsort(-(bank_queries @ bank.T), axis=1)[:, :2]
        picked_by.add((held_neighbours.tobytes(), test_neighbours.tobytes()))
        maps = originals[f"patches/{n}"]
        # each ridge distance itself is checked against a float64 least squares in test_knn.
        want_held = knn.aligned_map(distance, maps, maps, held_neighbours, penalty=0.5, window=window)
        want_test = knn.aligned_map(distance, maps, queries[f"patches/{n}"], test_neighbours, penalty=0.5, window=window)
        np.testing.assert_allclose(held_out[f"patch_knn/{n}"], want_held.reshape(7, -1).max(axis=1), rtol=1e-4)
        np.testing.assert_allclose(test[f"patch_map/{n}"], want_test, rtol=1e-4)
        np.testing.assert_allclose(test[f"patch_knn/{n}"], want_test.reshape(2, -1).max(axis=1), rtol=1e-4)
    # With 'same' the two scales pick different neighbours here, so the check above can tell the two apart.
    assert len(picked_by) == (2 if neighbours_on == "same" else 1)


def test_patch_knn_scores_the_raw_pixels_as_one_more_map_with_their_own_neighbours_and_window():
    rng = np.random.default_rng(3)
    train = {"patches/scale2": rng.normal(size=(7, 2, 2, 3)), "patches/pixels": rng.uniform(size=(7, 4, 4, 1))}
    test = {"patches/scale2": rng.normal(size=(2, 2, 2, 3)), "patches/pixels": rng.uniform(size=(2, 4, 4, 1))}
    train["patches/pixels"][1] = 3.0 * test["patches/pixels"][0]  # nearest by cosine, far in Euclidean distance
    originals, queries = ({k: v.copy() for k, v in d.items()} for d in (train, test))
    features_only = [{"patches/scale2": d["patches/scale2"].copy()} for d in (train, test)]
    held_out = knn.add_patch_knn_scores(train, test, ["scale2"], bank_size=1, seed=0, neighbours=2,
                                             distance="image_ridge", penalty=0.5, window=1, pixel_window=3)
    without = knn.add_patch_knn_scores(*features_only, ["scale2"], bank_size=1, seed=0, neighbours=2,
                                            distance="image_ridge", penalty=0.5, window=1)
    np.testing.assert_array_equal(held_out["patch_knn/scale2"], without["patch_knn/scale2"])  # features unchanged
    np.testing.assert_array_equal(test["patch_map/scale2"], features_only[1]["patch_map/scale2"])
    bank, bank_queries = (x["patches/pixels"].reshape(len(x["patches/pixels"]), -1) for x in (originals, queries))
    distance = np.linalg.norm(bank[:, None] - bank[None], axis=-1)
    np.fill_diagonal(distance, np.inf)  # held-out images are searched with themselves left out
    held_neighbours = np.argsort(distance, axis=1)[:, :2]
    test_neighbours = np.argsort(np.linalg.norm(bank_queries[:, None] - bank[None], axis=-1), axis=1)[:, :2]
    assert 1 not in test_neighbours[0]  # Euclidean, not cosine, picked them
    maps = originals["patches/pixels"]
    want_held = knn.aligned_map("image_ridge", maps, maps, held_neighbours, penalty=knn.PIXEL_RIDGE_PENALTY,
                                window=3)
    want_test = knn.aligned_map("image_ridge", maps, queries["patches/pixels"], test_neighbours,
                                penalty=knn.PIXEL_RIDGE_PENALTY, window=3)
    np.testing.assert_allclose(held_out["patch_knn/pixels"], want_held.reshape(7, -1).max(axis=1), rtol=1e-4)
    np.testing.assert_allclose(test["patch_map/pixels"], want_test, rtol=1e-4)
    np.testing.assert_allclose(test["patch_knn/pixels"], want_test.reshape(2, -1).max(axis=1), rtol=1e-4)
    with pytest.raises(ValueError, match="pixel_window=3.*neighbours > 0"):
        knn.add_patch_knn_scores(dict(originals), dict(queries), ["scale2"], bank_size=1, seed=0, pixel_window=3)
