"""Tests for mscad_jax.plots: every plot writes a loadable PNG atomically and closes its figure."""

from __future__ import annotations

import os

import matplotlib.image as mpimg
import numpy as np
import pytest

from mscad_jax import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    plots.plt.close("all")
    yield
    assert plots.plt.get_fignums() == [], "a plot function left a figure open"


def _check_png(path, expected_path) -> np.ndarray:
    assert path == os.fspath(expected_path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 50 and img.shape[1] > 50
    # Only the PNG itself: the temporary file was renamed, not left behind.
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    return img


def _scores_labels(seed=0, n=60):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (n // 2))
    return rng.normal(size=n) + labels, labels


def test_backend_is_agg():
    assert plots.matplotlib.get_backend().lower() == "agg"


def test_plot_roc(tmp_path):
    scores, labels = _scores_labels()
    img = _check_png(plots.plot_roc(scores, labels, tmp_path / "roc.png", title="ROC"), tmp_path / "roc.png")
    # figsize (5, 5) at 100 dpi.
    assert img.shape[:2] == (500, 500)


def test_plot_roc_rejects_one_class(tmp_path):
    with pytest.raises(ValueError, match="both classes"):
        plots.plot_roc([0.1, 0.2], [0, 0], tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


def test_plot_score_histograms(tmp_path):
    scores, labels = _scores_labels(1)
    p = tmp_path / "hist.png"
    img = _check_png(plots.plot_score_histograms(scores, labels, p, title="scores"), p)
    assert img.shape[:2] == (400, 600)


def test_plot_score_histograms_single_class_and_constant_scores(tmp_path):
    p = tmp_path / "hist.png"
    _check_png(plots.plot_score_histograms(np.full(5, 3.0), np.zeros(5, dtype=int), p), p)


def test_top_k_indices():
    scores = np.array([0.5, 2.0, np.nan, 2.0, -1.0])
    # Highest first, ties in original order, NaN treated as least anomalous.
    np.testing.assert_array_equal(plots.top_k_indices(scores, 3), [1, 3, 0])
    np.testing.assert_array_equal(plots.top_k_indices(scores, 100), [1, 3, 0, 4, 2])
    with pytest.raises(ValueError, match="k must be"):
        plots.top_k_indices(scores, 0)


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_top_anomalies_gray_and_rgb(tmp_path, channels):
    rng = np.random.default_rng(channels)
    n, h, w = 10, 16, 16
    images = rng.random((n, h, w, channels)).astype(np.float32)
    heatmaps = rng.random((n, h, w))
    scores = rng.normal(size=n)
    p = tmp_path / f"top_{channels}.png"
    img = _check_png(plots.plot_top_anomalies(images, heatmaps, scores, p, k=4), p)
    # figsize (2 * k, 4.4) at 100 dpi.
    assert img.shape[:2] == (440, 800)


def test_plot_top_anomalies_k_larger_than_n_and_coarse_heatmaps(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.random((3, 32, 32, 3))
    heatmaps = rng.random((3, 4, 4))  # coarser than the images
    p = tmp_path / "top.png"
    img = _check_png(plots.plot_top_anomalies(images, heatmaps, [0.1, 0.3, 0.2], p, k=8), p)
    # Clipped to N = 3 columns.
    assert img.shape[:2] == (440, 600)


def test_top_anomaly_titles_say_the_true_label_and_class():
    assert plots.top_anomaly_title(12, 3.5, 1, 3) == "#12 anomalous (class 3)"
    assert plots.top_anomaly_title(4, 0.1, 0, 7) == "#4 normal (class 7)"
    assert plots.top_anomaly_title(4, 0.1, 1, -1) == "#4 anomalous"  # another dataset: no class
    assert plots.top_anomaly_title(4, 0.1) == "#4"


def test_plot_top_anomalies_with_labels_masks_and_a_fixed_colour_range(tmp_path):
    rng = np.random.default_rng(7)
    images = rng.random((4, 16, 16, 1))
    heatmaps = rng.random((4, 16, 16))
    masks = np.zeros((4, 16, 16), np.float32)
    masks[1, 4:9, 4:9] = 1.0
    scores = [0.1, 0.9, 0.5, 0.3]
    kwargs = dict(labels=[0, 1, 1, 0], classes=[2, 5, 6, 2], masks=masks, k=3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _check_png(plots.plot_top_anomalies(images, heatmaps, scores, tmp_path / "a" / "top.png", **kwargs,
                                            heat_range=(0.0, 1.0)), tmp_path / "a" / "top.png")
    b = _check_png(plots.plot_top_anomalies(images, heatmaps, scores, tmp_path / "b" / "top.png", **kwargs,
                                            heat_range=(0.0, 10.0)), tmp_path / "b" / "top.png")
    assert a.shape == b.shape and not np.array_equal(a, b)  # the range is applied, not recomputed per grid
    with pytest.raises(ValueError, match="masks"):
        plots.plot_top_anomalies(images, heatmaps, scores, tmp_path / "c.png", masks=masks[:, :8])


def test_plot_top_anomalies_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="C in"):
        plots.plot_top_anomalies(np.zeros((2, 4, 4, 2)), np.zeros((2, 4, 4)), [0, 1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="heatmaps"):
        plots.plot_top_anomalies(np.zeros((2, 4, 4, 3)), np.zeros((3, 4, 4)), [0, 1], tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


def test_failed_save_leaves_old_png_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "roc.png"
    scores, labels = _scores_labels()
    plots.plot_roc(scores, labels, p)
    before = p.read_bytes()

    def boom(self, fname, *args, **kwargs):
        # Simulate a crash half-way through writing the PNG.
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(PNG_SIGNATURE)
        else:
            fname.write(PNG_SIGNATURE)
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_roc(scores, 1 - labels, p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["roc.png"]
