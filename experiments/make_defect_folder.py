"""Writes a synthetic MVTec-layout folder of a woven texture with three kinds of local
defect and their masks, to measure `configs/folder.py` as a user's folder would be run.

  python experiments/make_defect_folder.py --root=/tmp/fabric --train=1000 --size=64
  python -m mscad_jax.main --config=configs/folder.py:image_folder_dir=/tmp/fabric --workdir=runs/fabric

Layout (MVTec AD's): train/good, test/good, test/<defect>, ground_truth/<defect>/<name>_mask.png.
Normal images: two crossed gratings (a thick warp, a finer weft) whose period, phase and angle vary a
little per image, with thread-level noise, in one tint. Defects, each with its mask:
`cut` (a patch of another image of the fabric, turned by 90 degrees: the weave runs the
wrong way), `scratch` (a thin bright or dark line at any angle), `stain` (a soft
elliptical blot that darkens and tints). No download; deterministic given --seed.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

DEFECTS = ("cut", "scratch", "stain")
TINT = np.array([0.85, 0.72, 0.52])


def fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    """One normal image, float [size, size, 3] in [0, 1]."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    period = size / 8 * rng.uniform(0.95, 1.05)
    angle = np.deg2rad(rng.uniform(-3, 3))
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    warp = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    # Thicker warp than weft: turned by 90 degrees, the weave no longer matches.
    weft = np.sin(2 * np.pi * v / (0.6 * period) + rng.uniform(0, 2 * np.pi))
    weave = 0.6 + 0.18 * warp + 0.08 * weft + 0.05 * rng.normal(size=(size, size))
    return np.clip(weave[..., None] * TINT * rng.uniform(0.95, 1.05), 0, 1)


def add_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(the image with one defect of `kind`, its boolean mask)."""
    size = image.shape[0]
    out, mask = image.copy(), np.zeros((size, size), bool)
    if kind == "cut":
        side = int(rng.integers(size // 6, size // 3))
        top, left = rng.integers(0, size - side, 2)
        out[top:top + side, left:left + side] = np.rot90(fabric(rng, size)[:side, :side])
        mask[top:top + side, left:left + side] = True
    elif kind == "scratch":
        y, x = np.mgrid[:size, :size].astype(np.float64)
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.5) * size
        along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        across = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        mask = (np.abs(along) < length / 2) & (np.abs(across) < rng.uniform(0.7, 1.5))
        out[mask] = 0.95 if rng.random() < 0.5 else 0.1
    elif kind == "stain":
        y, x = np.mgrid[:size, :size].astype(np.float64)
        cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
        ry, rx = rng.uniform(size / 14, size / 6, 2)
        weight = np.clip(1.5 - np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2), 0, 1)
        stained = out * np.array([0.55, 0.5, 0.6])
        out = out * (1 - weight[..., None]) + stained * weight[..., None]
        mask = weight > 0.25
    else:
        raise ValueError(f"kind={kind!r}; allowed: {', '.join(DEFECTS)}")
    return out, mask


def write_folder(root: str, train: int, test_good: int, per_defect: int, size: int, seed: int = 0) -> None:
    """The folder described in the module docstring."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def save(path: str, array: np.ndarray) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(tf.io.encode_png(array).numpy())

    to_png = lambda image: np.round(255 * image).astype(np.uint8)  # noqa: E731
    for i in range(train):
        save(os.path.join(root, "train", "good", f"{i:04d}.png"), to_png(fabric(rng, size)))
    for i in range(test_good):
        save(os.path.join(root, "test", "good", f"{i:04d}.png"), to_png(fabric(rng, size)))
    for kind in DEFECTS:
        for i in range(per_defect):
            image, mask = add_defect(rng, fabric(rng, size), kind)
            save(os.path.join(root, "test", kind, f"{i:04d}.png"), to_png(image))
            save(os.path.join(root, "ground_truth", kind, f"{i:04d}_mask.png"), (255 * mask[..., None]).astype(np.uint8))


_ROOT = flags.DEFINE_string("root", None, "Folder to write (created).", required=True)
_TRAIN = flags.DEFINE_integer("train", 1000, "Normal training images.")
_TEST_GOOD = flags.DEFINE_integer("test_good", 200, "Normal test images.")
_PER_DEFECT = flags.DEFINE_integer("per_defect", 100, "Test images of each defect kind.")
_SIZE = flags.DEFINE_integer("size", 64, "Image side in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the whole folder.")


def main(argv):
    del argv
    write_folder(_ROOT.value, _TRAIN.value, _TEST_GOOD.value, _PER_DEFECT.value, _SIZE.value, _SEED.value)
    print(f"wrote {_ROOT.value}: {_TRAIN.value} train/good, {_TEST_GOOD.value} test/good, "
          f"{_PER_DEFECT.value} of each of {', '.join(DEFECTS)} with masks")


if __name__ == "__main__":
    sys.exit(app.run(main))
