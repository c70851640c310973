"""The whole job on tiny configs: results.json keys and ranges, plots, resume, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mscad_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUIRED_KEYS = ("dataset", "protocol", "normal_class", "scorer", "auroc", "aupr", "fpr95", "auroc_detector",
                 "auroc_detector_per_scale", "auroc_a0", "auroc_a0_per_scale", "auroc_knn", "auroc_knn_per_scale",
                 "auroc_pixel_knn_floor", "pixel_auroc", "num_test", "num_anomalies", "auroc_per_anomaly_class")


def _check_results(workdir, expect_pixel_auroc=False):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for key in REQUIRED_KEYS:
        assert key in results, key
    for key in ("auroc", "aupr", "fpr95", "auroc_a0", "auroc_detector", "auroc_knn",
                "auroc_pixel_knn_floor"):
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    assert results["scoring_images_per_s"] > 0
    assert results["model_megabytes"] == pytest.approx(os.path.getsize(os.path.join(workdir, "scorer", "arrays.npz"))
                                                       / 2**20)
    with open(os.path.join(workdir, "config.json")) as f:
        scales = {f"scale{s}" for s in json.load(f)["model"]["scales"]}
    assert set(results["auroc_detector_per_scale"]) == scales
    assert set(results["auroc_knn_per_scale"]) == scales
    assert all(0.0 <= v <= 1.0 for v in results["auroc_per_anomaly_class"].values())
    # Every anomaly class's AUROC has its raw-pixel floor beside it.
    assert set(results["auroc_pixel_knn_floor_per_anomaly_class"]) == set(results["auroc_per_anomaly_class"])
    assert all(0.0 <= v <= 1.0 for v in results["auroc_pixel_knn_floor_per_anomaly_class"].values())
    assert str(results["normal_class"]) not in results["auroc_per_anomaly_class"] or results["anomaly_type"] != "object"
    with open(os.path.join(workdir, "scores.csv")) as f:
        header, *rows = f.read().splitlines()
    assert header.startswith("index,class,is_anomaly,score,detector,a0,knn") and len(rows) == results["num_test"]
    assert all(0.0 <= v <= 1.0 for v in results["auroc_detector_per_scale"].values())
    assert 0 < results["num_anomalies"] < results["num_test"]
    if expect_pixel_auroc:
        assert 0.0 <= results["pixel_auroc"] <= 1.0
    else:
        assert results["pixel_auroc"] is None
    for name in ("roc.png", "score_histograms.png", "top_anomalies.png"):
        with open(os.path.join(workdir, "plots", name), "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir))
    return results


def test_one_class_job_then_evaluate_mode(tiny_config, tmp_path, capsys):
    config = tiny_config(dataset="digits", normal_class=1)
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    # The job's size is on the console before the first progress line: 127 normal
    # training images, 15 steps of 8 in each stage's single epoch.
    err = capsys.readouterr().err
    assert err.index("job: 127 training images; stage 1 15 steps, stage 2 15 steps, then scoring 540 test") \
        < err.index("stage1 ")
    saved = _check_results(workdir)
    assert saved["num_test"] == 540 and saved["num_anomalies"] == 540 - 55
    assert saved["normal_class"] == 1 and saved["dataset"] == "digits"
    assert json.load(open(os.path.join(workdir, "config.json")))["normal_class"] == 1
    steps = sorted(os.listdir(os.path.join(workdir, "checkpoints", "stage1")))
    # Evaluation alone reproduces the whole results.json from the checkpoints and trains nothing.
    again = train.train_and_evaluate(config, workdir, mode="evaluate")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "stage1"))) == steps
    assert again.keys() == results.keys()
    for key in results:
        if key not in ("wall_time_s", "scoring_images_per_s"):  # timings
            _assert_close(again[key], results[key], key)


def _assert_close(got, want, key):
    if isinstance(want, dict):
        assert got.keys() == want.keys(), key
        for k in want:
            _assert_close(got[k], want[k], f"{key}.{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key
    else:
        assert got == want, key


def test_evaluate_mode_without_checkpoints_fails_clearly(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="--mode=train"):
        train.train_and_evaluate(tiny_config(dataset="digits"), str(tmp_path / "empty"), mode="evaluate")


def test_unbalanced_local_anomalies_with_linear_eval(tiny_config, tmp_path):
    config = tiny_config(dataset="digits", protocol="unbalanced", anomaly_ratio=0.1, anomaly_type="local",
                         local_kind="scar", image_size=16)
    config.eval.linear_eval = True
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    results = _check_results(workdir, expect_pixel_auroc=True)
    assert set(results["auroc_detector_per_scale"]) == {"scale2", "scale3", "scale4"}
    assert results["num_train_labelled_anomalies"] == int(round(0.1 * 124))
    assert 0.0 <= results["linear_eval_accuracy"] <= 1.0
    assert results["num_anomalies"] * 2 == results["num_test"]


def test_command_line_runs_the_job(tmp_path):
    workdir = tmp_path / "cli"
    overrides = ["--config.image_size=8", "--config.model.width=4", "--config.model.num_slots=8",
                 "--config.model.proj_dim=8", "--config.stage1.epochs=1", "--config.stage1.batch_size=16",
                 "--config.stage2.epochs=1", "--config.stage2.batch_size=16", "--config.stage2.hidden=4",
                 "--config.stage2.embed_dim=4"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "mscad_jax.main", "--config=configs/default.py:normal_class=2",
                           f"--workdir={workdir}", *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _check_results(str(workdir))
    assert results["normal_class"] == 2
    assert "| auroc |" in proc.stdout
    assert np.isfinite(results["auroc"])


def test_a_bucket_workdir_gets_every_output(tiny_config, tmp_path, monkeypatch):
    """A gs:// workdir, with TensorFlow's in-memory file system standing in for the bucket:
    everything but the orbax checkpoints and clu's TensorBoard writer (which reach gs://
    through etils.epath, which knows no ram://; here sent to a local directory) goes
    through the bucket's file system."""
    import tensorflow as tf
    from clu import metric_writers

    from mscad_jax import checkpoint

    local = lambda url: str(tmp_path / url.replace("://", "_"))  # noqa: E731
    make_manager, make_writer = checkpoint.manager, metric_writers.create_default_writer
    monkeypatch.setattr(checkpoint, "manager", lambda directory, keep=2: make_manager(local(directory), keep))
    monkeypatch.setattr(metric_writers, "create_default_writer",
                        lambda logdir, **kwargs: make_writer(local(logdir), **kwargs))
    monkeypatch.chdir(tmp_path)
    workdir = "ram://bucket/job"
    train.train_and_evaluate(tiny_config(dataset="digits", normal_class=2), workdir)
    for name in ("results.json", "config.json", "scores.csv", "log.txt", "scorer/arrays.npz", "scorer/spec.json",
                 "plots/roc.png"):
        assert tf.io.gfile.exists(f"{workdir}/{name}"), name
    assert sorted(os.listdir(tmp_path)) == ["ram_bucket"]  # the redirected checkpoints and events only
