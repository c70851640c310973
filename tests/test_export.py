"""Export, loading without the training code, and the scoring command, on a tiny job of
the default (digits) dataset: the exported scores are the evaluation's scores."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mscad_jax import config as config_lib
from mscad_jax import export, exported, metrics, plots, score, train
from mscad_jax.scoring import spec as scoring_spec
from mscad_jax.scoring import state as scoring_state
from mscad_jax.data import protocols
from mscad_jax.models import anomem

from conftest import make_tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The commands compile as this suite does (conftest), so their rounding is the same.
ENV = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return make_job(tmp_path_factory.mktemp("export"))


def make_job(root) -> dict:
    """A finished tiny digits job (rotation head, four scorers summed, the Euclidean
    kNN of the digits config, the detector on its own scales, the spatial detector's
    max-pooled score and maps) and its export."""
    config = config_lib.chosen_method(make_tiny_config(dataset="digits", normal_class=0))
    config.eval.scorer = ("knn", "rotation", "detector", "pixel_knn")
    config.eval.map_source = "detector"
    config.eval.detector_pooling = "max"
    config.eval.knn_metric = "euclidean"
    config.eval.detector_weights = (0.0, 1.0, 1.0)
    config.eval.plots = False
    workdir, artifact = str(root / "run"), str(root / "model")
    results = train.train_and_evaluate(config, workdir)
    metadata = export.export(workdir, artifact, ["cpu"])
    return {"config": config, "workdir": workdir, "artifact": artifact, "results": results, "metadata": metadata,
            "data": protocols.build_protocol(config), "root": root}


def test_a_second_run_of_the_same_config_and_seed_writes_the_same_scores_bit_for_bit(job, tmp_path):
    # Reproducibility is exact, not approximate: a fresh run of the method's default path
    # (rotations, the k-means memory fit, the detector) repeats every score's bytes.
    train.train_and_evaluate(job["config"], str(tmp_path / "again"))
    with open(os.path.join(job["workdir"], "scores.csv"), "rb") as first, \
            open(tmp_path / "again" / "scores.csv", "rb") as again:
        assert again.read() == first.read()


def test_exported_scores_equal_the_evaluation_scores(job):
    model = exported.load(job["artifact"])
    out = model.score(job["data"].test_images)
    rows = _read_csv(os.path.join(job["workdir"], "scores.csv"))
    assert len(rows) == len(out["score"]) == 540
    for column, key in (("score", "score"), ("knn", "score/knn"), ("rotation", "score/rotation"),
                        ("detector", "score/detector"), ("pixel_knn", "score/pixel_knn"), ("detector/scale3", "detector/scale3"),
                        ("knn/scale4", "knn/scale4"), ("a0/scale2", "a0/scale2")):
        want = np.array([float(r[column]) for r in rows])
        np.testing.assert_allclose(out[key], want, rtol=1e-5, atol=1e-5, err_msg=column)
    assert out["map"].shape == (540, 8, 8)
    # Any number of images: the last batch is padded, the rows do not change.
    np.testing.assert_allclose(model.score(job["data"].test_images[:3])["score"], out["score"][:3], atol=1e-5)


def test_metadata_describes_the_model(job):
    meta = job["metadata"]
    assert meta["input"] == {"dtype": "uint8", "shape": ["N", 8, 8, 1], "image_size": 8, "channels": 1}
    assert meta["platforms"] == ["cpu"] and meta["scales"] == ["scale2", "scale3", "scale4"]
    assert meta["scorers"] == ["knn", "rotation", "detector", "pixel_knn"] and meta["knn_metric"] == "euclidean"
    # The maps are the detector's: its weights set the heatmap range (3 x their sum).
    assert meta["score_weights"] == [1.0] * 3 and meta["detector_weights"] == [0.0, 1.0, 1.0]
    assert meta["heatmap_range"] == [0.0, 6.0]
    assert meta["threshold"] == pytest.approx(job["results"]["threshold"])
    assert meta["class_names"] == [str(k) for k in range(10)] and meta["normal_class"] == 0
    assert set(meta["files"]) == {exported.MODEL_FILE, exported.WEIGHTS_FILE}
    assert set(meta["normal_statistics"]["per_scorer"]) >= {"knn", "rotation", "detector", "a0"}
    for name in ("jax", "jaxlib", "mscad_jax"):
        assert meta["versions"][name]
    with open(os.path.join(job["artifact"], exported.METADATA_FILE)) as f:
        assert json.load(f) == json.loads(json.dumps(meta))
    # The threshold flags about (100 - percentile)% of normal training images.
    normal = job["data"].train_images
    flagged = np.mean(exported.load(job["artifact"]).score(normal)["score"] > meta["threshold"])
    assert 0.0 < flagged < 0.3


def test_a_scorer_spec_from_before_a_field_existed_takes_it_from_the_defaults_given():
    spec = scoring_spec.ScorerSpec(("scale2", "scale3"), (1.0, 2.0), ("knn",), ("knn",), 5)
    written = dataclasses.asdict(spec)
    del written["knn_metric"], written["detector_weights"], written["knn_pooling"]
    assert scoring_spec.ScorerSpec.from_json(json.loads(json.dumps(written))) == spec
    assert spec.map_weights == (1.0, 2.0)
    own = dataclasses.replace(spec, detector_weights=(0.0, 1.0))
    assert scoring_spec.ScorerSpec.from_json(json.loads(json.dumps(dataclasses.asdict(own)))).map_weights == (0.0, 1.0)
    # The run's config supplies what an older spec.json lacks (export passes it).
    from_config = dataclasses.replace(spec, knn_pooling="flatten", knn_metric="euclidean")
    assert scoring_spec.ScorerSpec.from_json(written, defaults=from_config) == from_config


def test_an_old_scorer_state_reads_its_statistics_under_todays_names(job, tmp_path):
    """A workdir evaluated before the detector's per-scale key was renamed ('a/scale2')."""
    state, spec = scoring_state.load(os.path.join(job["workdir"], "scorer"))
    old = dict(state)
    old["stats"] = {k.replace("detector/", "a/"): v for k, v in state["stats"].items()}
    scoring_state.save(str(tmp_path), old, spec)
    reread, _ = scoring_state.load(str(tmp_path))
    assert set(reread["stats"]) == set(state["stats"]) and any(k.startswith("detector/") for k in reread["stats"])


