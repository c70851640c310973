"""Loading an exported model (`python -m mscad_jax.export`) without the training code.

    from mscad_jax import exported
    model = exported.load("model_dir")
    out = model.score(images)  # uint8 [N, H, W, C] -> {'score': [N], 'map': [N, H, W], ...}

Needs jax (with flatbuffers, which jax.export.deserialize imports) and numpy only: no
config, no Flax, TensorFlow or optax (requirements-runtime.txt). An artifact is a directory of
three files:
- `model.stablehlo`: the scoring function (mscad_jax.scoring) serialised by jax.export,
  with a symbolic batch dimension, called as `f(weights, images)`;
- `weights.npz`: every array of the scorer state (trained variables, k-NN bank, normal
  statistics, threshold) under dotted names, read with allow_pickle=False;
- `metadata.json`: input size and channels, the preprocessing, scales and weights,
  normal statistics, the threshold, the dataset and class names, versions, and the
  SHA-256 of the other two files, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

FORMAT = "mscad_jax.exported/1"
MODEL_FILE = "model.stablehlo"
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "metadata.json"


class ArtifactError(ValueError):
    """An artifact that is missing, truncated, altered or of another format."""


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: str) -> dict[str, Any]:
    """The artifact's metadata, after checking its format and every file's hash."""
    meta_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise ArtifactError(f"{path} is not an exported model: it has no {METADATA_FILE}")
    try:
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{meta_path} is not valid JSON (truncated or altered?): {e}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not of format {FORMAT!r}")
    for name, want in metadata["files"].items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise ArtifactError(f"{path} lacks {name}")
        if sha256(file) != want:
            raise ArtifactError(f"{file} does not match its SHA-256 in {METADATA_FILE} (truncated or altered)")
    return metadata


class ExportedModel:
    """An exported scorer: `.score(images)`, `.metadata`, `.threshold`, `.image_shape`.
    `batch_size` defaults to the evaluation's (metadata['batch_size'])."""

    def __init__(self, path: str, batch_size: int | None = None):
        import jax

        self.path = path
        self.metadata = read_metadata(path)
        with open(os.path.join(path, MODEL_FILE), "rb") as f:
            self._exported = jax.export.deserialize(bytearray(f.read()))
        with np.load(os.path.join(path, WEIGHTS_FILE), allow_pickle=False) as z:
            self._weights = {k: z[k] for k in z.files}
        self._call = jax.jit(self._exported.call)
        # The evaluation's batch by default: XLA's kernels for another batch shape can
        # round differently, and every batch is padded to this one shape.
        self.batch_size = int(batch_size or self.metadata["batch_size"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    def threshold_at(self, fpr: float) -> float:
        """The threshold that flags the share `fpr` of the normal images the artifact's
        threshold was set on (held-out normals where the run had a validation split): another
        operating point, read from their stored scores without refitting."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"a false-positive rate in (0, 1), got {fpr}")
        normal = self._weights.get("normal_scores")
        if normal is None:
            raise ArtifactError(f"{self.path} stores no normal scores (exported before they were kept): "
                                "export it again to pick another operating point")
        return float(np.quantile(normal, 1.0 - fpr))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        i = self.metadata["input"]
        return (i["image_size"], i["image_size"], i["channels"])

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Scores uint8 images [N, H, W, C] of the model's size and channels (see
        metadata['preprocessing']); returns host arrays, one row per image."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, self.image_shape))}], "
                             f"got {images.dtype} {list(images.shape)}")
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            valid = len(batch)
            if valid < self.batch_size:  # one compiled shape, whatever N is
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - valid, axis=0)])
            for key, value in self._call(self._weights, batch).items():
                chunks.setdefault(key, []).append(np.asarray(value)[:valid])
        if not chunks:
            return {}
        return {k: np.concatenate(v) for k, v in chunks.items()}


def load(path: str, batch_size: int | None = None) -> ExportedModel:
    """Loads and checks an exported model (raises ArtifactError naming what is wrong)."""
    return ExportedModel(path, batch_size)
