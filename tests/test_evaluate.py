"""Evaluation against a NumPy reference: centres, per-scale scores, normal statistics
(labelled anomalies and padded rows excluded), k-NN on features and on raw pixels, score
fusion and scores.csv."""

import csv

import jax
import numpy as np
import pytest

from mscad_jax import evaluate, knn, parallel, stage1, stage2
from mscad_jax.data import input_pipeline, protocols
from mscad_jax.models import anomem


def _reference_scores(model, frozen, det, params, centers, images, names):
    """Per-image scores from one unsharded, unpadded forward pass, in float64."""
    out = model.apply(frozen, input_pipeline.to_float(images), train=False, heads=False)
    emb = det.apply(params, {n: out[n]["deviation"] for n in names})
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    scores = {}
    for n in names:
        scores[f"a/{n}"] = np.sum((f64(emb[n]) - f64(centers[n])) ** 2, axis=-1)
        scores[f"a0/{n}"] = np.mean(np.sum(f64(out[n]["deviation"]) ** 2, axis=-1), axis=(1, 2))
        scores[f"feature/{n}"] = f64(out[n]["features"]).mean(axis=(1, 2))
    return scores, {n: f64(emb[n]) for n in names}


def _knn_reference(bank, queries, k, leave_out_self, metric="cosine"):
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    if metric == "cosine":
        distance = 1.0 - unit(queries) @ unit(bank).T
    else:
        distance = np.linalg.norm(queries[:, None] - bank[None], axis=-1)
    if leave_out_self:
        np.fill_diagonal(distance, np.inf)
    return np.sort(distance, axis=1)[:, :k].mean(axis=1)


