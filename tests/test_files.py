"""Atomic result-file writing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mscad_jax import files


# ---------------------------------------------------------------------------
# write_json_atomic
# ---------------------------------------------------------------------------


def test_write_json_atomic_roundtrip_numpy_and_no_temp_left(tmp_path):
    obj = {
        "auroc": np.float32(0.5),
        "count": np.int64(7),
        "flag": np.bool_(True),
        "arr": np.arange(3, dtype=np.int32),
        "nested": {"m": np.array([[0.25, 0.5]])},
        "plain": [1, "a", None],
    }
    path = tmp_path / "sub" / "results.json"
    files.write_json_atomic(path, obj)
    assert os.listdir(path.parent) == ["results.json"]
    loaded = json.loads(path.read_text())
    assert loaded == {
        "auroc": 0.5,
        "count": 7,
        "flag": True,
        "arr": [0, 1, 2],
        "nested": {"m": [[0.25, 0.5]]},
        "plain": [1, "a", None],
    }
    assert type(loaded["count"]) is int and type(loaded["flag"]) is bool


def test_write_json_atomic_overwrites(tmp_path):
    path = tmp_path / "r.json"
    files.write_json_atomic(path, {"v": 1})
    files.write_json_atomic(str(path), {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_json_atomic_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "r.json"
    files.write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        files.write_json_atomic(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_write_failure_mid_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with files.atomic_write(path, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_scores_csv_has_a_path_column_for_folder_datasets(tmp_path):
    out = tmp_path / "scores.csv"
    files.write_scores_csv(str(out), np.array([0.5, 2.0]), np.array([1, 0]), np.array([0, 1]),
                           {"knn": np.array([0.1, 0.9])}, {"knn/scale4": np.array([0.2, 0.8])}, ["scale4"],
                           paths=np.array(["/d/test/good/a.png", "/d/test/crack/b.png"]))
    header, first, second = out.read_text().splitlines()
    assert header == "index,path,class,is_anomaly,score,knn,knn/scale4"
    assert first.startswith("0,/d/test/good/a.png,1,0,0.5,0.1,0.2") and second.startswith("1,/d/test/crack/b.png")


# TensorFlow's in-memory file system stands in for a bucket (gs://): same code path.
def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def test_bucket_urls_are_written_in_one_piece_and_not_on_failure():
    gfile = _gfile()
    root = "ram://bucket/run_files"
    files.write_json_atomic(f"{root}/results.json", {"auroc": np.float32(0.5)})
    with gfile.GFile(f"{root}/results.json") as f:
        assert json.loads(f.read()) == {"auroc": 0.5}
    with files.atomic_write(f"{root}/plots/x.png", "wb") as f:
        f.write(b"\x89PNG")
    with gfile.GFile(f"{root}/plots/x.png", "rb") as f:
        assert f.read() == b"\x89PNG"
    with pytest.raises(RuntimeError):
        with files.atomic_write(f"{root}/partial.csv") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert not gfile.exists(f"{root}/partial.csv")
    files.makedirs(f"{root}/deep/er")
    assert gfile.isdir(f"{root}/deep/er")


def test_absolute_keeps_urls_and_resolves_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert files.absolute("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
    assert files.absolute("run") == str(tmp_path / "run")
    assert files.is_url("gs://b/x") and not files.is_url("/tmp/x")
