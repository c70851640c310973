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


def test_score_columns_and_the_per_anomaly_class_breakdown_of_a_run(tmp_path):
    """A job's scores.csv read back as float columns (file paths left out), a missing column named, and
    experiments/per_anomaly_class.py's rows: each scorer against each anomaly class alone, with the floor's."""
    import json

    from mscad_jax import files

    run = tmp_path / "class0"
    run.mkdir()
    #  normal images score 0 and 1; class-3 anomalies 2 and 3 (found), class-5 anomalies -1 and 0.5 (mostly missed)
    files.write_scores_csv(str(run / "scores.csv"), np.array([0.0, 1.0, 2.0, 3.0, -1.0, 0.5]),
                           np.array([0, 0, 3, 3, 5, 5]), np.array([0, 0, 1, 1, 1, 1]),
                           {"detector": np.array([0.0, 1.0, 2.0, 3.0, -1.0, 0.5])}, {}, [],
                           np.array([f"img{i}.png" for i in range(6)]))
    columns = helpers.read_score_columns(str(run / "scores.csv"))
    assert "path" not in columns and columns["class"].tolist() == [0, 0, 3, 3, 5, 5]
    with pytest.raises(ValueError, match=r"columns \['rotation'\] are not in"):
        helpers.read_score_columns(str(run / "scores.csv"), ["rotation"])
    (run / "results.json").write_text(json.dumps({"auroc_pixel_knn_floor": 0.75,
                                                  "auroc_pixel_knn_floor_per_anomaly_class": {"3": 0.5, "5": 1.0}}))
    import per_anomaly_class

    detector, floor = per_anomaly_class.rows_of_run(str(run), ["detector"], "test")
    assert detector["all"] == "62.50" and detector["3"] == "100.00" and detector["5"] == "25.00"
    assert floor["scorer"] == "pixel 5-NN floor" and floor["all"] == "75.00" and floor["5"] == "100.00"
    # Where the dataset names its classes, the columns are the names (the floor's keys in results.json).
    names = [f"c{k}" for k in range(6)]
    (run / "results.json").write_text(json.dumps({"class_names": names, "auroc_pixel_knn_floor": 0.75,
                                                  "auroc_pixel_knn_floor_per_anomaly_class": {"c3": 0.5, "c5": 1.0}}))
    detector, floor = per_anomaly_class.rows_of_run(str(run), ["detector"], "test")
    assert detector["c5"] == "25.00" and floor["c5"] == "100.00" and "5" not in detector
