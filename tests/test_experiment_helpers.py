"""experiments/helpers.py: how visible a local anomaly is; loss curves."""

import os
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
import helpers  # noqa: E402
from test_plots import _check_png  # noqa: E402

def test_local_contrast_is_the_mean_largest_channel_change_over_the_mask():
    clean = np.zeros((2, 3, 3, 2), np.uint8)
    corrupted = clean.copy()
    corrupted[0, 0, 0] = (51, 255)  # largest channel change 1.0
    corrupted[0, 0, 1] = (0, 0)  # masked but unchanged: change 0
    corrupted[0, 2, 2] = (255, 255)  # changed outside the mask: ignored
    corrupted[1, 1, 1] = (102, 0)  # 0.4
    masks = np.zeros((2, 3, 3), np.float32)
    masks[0, 0, :2] = 1
    masks[1, 1, 1] = 1
    np.testing.assert_allclose(helpers.local_contrast(clean, corrupted, masks), [0.5, 0.4])
    # Float images are already in [0, 1].
    np.testing.assert_allclose(helpers.local_contrast(clean / 255.0, corrupted / 255.0, masks), [0.5, 0.4])
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        helpers.local_contrast(clean, corrupted, np.concatenate([masks[:1], np.zeros_like(masks[:1])]))
    with pytest.raises(ValueError, match="one shape"):
        helpers.local_contrast(clean, corrupted[:1], masks)


def test_plot_loss_curves(tmp_path):
    history = {
        "loss": [(0, 2.0), (10, 1.0), (20, 0.5)],
        "val_loss": [(10, 1.2), (0, 2.1)],  # unsorted steps are fine
        "empty": [],
    }
    p = tmp_path / "loss.png"
    img = _check_png(helpers.plot_loss_curves(history, p), p)
    assert img.shape[:2] == (400, 700)


def test_plot_loss_curves_empty_history(tmp_path):
    p = tmp_path / "loss.png"
    _check_png(helpers.plot_loss_curves({}, p), p)


def test_plot_loss_curves_rejects_malformed_series(tmp_path):
    with pytest.raises(ValueError, match="'bad'"):
        helpers.plot_loss_curves({"bad": [(0, 1.0, 2.0)]}, tmp_path / "loss.png")
    assert os.listdir(tmp_path) == []
