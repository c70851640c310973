"""Orbax checkpointing of a stage's state, restored into an abstract (eval_shape) target.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash never leaves a half-written checkpoint that a resumed run would pick up.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from mscad_jax import files


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(files.absolute(directory), options=options)  # gs:// URLs as they are


def abstract_like(state: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs (with the target sharding) of an eval_shape'd state."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
    """The newest checkpoint restored into `abstract_state`'s structure, or None."""
    step = mgr.latest_step()
    if step is None:
        return None
    return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
    mgr.save(step, args=ocp.args.StandardSave(state))
