"""Mesh, shardings and multi-host helpers: one `data` axis, params replicated.

Every host computes the same global batch order; each one feeds the rows its own
devices hold, so results do not depend on how many hosts or devices there are.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Variables that, when set, mean the launcher expects jax.distributed.initialize().
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Initialises multi-host JAX when asked by flags or by a cluster's environment."""
    if coordinator or num_processes:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if any(os.environ.get(name) for name in _CLUSTER_ENV):
        jax.distributed.initialize()
        return True
    return False


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def jit_over_batch(fn: Callable, mesh: Mesh, num_replicated: int) -> Callable:
    """`fn(*variables, batch)` jitted for the mesh: the first `num_replicated` arguments
    replicated, the last (the batch) and the outputs split over the batch axis."""
    return jax.jit(fn, in_shardings=(replicated(mesh),) * num_replicated + (batch_sharded(mesh),),
                   out_shardings=batch_sharded(mesh))


def process_rows(mesh: Mesh, global_batch: int) -> slice:
    """The rows of a global batch that this process's devices hold."""
    indices = batch_sharded(mesh).addressable_devices_indices_map((global_batch,))
    starts = [idx[0].start or 0 for idx in indices.values()]
    stops = [global_batch if idx[0].stop is None else idx[0].stop for idx in indices.values()]
    return slice(min(starts), max(stops))


def to_global(batch: Any, mesh: Mesh) -> Any:
    """Turns a pytree of full global-batch host arrays into sharded global jax.Arrays.

    Each process passes the same global batch and contributes only its own rows.
    """
    sharding = batch_sharded(mesh)

    def put(x):
        x = np.asarray(x)
        rows = process_rows(mesh, x.shape[0])
        return jax.make_array_from_process_local_data(sharding, x[rows], x.shape)

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of arrays on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def fetch(tree: Any) -> Any:
    """Global arrays (sharded or replicated) to host NumPy on every process."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(get, tree)
