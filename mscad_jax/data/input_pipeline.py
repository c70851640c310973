"""Batches as global sharded arrays: seeded epoch order for training, padded eval batches.

Why not a tf.data shuffle buffer: the order of epoch k is `permutation(seed, k)` of
the whole split, so a run resumed at any step sees exactly the batches it would have
seen, and the global batch is the same whatever the number of hosts and devices
(each process feeds only the rows its devices hold; see `parallel.to_global`).
Images travel as uint8 and become float32 in [0, 1] on device.
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from mscad_jax.errors import ConfigError
from mscad_jax import parallel


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch `epoch`, a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, 1000, epoch]).permutation(n)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped; every epoch reshuffles)."""
    if num_examples < batch_size:
        raise ConfigError(f"the global batch size {batch_size} exceeds the {num_examples} training "
                                     "examples; lower the stage's batch_size")
    return num_examples // batch_size


def train_batches(arrays: dict[str, np.ndarray], batch_size: int, seed: int, start_step: int,
                  num_steps: int, mesh: Mesh) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Yields (step, global batch) for steps start_step .. num_steps - 1.

    The next batch is placed on device while the current step runs: jitted steps are
    dispatched asynchronously, so building batch k+1 overlaps step k.
    """
    n = len(next(iter(arrays.values())))
    per_epoch = steps_per_epoch(n, batch_size)
    order, order_epoch = None, -1
    for step in range(start_step, num_steps):
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(seed, epoch, n), epoch
        index = order[position * batch_size:(position + 1) * batch_size]
        yield step, parallel.to_global({k: v[index] for k, v in arrays.items()}, mesh)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int,
                 mesh: Mesh) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Yields (number of real rows, global batch) in order; the last batch is zero-padded."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = {}
        for k, v in arrays.items():
            chunk = v[start:stop]
            if stop - start < batch_size:
                pad = np.zeros((batch_size - (stop - start),) + v.shape[1:], v.dtype)
                chunk = np.concatenate([chunk, pad])
            batch[k] = chunk
        yield stop - start, parallel.to_global(batch, mesh)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1], on device."""
    return images.astype(np.float32) / 255.0
