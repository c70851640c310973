"""Evaluation against a NumPy reference: centres, per-scale scores, normal statistics
(labelled anomalies and padded rows excluded), k-NN on features and on raw pixels, score
fusion and scores.csv."""

import csv

import jax
import numpy as np
import pytest

from mscad_jax import evaluate, parallel, stage1, stage2
from mscad_jax.data import input_pipeline, protocols
from mscad_jax.models import anomem


def _reference_scores(model, frozen, det, params, centers, images, names):
    """Per-image scores from one unsharded, unpadded forward pass, in float64."""
    out = model.apply(frozen, input_pipeline.to_float(images), train=False, heads=False)
    emb = det.apply(params, {n: out[n]["deviation"] for n in names})
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    scores = {}
    for n in names:
        scores[f"detector/{n}"] = np.sum((f64(emb[n]) - f64(centers[n])) ** 2, axis=-1)
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
    results = evaluate.evaluate(config, data, model, det,
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
        own = (detector_weights or weights) if prefix == "detector" else weights
        return sum(w * (scores[f"{prefix}/{n}"] - stats[f"{prefix}/{n}"][0]) / stats[f"{prefix}/{n}"][1]
                   for n, w in zip(names, own))

    final = 0.0
    by_scorer = {}
    for scorer, prefix in (("detector", "detector"), ("a0", "a0"), ("knn", "knn")):
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
    np.testing.assert_allclose(column("detector/scale3"), test["detector/scale3"], rtol=1e-4, atol=1e-6)
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
        evaluate.evaluate(config, data, model, None, {"frozen": frozen}, str(tmp_path), mesh)


def test_rotation_score_matches_a_float64_reference(tiny_config, random_images):
    """sum over r of -log p(r | the image rotated by r * 90 degrees), p the rotation head's softmax."""
    from mscad_jax.scoring import function as scoring

    config = tiny_config(**{"model.rotation_head": True, "stage1.rotations": True})
    images = random_images(3)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = anomem.AnoMem(**config.model)
    s1 = stage1.create_state(model, stage1.make_optimizer(config, 1), 0, images.shape[1:], mesh)
    frozen = {"params": s1.params, "batch_stats": s1.batch_stats}
    got = jax.jit(scoring.raw_score_function(model, None, "mean"))(frozen, {}, {}, images)["rotation"]
    want = np.zeros(3)
    for r in range(4):
        rotated = np.rot90(input_pipeline.to_float(images), r, axes=(1, 2))
        logits = np.asarray(model.apply(frozen, rotated, train=False, heads=False)[anomem.ROTATION_LOGITS], np.float64)
        for i in range(3):
            want[i] -= logits[i, r] - np.log(np.sum(np.exp(logits[i])))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
