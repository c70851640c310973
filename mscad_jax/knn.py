"""k-nearest-neighbour anomaly scores: mean distance to the k nearest normal training rows.

One function serves the learned-feature scorer (cosine distance on pooled, L2-normalised
features, as the strongest from-scratch detectors score) and the raw-pixel floor that
every result is published beside (Euclidean distance on pixels). scikit-learn's exact
brute-force search does the work. `aligned_patch_distance` is the per-position distance
of SPADE (Cohen & Hoshen, 2020): each position of a feature map against the same
positions of its image's nearest normal training images, for local anomalies;
`aligned_ridge_residual` asks instead how far each position is from the best ridge
reconstruction out of those same positions (a position may be normal as a blend of its
neighbours without being close to any one of them).
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
    return nearest_rows(bank, queries, k, metric)[0].mean(axis=1)


def nearest_rows(bank: np.ndarray, queries: np.ndarray | None, k: int,
                 metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Distances and bank indices, [Q, k] each, of every query row's `k` nearest bank
    rows, nearest first (`queries=None`: the bank against itself, each row left out)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    bank = np.asarray(bank, np.float32).reshape(len(bank), -1)
    available = len(bank) - (1 if queries is None else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs 1..{available} bank rows to compare against, the bank holds {len(bank)}")
    search = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(bank)
    if queries is None:
        return search.kneighbors()  # scikit-learn leaves each bank row out of its own search
    return search.kneighbors(np.asarray(queries, np.float32).reshape(len(queries), -1))


def _shifted_maps(maps: np.ndarray, radius: int) -> list[np.ndarray]:
    """maps [..., H, W, C] moved by every offset of at most `radius` along each axis: a list
    of (2 radius + 1)^2 arrays of the same shape. Edge padding repeats border positions, so
    a shift never brings in zeros."""
    h, w = maps.shape[-3:-1]
    pad = [(0, 0)] * (maps.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)]
    padded = np.pad(maps, pad, mode="edge")
    side = 2 * radius + 1
    return [padded[..., dy:dy + h, dx:dx + w, :] for dy in range(side) for dx in range(side)]


def aligned_patch_distance(bank_maps: np.ndarray, query_maps: np.ndarray, neighbours: np.ndarray,
                           radius: int = 0, metric: str = "cosine", chunk: int = 128) -> np.ndarray:
    """[Q, H, W] distance (`metric`) of each query position to the closest position, at
    most `radius` away along each axis, of the maps of its neighbour images.

    bank_maps [N, H, W, C] and query_maps [Q, H, W, C] are feature maps; neighbours [Q, K]
    indexes bank_maps. Comparing a position only with the same place in similar normal
    images (SPADE) keeps what a position-free patch bank loses: a patch that is normal
    somewhere in a T-shirt can still be wrong where it is.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    cosine = metric == "cosine"
    unit = lambda x: np.asarray(x, np.float32) / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    bank, queries = (unit(bank_maps), unit(query_maps)) if cosine else (np.asarray(bank_maps, np.float32),
                                                                       np.asarray(query_maps, np.float32))
    if neighbours.shape[0] != len(queries) or bank.shape[1:] != queries.shape[1:]:
        raise ValueError(f"maps {bank.shape} and {queries.shape} with neighbours {neighbours.shape} do not match")
    out = np.empty(queries.shape[:3], np.float32)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        best = np.full(q.shape[:3], np.inf, np.float32)
        for k in range(neighbours.shape[1]):
            for other in _shifted_maps(bank[neighbours[start:start + chunk, k]], radius):
                distance = 1.0 - np.einsum("qhwc,qhwc->qhw", q, other) if cosine \
                    else np.sum((q - other) ** 2, axis=-1)
                best = np.minimum(best, distance)
        out[start:start + chunk] = best if cosine else np.sqrt(best)
    return out


def aligned_ridge_residual(bank_maps: np.ndarray, query_maps: np.ndarray, neighbours: np.ndarray,
                           penalty: float, radius: int = 0, chunk: int = 32) -> np.ndarray:
    """[Q, H, W] Euclidean norm of what is left of each query position after its ridge
    reconstruction from the positions, at most `radius` away along each axis, of the same
    place in its K neighbour images.

    With those R = K (2 radius + 1)^2 vectors as the rows of B [R, C] and the query vector
    q [C], the coefficients are argmin_a ||q - B^T a||^2 + penalty ||a||^2, that is
    (B B^T + penalty I)^-1 B q. bank_maps [N, H, W, C], query_maps [Q, H, W, C]; neighbours
    [Q, K] indexes bank_maps. On Fashion-MNIST local anomalies it separates better than
    the distance to the nearest such position (`aligned_patch_distance`): a normal place
    is largely a blend of the same place in similar images, a pasted patch is not.
    """
    if not penalty > 0:
        raise ValueError(f"penalty={penalty} must be > 0")
    bank = np.asarray(bank_maps, np.float32)
    queries = np.asarray(query_maps, np.float32)
    if neighbours.shape[0] != len(queries) or bank.shape[1:] != queries.shape[1:]:
        raise ValueError(f"maps {bank.shape} and {queries.shape} with neighbours {neighbours.shape} do not match")
    identity = penalty * np.eye(neighbours.shape[1] * (2 * radius + 1) ** 2, dtype=np.float32)
    out = np.empty(queries.shape[:3], np.float32)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk, :, :, :, None]  # [B, H, W, C, 1]
        shifted = _shifted_maps(bank[neighbours[start:start + chunk]], radius)  # each [B, K, H, W, C]
        basis = np.moveaxis(np.concatenate(shifted, axis=1), 1, 3)  # [B, H, W, R, C]
        coefficients = np.linalg.solve(basis @ np.swapaxes(basis, -1, -2) + identity, basis @ q)
        residual = q - np.swapaxes(basis, -1, -2) @ coefficients
        out[start:start + chunk] = np.linalg.norm(residual[..., 0], axis=-1)
    return out


def pixel_floor_auroc(train_images: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
                      k: int = 5) -> float:
    """AUROC of the raw-pixel k-NN baseline (Euclidean on [0, 1] pixels): the floor a deep
    detector must clear on the same split."""
    from mscad_jax import metrics

    scale = lambda x: np.asarray(x, np.float32) / 255.0  # noqa: E731
    return metrics.image_metrics(knn_distance(scale(train_images), scale(test_images), k, "euclidean"),
                                 test_labels)["auroc"]
