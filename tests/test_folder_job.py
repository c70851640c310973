"""A user's folder with defects and masks (MVTec AD's layout) through `configs/folder.py`,
training, export and the scoring command: the maps find the defects and the boxes cover
them."""

import os

import numpy as np

from mscad_jax import config as config_lib
from mscad_jax import export, exported, score, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
SIDE = 8  # the defect: a dark SIDE x SIDE square, obvious on purpose


def _save(path, array):
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(array).numpy())


def _write_folder(root, rng):
    """Grey cloth with mild noise; test/hole images carry a dark square, masked in ground_truth/."""
    cloth = lambda: np.clip(150 + rng.normal(0, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)  # noqa: E731
    for i in range(48):
        _save(root / "train" / "good" / f"{i:03d}.png", cloth())
    for i in range(12):
        _save(root / "test" / "good" / f"{i:03d}.png", cloth())
    squares = []
    for i in range(12):
        image, mask = cloth(), np.zeros((SIZE, SIZE, 1), np.uint8)
        top, left = rng.integers(1, SIZE - SIDE, 2)
        image[top:top + SIDE, left:left + SIDE] = 20
        mask[top:top + SIDE, left:left + SIDE] = 255
        _save(root / "test" / "hole" / f"{i:03d}.png", image)
        _save(root / "ground_truth" / "hole" / f"{i:03d}_mask.png", mask)
        squares.append((int(left), int(top), int(left) + SIDE, int(top) + SIDE))
    return squares


def test_a_folder_with_masks_is_trained_exported_and_its_defects_outlined(tmp_path):
    squares = _write_folder(tmp_path / "cloth", np.random.default_rng(0))
    config = config_lib.load_config_file(os.path.join(REPO, "configs", "folder.py"),
                                         f"image_folder_dir={tmp_path / 'cloth'}")
    # The preset, shrunk to a test's size.
    config = config_lib.apply_overrides(config, {
        "image_size": SIZE, "model.width": 8, "model.num_slots": 8, "model.proj_dim": 8, "stage1.epochs": 2,
        "stage1.batch_size": 16, "stage2.epochs": 2, "stage2.batch_size": 16, "stage2.memory_fit_slots": 4,
        "eval.batch_size": 32, "eval.plots": False})
    workdir, artifact = str(tmp_path / "run"), str(tmp_path / "model")
    results = train.train_and_evaluate(config, workdir)
    assert results["num_test"] == 24 and set(results["auroc_per_anomaly_class"]) == {"hole"}
    assert results["validation"]["anomalies"] == "synthesised cutpaste"
    # Pixel AUROC of the exported maps against the masks, clearly above chance (0.5).
    assert results["pixel_auroc"] > 0.9, results["pixel_auroc"]
    export.export(workdir, artifact, ["cpu"])
    model = exported.load(artifact)
    holes = sorted(str(p) for p in (tmp_path / "cloth" / "test" / "hole").iterdir())
    columns, skipped = score.score_files(model, holes, heatmaps=str(tmp_path / "heat"))
    assert not skipped and len(columns["boxes"]) == len(holes)
    covered = []
    for boxes, (x0, y0, x1, y1), mask in zip(columns["boxes"], squares, columns["mask"]):
        assert os.path.exists(mask)
        union = np.zeros((SIZE, SIZE), bool)
        for box in filter(None, boxes.split(";")):
            bx0, by0, bx1, by1 = map(int, box.split())
            union[by0:by1, bx0:bx1] = True
        covered.append(union[y0:y1, x0:x1].mean())
        assert union.mean() < 0.5  # the boxes outline the defect, not the whole image
    # Most of every defect lies inside a box (bilinear maps blur a square's corners).
    assert np.mean(covered) > 0.9 and min(covered) > 0.5, covered
