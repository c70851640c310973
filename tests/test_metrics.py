"""Tests for mscad_jax.metrics (label 1 = anomaly, higher score = more anomalous)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mscad_jax import metrics


def _reference_fpr95(scores: np.ndarray, labels: np.ndarray) -> float:
    """Brute force: walk distinct thresholds from high to low, stop at TPR >= 0.95."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    for t in np.unique(scores)[::-1]:
        if np.mean(pos >= t) >= 0.95:
            return float(np.mean(neg >= t))
    raise AssertionError("unreachable: the lowest threshold has TPR 1")


# ---------------------------------------------------------------------------
# image_metrics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn_and_reference_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.integers(0, 2, size=n)
    # Rounded so that there are ties, which is where implementations differ.
    scores = np.round(rng.normal(size=n) + 0.8 * labels, 1)
    out = metrics.image_metrics(scores, labels)
    assert set(out) == {"auroc", "aupr", "fpr95"}
    assert all(type(v) is float for v in out.values())
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert out["fpr95"] == pytest.approx(_reference_fpr95(scores, labels), abs=1e-12)
    # Sanity: a signal is present, so the metrics are far from chance.
    assert out["auroc"] > 0.6


def test_perfect_separation():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 1.0])
    out = metrics.image_metrics(scores, labels)
    assert out == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}


def test_reversed_scores():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = -np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 1.0])
    out = metrics.image_metrics(scores, labels)
    assert out["auroc"] == 0.0
    # Every normal sample outranks every anomaly: reaching 95% TPR needs all of them.
    assert out["fpr95"] == 1.0
    # AP with anomalies ranked last: precision at recall k/3 is k/(4+k).
    assert out["aupr"] == pytest.approx((1 / 5 + 2 / 6 + 3 / 7) / 3)


def test_known_fpr95_and_auroc_small_example():
    # 20 anomalies: 19 score 10..28, one scores -1 (missed).
    # 10 normals: two score 50, 51 (above every anomaly), eight score 0..7.
    pos = np.concatenate([np.arange(10, 29), [-1]]).astype(float)
    neg = np.concatenate([[50, 51], np.arange(8)]).astype(float)
    scores = np.concatenate([pos, neg])
    labels = np.array([1] * 20 + [0] * 10)
    out = metrics.image_metrics(scores, labels)
    # TPR first reaches 19/20 = 0.95 at threshold 10, when only 2/10 normals pass.
    assert out["fpr95"] == pytest.approx(0.2)
    # 19 anomalies beat 8 normals each; the missed one beats none: 152 / 200.
    assert out["auroc"] == pytest.approx(0.76)


def test_fpr95_not_affected_by_dropped_collinear_roc_points():
    # ROC points (0, .9), (.05, .95), (.1, 1) are collinear; roc_curve's default
    # drop_intermediate=True removes the middle one, which is exactly where TPR
    # reaches 0.95. The correct answer is 0.05, not 0.1.
    labels = np.array([1] * 18 + [0, 1] + [0, 1] + [0] * 18)
    scores = np.array([10.0] * 18 + [5, 5] + [4, 4] + [0] * 18)
    assert metrics.image_metrics(scores, labels)["fpr95"] == pytest.approx(0.05)
    assert metrics.fpr_at_tpr(scores, labels, 0.95) == pytest.approx(0.05)


def test_boolean_and_float_labels_accepted():
    scores = np.array([0.1, 0.9, 0.2, 0.8])
    ref = metrics.image_metrics(scores, np.array([0, 1, 0, 1]))
    assert metrics.image_metrics(scores, np.array([False, True, False, True])) == ref
    assert metrics.image_metrics(scores, [0.0, 1.0, 0.0, 1.0]) == ref


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 0, 0, 0], r"both classes.*4 normal and 0 anomalous"),
        ([1, 1, 1, 1], r"both classes.*0 normal and 4 anomalous"),
    ],
)
def test_one_class_labels_raise(labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.image_metrics([0.1, 0.2, 0.3, 0.4], labels)


def test_nan_and_inf_scores_raise():
    with pytest.raises(ValueError, match=r"finite.*1 NaN and 0 inf.*out of 4.*index 2"):
        metrics.image_metrics([0.1, 0.2, np.nan, 0.4], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"finite.*1 NaN and 1 inf"):
        metrics.image_metrics([np.inf, 0.2, np.nan, 0.4], [0, 1, 0, 1])


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match=r"same length.*5 scores and 4 labels"):
        metrics.image_metrics([0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 1])


