"""The validation split (DESIGN section 2): carved from the TRAIN split only, never
trained on, with anomalies that are not test images; scored beside the test split, and
the threshold set on its held-out normals."""

import csv
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from mscad_jax import config as config_lib
from mscad_jax import train
from mscad_jax.data import protocols, sources


def _config(**overrides):
    c = config_lib.base_config()
    c.image_size = 8
    return config_lib.apply_overrides(c, {"dataset": "digits", "validation.fraction": 0.2, **overrides})


def _rows(images):
    return {bytes(x) for x in images}


def test_one_class_holds_out_normal_training_images_and_draws_anomalies_from_other_training_classes():
    config = _config(normal_class=3)
    data = protocols.build_protocol(config)
    train_split, test_split = (sources.load_split("digits", s, 8, 1) for s in ("train", "test"))
    normal = train_split.images[train_split.labels == 3]
    v = data.validation
    held = v.normal_images
    assert len(held) == round(0.2 * len(normal)) and len(data.train_images) == len(normal) - len(held)
    assert _rows(held) | _rows(data.train_images) == _rows(normal)
    assert not _rows(held) & _rows(data.train_images)  # never trained on
    anomalies = v.images[v.labels == 1]
    assert len(anomalies) == len(held) and set(v.classes[v.labels == 1]) <= set(range(10)) - {3}
    assert _rows(anomalies) <= _rows(train_split.images[train_split.labels != 3])  # from TRAIN
    assert not _rows(v.images) & _rows(test_split.images)
    assert v.source == "other classes" and v.masks is None
    # Seeded: the same config gives the same split; another seed another.
    again = protocols.build_protocol(config).validation
    np.testing.assert_array_equal(again.images, v.images)
    other = protocols.build_protocol(config_lib.apply_overrides(config, {"seed": 1})).validation
    assert not np.array_equal(other.images, v.images)


def test_unbalanced_validation_anomalies_are_never_the_labelled_training_anomalies():
    data = protocols.build_protocol(_config(protocol="unbalanced", anomaly_ratio=0.5, normal_class=0,
                                            **{"validation.anomalies_per_normal": 3.0}))
    labelled = data.train_images[data.train_labelled_anomaly]
    anomalies = data.validation.images[data.validation.labels == 1]
    assert len(labelled) and len(anomalies) == 3 * len(data.validation.normal_images)
    assert not _rows(labelled) & _rows(anomalies)


def test_local_validation_anomalies_are_synthesised_on_the_held_out_normals_with_masks():
    data = protocols.build_protocol(_config(anomaly_type="local", local_kind="cutpaste", image_size=16))
    v = data.validation
    normals, anomalies = v.images[v.labels == 0], v.images[v.labels == 1]
    assert len(normals) == len(anomalies) and v.source == "synthesised cutpaste"
    assert v.masks.shape == v.images.shape[:3] and v.masks[v.labels == 0].sum() == 0
    assert np.all(v.masks[v.labels == 1].sum(axis=(1, 2)) > 0)
    outside = v.masks[v.labels == 1][..., None] == 0
    np.testing.assert_array_equal(np.where(outside, anomalies, 0), np.where(outside, normals, 0))
    assert not _rows(anomalies) & _rows(data.test_images)  # another seed than the test's


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_fraction_outside_the_range_is_refused(fraction):
    with pytest.raises(config_lib.ConfigError, match=r"config.validation.fraction="):
        config_lib.validate(_config(**{"validation.fraction": fraction}))


def test_a_fraction_that_leaves_no_training_image_is_refused_and_a_tiny_one_still_holds_out_one():
    with pytest.raises(config_lib.ConfigError, match="validation.fraction=0.999 holds out 124 of the 124"):
        protocols.build_protocol(_config(normal_class=0, **{"validation.fraction": 0.999}))
    assert len(protocols.build_protocol(_config(**{"validation.fraction": 0.001})).validation.normal_images) == 1


