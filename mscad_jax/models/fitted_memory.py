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
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax.ops import l2_normalize

# The key of the fitted memory in the frozen variables: {'slots': {scale: [H, W, K, C]},
# 'beta': scalar}. `anomem.frozen_outputs` retrieves from it when present.
KEY = "fitted_memory"
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
    for name, slots in fitted["slots"].items():
        features = outputs[name]["features"]
        retrieved, attention = retrieve(features, slots, fitted["beta"])
        out[name] = {**outputs[name], "retrieved": retrieved, "attention": attention,
                     "deviation": deviation_fn(features, retrieved)}
    return out