def test_non_1d_and_non_binary_raise():
    with pytest.raises(ValueError, match=r"scores must be 1-D.*\(2, 2\)"):
        metrics.image_metrics([[0.1, 0.2], [0.3, 0.4]], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"labels must be 1-D"):
        metrics.image_metrics([0.1, 0.2, 0.3, 0.4], [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"only 0 .* and 1 .*found 2 other values, e.g. \[2, 255\]"):
        metrics.image_metrics([0.1, 0.2, 0.3, 0.4], [0, 1, 2, 255])


# ---------------------------------------------------------------------------
# per_scale_auroc
# ---------------------------------------------------------------------------


def test_per_scale_auroc():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=100)
    per_scale = {
        "s1": rng.normal(size=100) + labels,
        "s2": rng.normal(size=100) - labels,
        "s3": labels.astype(float),
    }
    out = metrics.per_scale_auroc(per_scale, labels)
    assert list(out) == ["s1", "s2", "s3"]
    for name, s in per_scale.items():
        assert out[name] == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
    assert out["s3"] == 1.0
    assert out["s2"] < 0.5 < out["s1"]


def test_per_scale_auroc_error_names_the_scale():
    with pytest.raises(ValueError, match=r"scale 'bad'.*finite"):
        metrics.per_scale_auroc({"ok": [0.0, 1.0], "bad": [np.nan, 1.0]}, [0, 1])


# ---------------------------------------------------------------------------
# pixel_auroc
# ---------------------------------------------------------------------------


def test_pixel_auroc_matches_sklearn_on_flattened():
    rng = np.random.default_rng(4)
    masks = (rng.random((3, 8, 8)) < 0.2).astype(np.uint8)
    maps = rng.normal(size=(3, 8, 8)) + masks
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert metrics.pixel_auroc(maps, masks.astype(bool)) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_perfect():
    masks = np.zeros((2, 4, 4))
    masks[1, 1:3, 1:3] = 1
    assert metrics.pixel_auroc(masks * 5.0 + 0.5, masks) == 1.0


def test_pixel_auroc_none_cases():
    maps = np.ones((2, 4, 4))
    assert metrics.pixel_auroc(maps, None) is None
    assert metrics.pixel_auroc(maps, np.zeros((2, 4, 4), dtype=np.uint8)) is None


def test_pixel_auroc_rejects_bad_masks():
    maps = np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        metrics.pixel_auroc(maps, np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"masks must contain only 0"):
        metrics.pixel_auroc(maps, np.array([[[0, 255], [0, 0]]]))


def test_auroc_per_anomaly_class_against_sklearn_on_each_subset():
    rng = np.random.default_rng(3)
    labels = np.array([0] * 20 + [1] * 30)
    classes = np.array([4] * 20 + [1] * 10 + [2] * 10 + [7] * 10)
    scores = rng.normal(size=50) + labels * np.repeat([0.0, 0.0, 2.0, -1.0, 0.5], 10)[: 50]
    out = metrics.auroc_per_anomaly_class(scores, labels, classes)
    assert set(out) == {"1", "2", "7"}
    for k in (1, 2, 7):
        rows = (labels == 0) | (classes == k)
        assert out[str(k)] == pytest.approx(roc_auc_score(labels[rows], scores[rows]))
    with pytest.raises(ValueError, match="classes"):
        metrics.auroc_per_anomaly_class(scores, labels, classes[:10])


def test_image_auroc_is_the_share_weighted_mean_of_the_per_class_aurocs():
    # experiments/local_visibility.py reads a split's AUROC as a sum over contrast bands.
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(40, np.int32), np.ones(60, np.int32)]
    classes = np.r_[np.full(40, -1), rng.integers(0, 3, 60)]
    scores = rng.normal(size=100) + labels * classes * 0.7
    per_class = metrics.auroc_per_anomaly_class(scores, labels, classes)
    shares = {k: np.mean(classes[labels == 1] == int(k)) for k in per_class}
    weighted = sum(shares[k] * per_class[k] for k in per_class)
    assert weighted == pytest.approx(roc_auc_score(labels, scores))
