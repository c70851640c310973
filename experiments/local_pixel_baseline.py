"""A position-aware raw-pixel baseline for local anomalies: SPADE on pixel patches.

The project's floor, raw-pixel 5-NN on whole images, is weak against a small defect: a
scar changes a few pixels out of 784. This baseline keeps where each pixel is: every
3x3 pixel patch of a test image against the patches within `--radius` of the same place
in its `--neighbours` nearest normal training images (Euclidean, whole-image pixels pick
the neighbours); the image score is the worst patch, the map is the pixel AUROC's. It is
what `eval.patch_knn_neighbours` does with learned features, on pixels; a learned local
scorer has to beat it.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/local_pixel_baseline.py \
      --config=configs/fashion_mnist.py:cpu=True,anomaly_type=local,local_kind=scar
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import knn, metrics
from mscad_jax.data import protocols

_CONFIG = config_flags.DEFINE_config_file("config", None, "A local-anomaly config (configs/<name>.py[:args]).",
                                          lock_config=True)
_NEIGHBOURS = flags.DEFINE_integer("neighbours", 50, "Nearest normal training images each test image is compared with.")
_RADIUS = flags.DEFINE_integer("radius", 1, "Pixels of slack along each axis.")
flags.mark_flags_as_required(["config"])


def pixel_patches(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float [N, H, W, 9C]: each pixel's 3x3 neighbourhood in [0, 1]
    (edge-padded), so that a position is compared as a small patch, not one value."""
    x = np.pad(images.astype(np.float32) / 255.0, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return np.concatenate([x[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=-1)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    data = protocols.build_protocol(config)
    normal = data.train_images[~data.train_labelled_anomaly]
    neighbours = knn.nearest_rows(normal / 255.0, data.test_images / 255.0, _NEIGHBOURS.value, "euclidean")[1]
    maps = knn.aligned_patch_distance(pixel_patches(normal), pixel_patches(data.test_images), neighbours,
                                      _RADIUS.value, "euclidean")
    image = metrics.image_metrics(maps.reshape(len(maps), -1).max(axis=1), data.test_labels)["auroc"]
    print(f"| {config.dataset} class {config.normal_class} {config.anomaly_type}/{config.local_kind} "
          f"| K={_NEIGHBOURS.value} radius={_RADIUS.value} | image AUROC {100 * image:.2f} "
          f"| pixel AUROC {100 * metrics.pixel_auroc(maps, data.test_masks):.2f} "
          f"| raw-pixel 5-NN floor {100 * knn.pixel_floor_auroc(normal, data.test_images, data.test_labels):.2f} |")


if __name__ == "__main__":
    app.run(main)
