"""The one k-nearest-neighbour distance: mean distance to the k nearest normal rows.

It serves the learned-feature scorer (cosine distance on L2-normalised features, as the
strongest from-scratch detectors score, or Euclidean on the raw vectors), its normal
statistics (each normal row against the others, `leave_one_out`), the raw-pixel floor
every result is published beside, and the `pixel_knn` scorer (Euclidean on [0, 1]
pixels). It is jax.numpy, so the jitted, exported scorer runs the same code as the
host-side fitting.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax.ops import l2_normalize

METRICS = ("cosine", "euclidean")
# Rows of queries per jitted call on the host side (bounds the [chunk, N] distance matrix).
CHUNK = 512


def knn_distance(queries: jax.Array, bank: jax.Array, k: int, metric: str = "cosine",
                 exclude: jax.Array | None = None) -> jax.Array:
    """[Q] mean distance of each row of `queries` [Q, D] to its `k` nearest rows of
    `bank` [N, D]; `exclude` [Q] names one bank row per query that does not count (the
    query itself, for normal statistics).

    Cosine distance is 1 - cos (a bank stored normalised costs nothing more). Euclidean
    distances expand |q - b|^2, which subtracts numbers of similar size: both sides are
    centred on the bank's mean first, and HIGHEST keeps the cross term exact where the
    default would round it (TF32 on GPUs).
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    if metric == "cosine":
        closeness = l2_normalize(queries) @ l2_normalize(bank).T
    else:
        centre = jnp.mean(bank, axis=0)
        queries, bank = queries - centre, bank - centre
        cross = jnp.matmul(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
        closeness = -(jnp.sum(queries ** 2, -1)[:, None] - 2.0 * cross + jnp.sum(bank ** 2, -1)[None, :])
    if exclude is not None:
        closeness = jnp.where(jnp.arange(bank.shape[0])[None, :] == exclude[:, None], -jnp.inf, closeness)
    nearest = jax.lax.top_k(closeness, k)[0]
    if metric == "cosine":
        return jnp.mean(1.0 - nearest, axis=-1)
    return jnp.mean(jnp.sqrt(jnp.maximum(-nearest, 0.0)), axis=-1)


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _chunk_distance(queries, bank, k, metric, exclude):
    return knn_distance(queries, bank, k, metric, exclude)


def host_knn_distance(bank: np.ndarray, queries: np.ndarray | None, k: int, metric: str = "cosine") -> np.ndarray:
    """`knn_distance` over host arrays in chunks of `CHUNK` queries, rows flattened to
    vectors. With `queries=None` the bank scores itself, each row left out of its own
    search: the statistics of an unseen normal row."""
    bank = np.asarray(bank, np.float32).reshape(len(bank), -1)
    available = len(bank) - (1 if queries is None else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs 1..{available} bank rows to compare against, the bank holds {len(bank)}")
    rows = bank if queries is None else np.asarray(queries, np.float32).reshape(len(queries), -1)
    out = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        exclude = np.arange(start, start + len(chunk)) if queries is None else np.full(len(chunk), -1)
        out.append(np.asarray(_chunk_distance(chunk, bank, k, metric, exclude)))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def pixels(images: jax.Array) -> jax.Array:
    """uint8 images [N, H, W, C] -> [N, H W C] float vectors in [0, 1]."""
    return jnp.asarray(images).reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


def pixel_floor_scores(train_images: np.ndarray, images: np.ndarray, k: int) -> np.ndarray:
    """The raw-pixel k-NN baseline's score of each image (mean Euclidean distance on [0, 1]
    pixels to its k nearest normal training images): the floor a deep detector must clear."""
    return host_knn_distance(np.asarray(pixels(train_images)), np.asarray(pixels(images)), k, "euclidean")


def pixel_floor_auroc(train_images: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
                      k: int) -> float:
    """AUROC of `pixel_floor_scores` on a split."""
    from mscad_jax import metrics

    return metrics.image_metrics(pixel_floor_scores(train_images, test_images, k), test_labels)["auroc"]
