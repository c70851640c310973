"""k-nearest-neighbour anomaly scores: mean distance to the k nearest normal training rows.

One function serves the learned-feature scorer (cosine distance on pooled, L2-normalised
features, as the strongest from-scratch detectors score) and the raw-pixel floor that
every result is published beside (Euclidean distance on pixels). scikit-learn's exact
brute-force search does the work.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

METRICS = ("cosine", "euclidean")


def knn_distance(bank: np.ndarray, queries: np.ndarray | None, k: int, metric: str = "cosine") -> np.ndarray:
    """Mean distance of each query row to its `k` nearest rows of `bank`.

    With `queries=None` the bank scores itself leaving each row out (its own zero
    distance does not count), which gives the normal-data statistics of the score.
    Cosine distance is 1 - cos; rows are flattened to vectors first.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    bank = np.asarray(bank, np.float32).reshape(len(bank), -1)
    available = len(bank) - (1 if queries is None else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs 1..{available} bank rows to compare against, the bank holds {len(bank)}")
    search = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(bank)
    if queries is None:
        distances, _ = search.kneighbors()  # scikit-learn leaves each bank row out of its own search
    else:
        distances, _ = search.kneighbors(np.asarray(queries, np.float32).reshape(len(queries), -1))
    return distances.mean(axis=1)


def pixel_floor_auroc(train_images: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
                      k: int = 5) -> float:
    """AUROC of the raw-pixel k-NN baseline (Euclidean on [0, 1] pixels): the floor a deep
    detector must clear on the same split."""
    from mscad_jax import metrics

    scale = lambda x: np.asarray(x, np.float32) / 255.0  # noqa: E731
    return metrics.image_metrics(knn_distance(scale(train_images), scale(test_images), k, "euclidean"),
                                 test_labels)["auroc"]