# The detector's own scale weights (eval.detector_weights), or () for eval.score_weights.
@pytest.mark.parametrize("knn_metric,detector_weights", [("cosine", (0.0, 1.0, 3.0)), ("euclidean", ())])
def test_scores_statistics_and_fusion_match_a_numpy_reference(tiny_config, random_images, tmp_path, knn_metric,
                                                              detector_weights):
    weights = (1.0, 0.5, 2.0)
    config = tiny_config(**{"eval.batch_size": 4, "eval.scorer": ("detector", "a0", "knn", "pixel_knn"),
                            "eval.knn_k": 2, "eval.knn_metric": knn_metric, "eval.plots": False,
                            "eval.score_weights": weights, "eval.detector_weights": detector_weights,
                            "protocol": "unbalanced"})
    names = anomem.scale_names(config.model.scales)
    train_images = random_images(11)
    labelled = np.zeros(11, bool)
    labelled[[3, 7]] = True  # 9 normal rows: the last eval batch of 4 is padded
    test_images = random_images(10, seed=1)
    labels = np.array([0, 1] * 5, np.int32)
    mesh = parallel.make_mesh(jax.devices()[:2])
    model = anomem.AnoMem(**config.model)
    s1 = stage1.create_state(model, stage1.make_optimizer(config, 1), 0, train_images.shape[1:], mesh)
    frozen = {"params": s1.params, "batch_stats": s1.batch_stats}
    det = stage2.make_detector(config)
    state = stage2.create_state(config, det, model, frozen, stage2.make_optimizer(config), train_images, ~labelled,
                                mesh)

    # Centres: the mean initial embedding of the normal rows only, pushed away from 0.
    _, train_emb = _reference_scores(model, frozen, det, state.params, state.centers, train_images, names)
    for n in names:
        want = stage2.push_from_zero(train_emb[n][~labelled].mean(axis=0), config.stage2.center_eps)
        np.testing.assert_allclose(parallel.fetch(state.centers[n]), want, rtol=1e-5, atol=1e-6)

    data = protocols.ProtocolData(train_images, labelled, test_images, labels, labels.astype(np.int64), None)
    results = evaluate.evaluate(config, data, stage2.score_function(det, model),
                                {"frozen": frozen, "detector": state.params, "centers": state.centers},
                                str(tmp_path), mesh)

    train, _ = _reference_scores(model, frozen, det, state.params, state.centers, train_images[~labelled], names)
    test, _ = _reference_scores(model, frozen, det, state.params, state.centers, test_images, names)
    for n in names:
        bank = train[f"feature/{n}"]
        train[f"knn/{n}"] = _knn_reference(bank, bank, 2, True, knn_metric)
        test[f"knn/{n}"] = _knn_reference(bank, test[f"feature/{n}"], 2, False, knn_metric)
    pixels = lambda x: np.asarray(x, np.float64).reshape(len(x), -1) / 255.0  # noqa: E731
    normal_pixels = pixels(train_images[~labelled])
    euclidean = lambda q: np.linalg.norm(q[:, None] - normal_pixels[None], axis=-1)  # noqa: E731
    own = euclidean(normal_pixels)
    np.fill_diagonal(own, np.inf)
    train["pixel_knn"] = np.sort(own, axis=1)[:, :2].mean(axis=1)
    test["pixel_knn"] = np.sort(euclidean(pixels(test_images)), axis=1)[:, :2].mean(axis=1)
    stats = {k: (v.mean(), v.std()) for k, v in train.items() if not k.startswith("feature/")}
    for key, (mean, std) in stats.items():
        assert results["score_stats"][key]["mean"] == pytest.approx(mean, rel=1e-4, abs=1e-6), key
        assert results["score_stats"][key]["std"] == pytest.approx(std, rel=1e-3, abs=1e-6), key

    def fused(scores, prefix):
        own = (detector_weights or weights) if prefix == "a" else weights
        return sum(w * (scores[f"{prefix}/{n}"] - stats[f"{prefix}/{n}"][0]) / stats[f"{prefix}/{n}"][1]
                   for n, w in zip(names, own))

    final = 0.0
    by_scorer = {}
    for scorer, prefix in (("detector", "a"), ("a0", "a0"), ("knn", "knn")):
        on_train, on_test = fused(train, prefix), fused(test, prefix)
        by_scorer[scorer] = on_test
        final = final + (on_test - on_train.mean()) / on_train.std()
    by_scorer["pixel_knn"] = test["pixel_knn"]
    final = final + (test["pixel_knn"] - stats["pixel_knn"][0]) / stats["pixel_knn"][1]

    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(10))
    assert [int(r["is_anomaly"]) for r in rows] == labels.tolist()
    column = lambda name: np.array([float(r[name]) for r in rows])  # noqa: E731
    np.testing.assert_allclose(column("score"), final, rtol=1e-3, atol=1e-3)
    for scorer, want in by_scorer.items():
        np.testing.assert_allclose(column(scorer), want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(column("a/scale3"), test["a/scale3"], rtol=1e-4, atol=1e-6)
    from sklearn.metrics import roc_auc_score
    assert results["auroc"] == pytest.approx(roc_auc_score(labels, final))
    assert results["auroc_knn"] == pytest.approx(roc_auc_score(labels, by_scorer["knn"]))
    assert results["scorer"] == "detector+a0+knn+pixel_knn"


def test_a_scorer_the_model_lacks_is_refused(tiny_config, random_images, tmp_path):
    config = tiny_config(**{"eval.scorer": ("rotation",), "eval.plots": False})
    images = random_images(8)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = anomem.AnoMem(**config.model)
    s1 = stage1.create_state(model, stage1.make_optimizer(config, 1), 0, images.shape[1:], mesh)
    frozen = {"params": s1.params, "batch_stats": s1.batch_stats}
    data = protocols.ProtocolData(images, np.zeros(8, bool), images, np.array([0, 1] * 4, np.int32),
                                  np.zeros(8, np.int64), None)
    with pytest.raises(ValueError, match="rotation"):
        evaluate.evaluate(config, data, stage2.score_function(None, model), {"frozen": frozen}, str(tmp_path), mesh)


def test_patch_knn_scores_the_worst_position_against_held_out_training_patches():
    rng = np.random.default_rng(0)
    train = {"patches/scale2": rng.normal(size=(6, 2, 2, 3))}
    test = {"patches/scale2": rng.normal(size=(4, 2, 2, 3))}
    test["patches/scale2"][0] = train["patches/scale2"][0]  # a test image equal to a training image
    held_out = evaluate.add_patch_knn_scores(train, test, ["scale2"], bank_size=1000, seed=0)
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
    held_out = evaluate.add_patch_knn_scores(train, test, ["scale2", "scale3"], bank_size=1, seed=0, neighbours=1)
    # The neighbours come from the deepest scale whatever the order of model.scales.
    swapped = evaluate.add_patch_knn_scores(*reordered, ["scale3", "scale2"], bank_size=1, seed=0, neighbours=1)
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
    with pytest.raises(ValueError, match="eval.patch_knn_neighbours=6"):
        evaluate.add_patch_knn_scores({"patches/scale2": np.ones((6, 2, 2, 3))}, {"patches/scale2": np.ones((1, 2, 2, 3))},
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
    held_out = evaluate.add_patch_knn_scores(train, test, ["scale2", "scale3"], bank_size=1, seed=0, neighbours=2,
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
    held_out = evaluate.add_patch_knn_scores(train, test, ["scale2"], bank_size=1, seed=0, neighbours=2,
                                             distance="image_ridge", penalty=0.5, window=1, pixel_window=3)
    without = evaluate.add_patch_knn_scores(*features_only, ["scale2"], bank_size=1, seed=0, neighbours=2,
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
    want_held = knn.aligned_map("image_ridge", maps, maps, held_neighbours, penalty=evaluate.PIXEL_RIDGE_PENALTY,
                                window=3)
    want_test = knn.aligned_map("image_ridge", maps, queries["patches/pixels"], test_neighbours,
                                penalty=evaluate.PIXEL_RIDGE_PENALTY, window=3)
    np.testing.assert_allclose(held_out["patch_knn/pixels"], want_held.reshape(7, -1).max(axis=1), rtol=1e-4)
    np.testing.assert_allclose(test["patch_map/pixels"], want_test, rtol=1e-4)
    np.testing.assert_allclose(test["patch_knn/pixels"], want_test.reshape(2, -1).max(axis=1), rtol=1e-4)
    with pytest.raises(ValueError, match="pixel_window=3.*neighbours > 0"):
        evaluate.add_patch_knn_scores(dict(originals), dict(queries), ["scale2"], bank_size=1, seed=0, pixel_window=3)
