"""A memory fitted to the frozen normal features after stage 1 (`stage2.memory_fit`).

Stage 1's memory holds N_s slots shared by every position, so a feature is compared
with prototypes of whatever appeared anywhere in an image. The fitted memory holds, at
each position of a scale's map, `slots` prototypes of what normal training images have
*there*: k-means of their features at that position (assigned by cosine, as the memory
retrieves). Retrieval is the memory's own attention, softmax(beta * cos(f, M)), over the
slots of the query's position, with the sharper beta the fit names. The deviation maps
D_s (stage 2's input, A0, the heatmaps) are then measured against a model of normality
whose size does not grow with the training set (experiments/results/
fashion_mnist_memory_fit.md: why per position, and the slots and beta chosen).

The map memory (`stage2.memory_fit=maps`) holds instead `slots` whole normal feature maps
per scale: k-means of the flattened maps. An image's map is retrieved as one ridge
reconstruction out of its `neighbours` nearest stored maps (cosine on the flattened maps;
the same coefficients at every position), so each position is compared with what the
same place holds in normal images that look like this one as a whole: a patch that is
normal somewhere in a garment can still be wrong where it is. The deviation may be
averaged over a small window of positions (a pasted box shifts many positions alike).
Why: experiments/results/fashion_mnist_local_map_memory.md.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax.ops import l2_normalize

# The key of the fitted memory in the frozen variables: {'slots': {scale: [H, W, K, C]},
# 'beta': scalar} per position, or {'maps': {scale: [M, H, W, C]}, 'penalty': [K],
# 'window': [w, w]} for the map memory (array shapes carry K and w, which compile into the
# retrieval). `anomem.frozen_outputs` retrieves from it when present.
KEY = "fitted_memory"
# The map memory's ridge penalty, added to the diagonal of the stored maps' gram (raw
# feature units). Validation was flat from 0.1 to 10 (experiments/results/
# fashion_mnist_local_map_memory.md, part A), so it is a constant, not a field.
MAP_RIDGE_PENALTY = 1.0
# Lloyd iterations of the k-means, a fixed count so that the fit is one compiled loop. It
# need not be exact: A0's validation AUROC hardly moved between 8 and 64 slots per position
# (experiments/results/fashion_mnist_memory_fit.md).
ITERATIONS = 20


def _kmeans(points: jax.Array, num_slots: int, key: jax.Array) -> jax.Array:
    """k-means of `points` [N, C] with cosine assignment; centres are the means of the
    raw points assigned to them (an empty cluster keeps its centre). [num_slots, C]."""
    units = l2_normalize(points)
    start = jax.random.choice(key, points.shape[0], (num_slots,), replace=False)

    def step(_, centres):
        assign = jnp.argmax(units @ l2_normalize(centres).T, axis=-1)
        onehot = jax.nn.one_hot(assign, num_slots, dtype=points.dtype)
        counts = onehot.sum(axis=0)[:, None]
        return jnp.where(counts > 0, onehot.T @ points / jnp.maximum(counts, 1.0), centres)

    return jax.lax.fori_loop(0, ITERATIONS, step, points[start])


# One compiled k-means per shape, shared by every fit (a jax.jit made per call would not be).
_kmeans_jit = jax.jit(_kmeans, static_argnums=1)


@functools.partial(jax.jit, static_argnums=2)
def _fit_row(row: jax.Array, keys: jax.Array, num_slots: int) -> jax.Array:
    """row [N, W, C] -> [W, num_slots, C]: one k-means per position."""
    return jax.vmap(lambda p, k: _kmeans(p, num_slots, k), in_axes=(1, 0))(row, keys)


def fit_slots(features: np.ndarray, num_slots: int, seed: int) -> np.ndarray:
    """Per-position prototypes [H, W, num_slots, C] of normal features [N, H, W, C]."""
    n, h, w, _ = features.shape
    if n < num_slots:
        raise ValueError(f"stage2.memory_fit_slots={num_slots} needs at least as many normal training images; "
                         f"there are {n}")
    keys = jax.random.split(jax.random.PRNGKey(seed), h * w).reshape(h, w, -1)
    # One row of positions at a time bounds the device memory to a row's features.
    rows = [_fit_row(jnp.asarray(features[:, i], jnp.float32), keys[i], num_slots)
            for i in range(h)]
    return np.asarray(jnp.stack(rows))


def fit_maps(features: np.ndarray, num_maps: int, seed: int) -> np.ndarray:
    """Whole-map prototypes [num_maps, H, W, C] of normal features [N, H, W, C]: k-means of
    the flattened maps, assigned by cosine."""
    n = features.shape[0]
    if n < num_maps:
        raise ValueError(f"stage2.memory_fit_slots={num_maps} needs at least as many normal training images; "
                         f"there are {n}")
    flat = jnp.asarray(features.reshape(n, -1), jnp.float32)
    centres = _kmeans_jit(flat, num_maps, jax.random.PRNGKey(seed))
    return np.asarray(centres).reshape((num_maps,) + features.shape[1:])


def map_memory(maps: dict[str, np.ndarray], neighbours: int, window: int, dtype: str = "float32") -> dict[str, Any]:
    """The fitted-memory entry of a map memory (see KEY), its maps stored as `dtype`."""
    maps = {n: np.asarray(m).astype(dtype) for n, m in maps.items()}
    return {"maps": maps, "penalty": np.full((neighbours,), MAP_RIDGE_PENALTY, np.float32),
            "window": np.full((window, window), 1.0 / window ** 2, np.float32)}


def retrieve_maps(features: jax.Array, maps: jax.Array, penalty: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features [B, H, W, C], maps [M, H, W, C], penalty [K] -> (retrieved [B, H, W, C],
    coefficients [B, M]): each map's ridge reconstruction argmin_a ||f - B^T a||^2 +
    penalty ||a||^2 out of its K nearest stored maps B [K, H W C] (cosine on the flattened
    maps), a = (B B^T + penalty I)^-1 B f; the coefficients of the other maps are 0."""
    b, m, k = features.shape[0], maps.shape[0], penalty.shape[0]
    query = features.reshape(b, -1)
    bank = maps.reshape(m, -1).astype(query.dtype)
    inner = query @ bank.T  # [B, M]
    norms = jnp.linalg.norm(bank, axis=-1)
    cosine = inner / jnp.maximum(norms * jnp.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
    _, nearest = jax.lax.top_k(cosine, k)  # [B, K]
    gram = (bank @ bank.T)[nearest[:, :, None], nearest[:, None, :]] + jnp.diag(penalty)  # [B, K, K]
    solved = spd_solve(gram, jnp.take_along_axis(inner, nearest, axis=1))
    coefficients = jnp.zeros((b, m), query.dtype).at[jnp.arange(b)[:, None], nearest].set(solved)
    return (coefficients @ bank).reshape(features.shape), coefficients


def spd_solve(gram: jax.Array, rhs: jax.Array) -> jax.Array:
    """gram^-1 rhs for symmetric positive definite gram [B, K, K] and rhs [B, K], by a
    Cholesky factorisation and two triangular solves written as K-step loops of plain XLA
    operations. Not jnp.linalg.solve: on CPU its LAPACK kernels share one thread pool and
    deadlock when two run at once (one per scale in the same program), as they did in
    stage 2 on the 2-core machine with jaxlib 0.10."""
    k = gram.shape[-1]
    index = jnp.arange(k)

    def factor(j, low):  # column j of L, from the columns before it
        row = low[:, j, :]
        diagonal = jnp.sqrt(gram[:, j, j] - jnp.sum(row * row, axis=-1))
        column = (gram[:, :, j] - jnp.einsum("bik,bk->bi", low, row)) / diagonal[:, None]
        column = jnp.where(index > j, column, jnp.where(index == j, diagonal[:, None], 0.0))
        return low.at[:, :, j].set(column)

    low = jax.lax.fori_loop(0, k, factor, jnp.zeros_like(gram))

    def forward(j, y):  # L y = rhs
        return y.at[:, j].set((rhs[:, j] - jnp.sum(low[:, j, :] * y, axis=-1)) / low[:, j, j])

    y = jax.lax.fori_loop(0, k, forward, jnp.zeros_like(rhs))

    def backward(i, x):  # L^T x = y, last row first
        j = k - 1 - i
        return x.at[:, j].set((y[:, j] - jnp.sum(low[:, :, j] * x, axis=-1)) / low[:, j, j])

    return jax.lax.fori_loop(0, k, backward, jnp.zeros_like(rhs))


def window_mean(maps: jax.Array, window: jax.Array) -> jax.Array:
    """maps [B, H, W, C] averaged over the w x w positions around each one with the weights
    `window` [w, w] (zeros beyond the border; an even w takes one more position before
    than after, as scipy.ndimage.uniform_filter does)."""
    w = window.shape[0]
    if w == 1:
        return maps * window[0, 0]
    channels = maps.shape[-1]
    kernel = jnp.broadcast_to(window[:, :, None, None], (w, w, 1, channels)).astype(maps.dtype)
    pad = (w // 2, (w - 1) // 2)
    return jax.lax.conv_general_dilated(maps, kernel, (1, 1), (pad, pad), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=channels)


def retrieve(features: jax.Array, slots: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features [B, H, W, C], slots [H, W, K, C] -> (retrieved [B, H, W, C], attention
    [B, H, W, K]): each position attends to its own slots only."""
    # The memory's cosine attention (models.memory.cosine_attention), per position.
    attention = jax.nn.softmax(beta * jnp.einsum("bhwc,hwkc->bhwk", l2_normalize(features), l2_normalize(slots)),
                               axis=-1)
    return jnp.einsum("bhwk,hwkc->bhwc", attention, slots), attention


def apply(outputs: dict[str, Any], fitted: dict[str, Any], deviation_fn) -> dict[str, Any]:
    """The model's outputs with each fitted scale's retrieval, attention and deviation
    replaced by the fitted memory's; `deviation_fn(features, retrieved)` is the model's
    deviation kind."""
    out = dict(outputs)
    for name, maps in fitted.get("maps", {}).items():
        features = outputs[name]["features"]
        retrieved, coefficients = retrieve_maps(features, maps, fitted["penalty"])
        out[name] = {**outputs[name], "retrieved": retrieved, "attention": coefficients,
                     "deviation": window_mean(deviation_fn(features, retrieved), fitted["window"])}
    for name, slots in fitted.get("slots", {}).items():
        features = outputs[name]["features"]
        retrieved, attention = retrieve(features, slots, fitted["beta"])
        out[name] = {**outputs[name], "retrieved": retrieved, "attention": attention,
                     "deviation": deviation_fn(features, retrieved)}
    return out
