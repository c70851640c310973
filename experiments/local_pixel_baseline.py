"""A position-aware raw-pixel baseline for local anomalies: SPADE on pixel patches.

The project's floor, raw-pixel 5-NN on whole images, is weak against a small defect: a
scar changes a few pixels out of 784. This baseline keeps where each pixel is: every
`--patch` x `--patch` pixel patch of a test image against the patches within `--radius`
of the same place in its `--neighbours` nearest normal training images (whole-image
pixels pick the neighbours), measured as experiments/patch_knn.py measures learned
features: `--distance=nearest`, the Euclidean distance to the closest (SPADE),
`--distance=ridge`, what a ridge reconstruction out of them leaves (`--penalty`), or
`--distance=image_ridge`, what one ridge reconstruction of the whole image out of its
neighbours leaves (`--patch=1`, `--radius=0`), each signed residual averaged over
`--window` x `--window` pixels before its norm. The image score is the worst position,
the map is the pixel AUROC's. It is what experiments/patch_knn.py
does with learned features, on pixels; a learned local scorer has to beat it.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/local_pixel_baseline.py \
      --config=configs/fashion_mnist.py:cpu=True,anomaly_type=local,local_kind=scar
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import files, metrics
from mscad_jax.data import protocols
from mscad_jax.scoring import knn
from mscad_jax.scoring.spec import PIXEL_FLOOR_K

import patch_knn  # experiments/patch_knn.py, beside this script

_CONFIG = config_flags.DEFINE_config_file("config", None, "A local-anomaly config (configs/<name>.py[:args]).",
                                          lock_config=True)
_NEIGHBOURS = flags.DEFINE_integer("neighbours", 50, "Nearest normal training images each test image is compared with.")
_RADIUS = flags.DEFINE_integer("radius", 1, "Pixels of slack along each axis.")
_PATCH = flags.DEFINE_integer("patch", 3, "Side of the pixel patch each position is compared as (odd).")
_DISTANCE = flags.DEFINE_enum("distance", "nearest", patch_knn.DISTANCES, "As patch_knn.py --distance.")
_PENALTY = flags.DEFINE_float("penalty", 0.1, "--distance=ridge or image_ridge: the ridge penalty.")
_WINDOW = flags.DEFINE_integer("window", 1, "--distance=ridge or image_ridge: as patch_knn.py --window, in pixels.")
_SCORES_OUT = flags.DEFINE_string("scores_out", None, "Also write each test image's score to this CSV "
                                  "(index, is_anomaly, score; for experiments/local_visibility.py).")
flags.mark_flags_as_required(["config"])


def pixel_patches(images: np.ndarray, side: int = 3) -> np.ndarray:
    """uint8 [N, H, W, C] -> float [N, H, W, side^2 C]: each pixel's side x side
    neighbourhood in [0, 1] (edge-padded), so that a position is compared as a small
    patch, not one value."""
    if side < 1 or side % 2 == 0:
        raise ValueError(f"--patch={side} must be a positive odd number")
    r = side // 2
    x = np.pad(images.astype(np.float32) / 255.0, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return np.concatenate([x[:, dy:dy + h, dx:dx + w] for dy in range(side) for dx in range(side)], axis=-1)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    data = protocols.build_protocol(config)
    normal = data.train_images[~data.train_labelled_anomaly]
    neighbours = patch_knn.nearest_rows(normal / 255.0, data.test_images / 255.0, _NEIGHBOURS.value, "euclidean")[1]
    bank, queries = pixel_patches(normal, _PATCH.value), pixel_patches(data.test_images, _PATCH.value)
    maps = patch_knn.aligned_map(_DISTANCE.value, bank, queries, neighbours, _RADIUS.value, _PENALTY.value, _WINDOW.value,
                           "euclidean")
    scores = maps.reshape(len(maps), -1).max(axis=1)
    image = metrics.image_metrics(scores, data.test_labels)["auroc"]
    if _SCORES_OUT.value:
        files.write_csv_columns(_SCORES_OUT.value, {"index": np.arange(len(scores)), "is_anomaly": data.test_labels,
                                                    "score": scores})
    print(f"| {config.dataset} class {config.normal_class} {config.anomaly_type}/{config.local_kind} "
          f"| {_DISTANCE.value} K={_NEIGHBOURS.value} radius={_RADIUS.value} patch={_PATCH.value} "
          f"{f'penalty={_PENALTY.value} window={_WINDOW.value} ' if _DISTANCE.value in patch_knn.RIDGE_DISTANCES else ''}"
          f"| image AUROC {100 * image:.2f} "
          f"| pixel AUROC {100 * metrics.pixel_auroc(maps, data.test_masks):.2f} "
          f"| raw-pixel {PIXEL_FLOOR_K}-NN floor "
          f"{100 * knn.pixel_floor_auroc(normal, data.test_images, data.test_labels, PIXEL_FLOOR_K):.2f} |")


if __name__ == "__main__":
    app.run(main)