def test_the_job_reports_validation_beside_test_and_sets_the_threshold_on_held_out_normals(tiny_config, tmp_path):
    from mscad_jax import export, exported

    config = tiny_config(dataset="digits", **{"validation.fraction": 0.2, "eval.scorer": ("detector", "knn"),
                                              "eval.plots": False})
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    v = results["validation"]
    assert 0.0 <= v["auroc"] <= 1.0 and 0.0 <= v["auroc_detector"] <= 1.0 and 0.0 <= v["auroc_knn"] <= 1.0
    assert set(v["auroc_detector_per_scale"]) == {"scale2", "scale3", "scale4"}
    assert v["num_normal"] == round(0.2 * 124) and v["num_anomalies"] == v["num_normal"] and v["anomalies"] == "other classes"
    assert 0.0 <= v["auroc_pixel_knn_floor"] <= 1.0
    assert set(v["auroc_pixel_knn_floor_per_anomaly_class"]) == set(v["auroc_per_anomaly_class"]) != set()
    assert results["threshold_set_on"] == "held-out normal training images"
    data = protocols.build_protocol(config)
    model = exported.load(export.export(workdir, str(tmp_path / "model"), ["cpu"]) and str(tmp_path / "model"))
    held_out = model.score(data.validation.normal_images)
    held = held_out["score"]
    assert results["pixel_threshold"] == pytest.approx(float(np.percentile(held_out["map"], 99.0)), rel=1e-4)
    assert results["threshold"] == pytest.approx(float(np.percentile(held, 95.0)), rel=1e-5, abs=1e-5)
    test = model.score(data.test_images)["score"]
    assert results["threshold_test_fpr"] == pytest.approx(np.mean(test[data.test_labels == 0] > results["threshold"]))
    assert results["threshold_test_tpr"] == pytest.approx(np.mean(test[data.test_labels == 1] > results["threshold"]))
    with open(os.path.join(tmp_path / "model", "metadata.json")) as f:
        meta = json.load(f)
    assert meta["threshold_target_fpr"] == 0.05 and "held-out normal training images" in meta["threshold_rule"]
    assert meta["threshold_test_fpr"] == results["threshold_test_fpr"]
    # The per-image columns and scorer_stats recompute any scorer sum offline; the job's own sum gives its AUROC.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
    import score_combinations

    os.rename(workdir, tmp_path / "class3")
    scales = ["detector/scale2", "detector/scale3", "detector/scale4"]
    runs = score_combinations.collect(str(tmp_path), [["detector", "knn"], ["knn"], ["2*knn"], scales,
                                                      ["detector", "0.5*knn"]])
    assert list(runs) == [(3, 0)]
    run = runs[(3, 0)]
    assert run["test detector+knn"] == pytest.approx(results["auroc"], abs=1e-6)
    assert run["val detector+knn"] == pytest.approx(v["auroc"], abs=1e-6)
    assert run["val knn"] == pytest.approx(v["auroc_knn"], abs=1e-6) == pytest.approx(run["val 2*knn"], abs=1e-9)
    assert run["val floor"] == v["auroc_pixel_knn_floor"]
    # The detector's scales, each standardised with its own statistics and summed with the default (equal)
    # weights, rank exactly as the job's detector.
    assert run["test " + "+".join(scales)] == pytest.approx(results["auroc_detector"], abs=1e-6)
    assert run["val " + "+".join(scales)] == pytest.approx(v["auroc_detector"], abs=1e-6)
    # A weighted term: the standardised kNN score weighed half beside the detector.
    import helpers

    columns = helpers.read_score_columns(str(tmp_path / "class3" / "scores.csv"))
    z = {s: (columns[s] - results["scorer_stats"][s]["mean"]) / results["scorer_stats"][s]["std"] for s in ("detector", "knn")}
    from sklearn.metrics import roc_auc_score

    assert run["test detector+0.5*knn"] == pytest.approx(roc_auc_score(columns["is_anomaly"], z["detector"] + 0.5 * z["knn"]),
                                                         abs=1e-6)
    # The unbalanced sweep's runs of one class and seed, one per known anomaly class, are averaged: a copy
    # whose test labels are flipped scores 1 - AUROC, so the pair's test mean is one half.
    for known in (2, 4):
        shutil.copytree(tmp_path / "class3", tmp_path / f"class5_seed1_known{known}")
    flipped = tmp_path / "class5_seed1_known4" / "scores.csv"
    with open(flipped) as f:
        table = list(csv.DictReader(f))
    for row in table:
        row["is_anomaly"] = str(1 - int(row["is_anomaly"]))
    with open(flipped, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    runs = score_combinations.collect(str(tmp_path), [["knn"]])
    assert sorted(runs) == [(3, 0), (5, 1)]
    assert runs[(5, 1)]["test knn"] == pytest.approx(0.5, abs=1e-9)
    assert runs[(5, 1)]["val knn"] == pytest.approx(runs[(3, 0)]["val knn"], abs=1e-12)


def test_a_lever_sweep_is_read_paired_with_its_baseline_run_by_run():
    """`score_combinations.py --paired_with`: only the (class, seed) runs both sweeps hold, each as this
    sweep minus the baseline in AUROC points, and the mean with the sample std of the differences."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
    import score_combinations

    lever = {(5, 0): {"val a0": 0.90, "test a0": 0.91}, (6, 0): {"val a0": 0.80, "test a0": 0.84},
             (8, 0): {"val a0": 0.95, "test a0": 0.96}}
    baseline = {(5, 0): {"val a0": 0.89, "test a0": 0.92}, (6, 0): {"val a0": 0.77, "test a0": 0.84},
                (6, 1): {"val a0": 0.50, "test a0": 0.50}}
    summary, per_pair = score_combinations.paired_rows({k: lever[k] for k in baseline if k in lever}, baseline,
                                                       [["a0"]])
    assert [(row["class"], row["seed"]) for row in per_pair] == [(5, 0), (6, 0)]
    assert per_pair[0]["val a0"] == pytest.approx(1.0) and per_pair[0]["test a0"] == pytest.approx(-1.0)
    val = next(row for row in summary if row["score"] == "val a0")
    assert val["pairs"] == 2 and val["mean difference"] == pytest.approx(2.0)
    assert val["sample std"] == pytest.approx(np.std([1.0, 3.0], ddof=1)) and val["pairs better"] == 2


def test_an_image_folder_with_only_normal_training_images_gets_synthesised_local_anomalies(tmp_path):
    """MVTec's layout: train/good alone, so the validation anomalies are pasted on held-out goods."""
    from test_image_folders import _write_png

    root = tmp_path / "bottle"
    for i in range(10):
        _write_png(root / "train" / "good" / f"{i:03d}.png", (20 * i, 100, 200), (16, 16))
    _write_png(root / "test" / "good" / "000.png", (200, 200, 200), (16, 16))
    _write_png(root / "test" / "crack" / "000.png", (40, 40, 40), (16, 16))
    config = _config(dataset="image_folder", image_folder_dir=str(root), image_size=16, normal_class="good")
    data = protocols.build_protocol(config)
    v = data.validation
    assert len(data.train_images) == 8 and len(v.normal_images) == 2 and v.source == "synthesised cutpaste"
    assert v.masks is not None and np.all(v.masks[v.labels == 1].sum(axis=(1, 2)) > 0)