def test_export_imports_no_training_code():
    code = ("import sys; import mscad_jax.export; "
            "print(sorted(k for k in sys.modules if k in ('mscad_jax.stage1', 'mscad_jax.stage2', 'mscad_jax.loop', "
            "'mscad_jax.train', 'mscad_jax.evaluate', 'mscad_jax.data.anomalies', 'optax', 'orbax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_loading_needs_neither_flax_nor_the_training_code(job):
    code = ("import sys, numpy as np; from mscad_jax import exported; "
            f"m = exported.load({job['artifact']!r}); out = m.score(np.zeros((2, 8, 8, 1), np.uint8)); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('flax', 'optax', 'tensorflow', "
            "'ml_collections') or k in ('mscad_jax.config', 'mscad_jax.stage2', 'mscad_jax.models.anomem'))); "
            "print(out['score'].shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "(2,)"]


@pytest.mark.parametrize("damage", ["truncate_weights", "alter_model", "break_metadata", "remove_weights"])
def test_a_damaged_artifact_is_refused(job, tmp_path, damage):
    path = str(tmp_path / "model")
    shutil.copytree(job["artifact"], path)
    if damage == "truncate_weights":
        weights = os.path.join(path, exported.WEIGHTS_FILE)
        os.truncate(weights, os.path.getsize(weights) // 2)
        match = "SHA-256"
    elif damage == "alter_model":
        with open(os.path.join(path, exported.MODEL_FILE), "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        match = "SHA-256"
    elif damage == "break_metadata":
        meta = os.path.join(path, exported.METADATA_FILE)
        os.truncate(meta, os.path.getsize(meta) - 20)
        match = "not valid JSON"
    else:
        os.remove(os.path.join(path, exported.WEIGHTS_FILE))
        match = "lacks weights.npz"
    with pytest.raises(exported.ArtifactError, match=match):
        exported.load(path)


def test_score_rejects_images_of_the_wrong_shape(job):
    with pytest.raises(ValueError, match=r"uint8 \[N, 8, 8, 1\]"):
        exported.load(job["artifact"]).score(np.zeros((2, 8, 8, 3), np.uint8))


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, cwd=REPO)


def test_export_refuses_an_unfinished_workdir(job, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(job["workdir"], partial)
    shutil.rmtree(partial / "checkpoints" / "stage2")
    output = tmp_path / "out"
    done = _run("mscad_jax.export", f"--workdir={partial}", f"--output={output}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {partial} holds no stage2 checkpoint: run the job first "
                                                f"(python -m mscad_jax.main --config=... --workdir={partial})"]
    assert not output.exists() and not any(p.name.startswith("out.") for p in tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export.export(str(tmp_path / "nothing"), str(output))
    shutil.copytree(os.path.join(job["workdir"], "checkpoints", "stage2"), partial / "checkpoints" / "stage2")
    shutil.rmtree(partial / "scorer")
    with pytest.raises(FileNotFoundError, match="no fitted scorer .*--mode=evaluate"):
        export.export(str(partial), str(output))
    assert not output.exists()


def test_heatmap_colours_do_not_depend_on_the_rest_of_the_image():
    image = np.zeros((4, 4, 1), np.uint8)
    quiet, loud = np.ones((4, 4)), np.ones((4, 4))
    loud[0, 0] = 50.0
    a = plots.heatmap_overlay(image, quiet, (0.0, 9.0), min_size=4)
    b = plots.heatmap_overlay(image, loud, (0.0, 9.0), min_size=4)
    assert a.shape == (4, 4, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[1:, 1:], b[1:, 1:])  # the same heat, the same colour
    assert not np.array_equal(a[0, 0], b[0, 0])
    assert plots.heatmap_overlay(image, quiet, (0.0, 9.0), min_size=256).shape == (256, 256, 3)


def test_score_command_on_folders(job, tmp_path):
    images = job["data"].test_images[:6]
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    for i, image in enumerate(images):
        target = inputs / ("nested" if i % 2 else "") / f"{i}.{'tiff' if i == 3 else 'png'}"
        Image.fromarray(image[..., 0]).save(target)
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (inputs / ".hidden.png").write_bytes(b"ignored")
    output, heatmaps = tmp_path / "scores.csv", tmp_path / "heat"
    done = _run("mscad_jax.score", f"--model={job['artifact']}", f"--output={output}", f"--heatmaps={heatmaps}",
                str(inputs))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 2 and "broken.png" in warnings[0] and "notes.txt" in warnings[1]
    assert "scored 6 images" in done.stdout and "2 files skipped" in done.stdout
    rows = _read_csv(output)
    assert list(rows[0])[:3] == ["path", "score", "is_anomaly"] and "knn/scale4" in rows[0] and "rotation" in rows[0]
    by_name = {os.path.basename(r["path"]): r for r in rows}
    want = exported.load(job["artifact"]).score(images)
    threshold = job["metadata"]["threshold"]
    for i in range(6):
        row = by_name[f"{i}.{'tiff' if i == 3 else 'png'}"]
        assert float(row["score"]) == pytest.approx(float(want["score"][i]), abs=1e-5)
        assert int(row["is_anomaly"]) == int(want["score"][i] > threshold)
        with open(row["heatmap"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    written = sorted(os.listdir(heatmaps))  # an overlay and a defect mask per image
    assert len(written) == 12 and sum(name.endswith("_mask.png") for name in written) == 6


def test_score_command_without_images_writes_nothing(job, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "readme.txt").write_text("no images here")
    output, heatmaps = tmp_path / "scores.csv", tmp_path / "heat"
    done = _run("mscad_jax.score", f"--model={job['artifact']}", f"--output={output}", f"--heatmaps={heatmaps}",
                str(inputs))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: none of the 1 files is a decodable image; nothing written"
    assert not output.exists() and not heatmaps.exists()


def test_find_files_walks_folders_in_order_and_refuses_missing_paths(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "b/1.png", "a.png", ".skip.png"):
        (tmp_path / name).write_bytes(b"")
    assert score.find_files([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b" / "1.png"),
                                                 str(tmp_path / "b" / "2.png")]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        score.find_files([str(tmp_path / "missing")])


def test_score_files_survives_every_odd_input(job, tmp_path, monkeypatch):
    """Each odd input is scored (converted as training converts it) or skipped with one
    reason and counted: never a traceback, never a partial CSV."""
    import tensorflow as tf

    inputs = tmp_path / "in"
    (inputs / "looks_like.png").mkdir(parents=True)  # a folder named like an image: walked into
    gray = job["data"].test_images[0][..., 0]
    Image.fromarray(gray).save(inputs / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(inputs / "rgb_for_a_gray_model.png")
    Image.fromarray(gray).save(inputs / "looks_like.png" / "inside.png")
    Image.fromarray(np.full((4000, 4000), 128, np.uint8)).save(inputs / "huge.png")
    wide = (gray.astype(np.uint16) * 257)[..., None]
    (inputs / "sixteen_bit.png").write_bytes(tf.io.encode_png(tf.constant(wide)).numpy())
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    frames[0].save(inputs / "animated.gif", save_all=True, append_images=frames[1:])
    (inputs / "empty.jpg").write_bytes(b"")
    os.symlink(tmp_path / "gone.png", inputs / "broken_link.png")
    Image.fromarray(gray).save(inputs / "unreadable.png")
    real_read = tf.io.read_file

    def read_file(path, *args, **kwargs):  # a read error part-way (root reads every file)
        if "unreadable" in str(path):
            raise tf.errors.DataLossError(None, None, "Input/output error")
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(tf.io, "read_file", read_file)
    model = exported.load(job["artifact"])
    columns, skipped = score.score_files(model, score.find_files([str(inputs)]))
    scored = sorted(os.path.basename(p) for p in columns["path"])
    assert scored == ["animated.gif", "gray.png", "huge.png", "inside.png", "rgb_for_a_gray_model.png",
                      "sixteen_bit.png"]
    assert len(skipped) == 3 and all(len(reason.splitlines()) == 1 for reason in skipped)
    for name in ("empty.jpg", "broken_link.png", "unreadable.png"):
        assert sum(name in reason for reason in skipped) == 1, (name, skipped)
    by_name = dict(zip((os.path.basename(p) for p in columns["path"]), columns["score"]))
    want = float(model.score(gray[None, ..., None])["score"][0])
    for name in ("gray.png", "rgb_for_a_gray_model.png", "inside.png", "sixteen_bit.png", "animated.gif"):
        assert by_name[name] == pytest.approx(want, abs=1e-5), name  # the first frame; 16 bits scaled to 8


def test_score_command_refuses_a_missing_path_and_picks_another_operating_point(job, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(job["data"].test_images[0][..., 0]).save(image)
    output = tmp_path / "scores.csv"
    done = _run("mscad_jax.score", f"--model={job['artifact']}", f"--output={output}", str(image),
                str(tmp_path / "missing.png"))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith("missing.png: no such file or folder")
    assert not output.exists()
    done = _run("mscad_jax.score", f"--model={job['artifact']}", f"--output={output}", "--threshold_fpr=0.2", str(image))
    assert done.returncode == 0, done.stderr
    model = exported.load(job["artifact"])
    summary = done.stdout.strip().splitlines()[-1]
    assert "images/s" in summary and "model loaded in" in summary and "--threshold_fpr" in summary
    assert f"{model.threshold_at(0.2):.4g}" in summary and model.threshold_at(0.2) < model.threshold
    assert model.threshold_at(0.05) == pytest.approx(model.threshold, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        model.threshold_at(1.5)


def test_defect_boxes_cover_each_connected_region_in_the_files_pixels():
    defective = np.zeros((8, 8), bool)
    defective[1:3, 2:4] = True  # one square region
    defective[5, 6] = defective[6, 7] = True  # diagonal neighbours: one region (8-connected)
    assert score.defect_boxes(defective, (8, 8)) == [(2, 1, 4, 3), (6, 5, 8, 7)]
    # A file of 80 x 40 pixels (width, height): boxes scale to it and still cover the region.
    assert score.defect_boxes(defective, (80, 40)) == [(20, 5, 40, 15), (60, 25, 80, 35)]
    assert score.defect_boxes(np.zeros((8, 8), bool), (8, 8)) == []


def test_score_command_marks_where_the_defect_is(job, tmp_path):
    meta = job["metadata"]
    assert meta["pixel_threshold"] == pytest.approx(job["results"]["pixel_threshold"]) and meta["pixel_threshold"] > 0
    image = tmp_path / "x.png"
    big = np.repeat(np.repeat(job["data"].test_images[1][..., 0], 5, axis=0), 5, axis=1)  # a 40 x 40 file
    Image.fromarray(big).save(image)
    output, heatmaps = tmp_path / "scores.csv", tmp_path / "heat"
    done = _run("mscad_jax.score", f"--model={job['artifact']}", f"--output={output}", f"--heatmaps={heatmaps}",
                str(image))
    assert done.returncode == 0, done.stderr
    row = _read_csv(output)[0]
    from mscad_jax.data import sources

    as_read = sources.read_image_file(str(image), 8, 1)  # resized to the model's 8 x 8 as scoring reads it
    heat = exported.load(job["artifact"]).score(as_read[None])["map"][0]
    defective = heat > meta["pixel_threshold"]
    assert float(row["defect_share"]) == pytest.approx(defective.mean())
    want = ";".join(" ".join(map(str, b)) for b in score.defect_boxes(defective, (40, 40)))
    assert row["boxes"] == want
    with Image.open(row["mask"]) as mask:
        assert mask.size == (40, 40)
        np.testing.assert_array_equal(np.asarray(mask) > 0, np.repeat(np.repeat(defective, 5, 0), 5, 1))


def test_the_default_score_keeps_no_training_images_in_the_model(tmp_path):
    """With the chosen method's score (detector + rotation), the model holds the fitted
    memory, not a bank of training features: its arrays have the same shapes whether the
    job trained on 60 images or on all of them (the held-out normal scores of the threshold
    aside), and its scores still equal the evaluation's."""
    shapes = {}
    for cap in (60, 0):
        config = config_lib.chosen_method(make_tiny_config(dataset="digits", normal_class=0, max_train_examples=cap))
        config.validation.fraction = 0.2
        config.eval.plots = False
        workdir = str(tmp_path / f"run{cap}")
        train.train_and_evaluate(config, workdir)
        state, spec = scoring_state.load(os.path.join(workdir, "scorer"))
        assert spec.scorers == ("detector", "rotation") and "knn" not in spec.available
        flat = scoring_state.flatten(state)
        assert not any(k.startswith("bank") for k in flat) and any(k.startswith("frozen.fitted_memory") for k in flat)
        shapes[cap] = {k: v.shape for k, v in flat.items() if k != "normal_scores"}
    assert shapes[60] == shapes[0]
    artifact = str(tmp_path / "model")
    export.export(workdir, artifact, ["cpu"])
    out = exported.load(artifact).score(protocols.build_protocol(config).test_images)
    rows = _read_csv(os.path.join(workdir, "scores.csv"))
    for column, key in (("score", "score"), ("detector", "score/detector"), ("rotation", "score/rotation")):
        np.testing.assert_allclose(out[key], [float(r[column]) for r in rows], rtol=1e-5, atol=1e-5, err_msg=column)
    assert not any(k.startswith("knn") for k in out)


def test_a_map_memory_job_exports_the_scores_and_maps_it_was_evaluated_with(tmp_path):
    """The map memory (stage2.memory_fit=maps: whole normal maps, ridge retrieval, a window
    on the deviation) on local anomalies: the artifact holds the stored maps, and its scores
    and maps are the evaluation's (its maps give the evaluation's pixel AUROC)."""
    config = config_lib.chosen_method(make_tiny_config(dataset="digits", normal_class=0, anomaly_type="local"))
    config = config_lib.apply_overrides(config, {
        "stage2.memory_fit": "maps", "stage2.memory_fit_slots": 6, "stage2.memory_fit_neighbours": 3,
        "stage2.memory_fit_window": 2, "stage2.synthetic_anomalies": ("scar",), "stage2.position_labels": True,
        "eval.scorer": ("detector",), "eval.detector_pooling": "max", "eval.map_source": "detector",
        "eval.plots": False})
    workdir, artifact = str(tmp_path / "run"), str(tmp_path / "model")
    results = train.train_and_evaluate(config, workdir)
    state, _ = scoring_state.load(os.path.join(workdir, "scorer"))
    maps = scoring_state.flatten(state)
    assert {k for k in maps if k.startswith("frozen.fitted_memory.maps.")} == {
        f"frozen.fitted_memory.maps.{n}" for n in anomem.scale_names(config.model.scales)}
    export.export(workdir, artifact, ["cpu"])
    data = protocols.build_protocol(config)
    out = exported.load(artifact).score(data.test_images)
    rows = _read_csv(os.path.join(workdir, "scores.csv"))
    np.testing.assert_allclose(out["score"], [float(r["score"]) for r in rows], rtol=1e-5, atol=1e-5)
    assert metrics.pixel_auroc(out["map"], data.test_masks) == pytest.approx(results["pixel_auroc"], abs=1e-6)
