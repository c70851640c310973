"""Ahead-of-time compilation of both stages' train steps for a mesh, on abstract inputs
(shapes, dtypes, shardings): nothing runs and no data is loaded. Used by `plan` (launch
planning) and by the step benchmarks in experiments/.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from mscad_jax import config as config_lib
from mscad_jax import parallel, stage1, stage2
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem


def _abstract_batch(batch_size: int, image_shape: tuple[int, ...], mesh) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = parallel.batch_sharded(mesh)
    return {"image": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8, sharding=sharding),
            "labelled_anomaly": jax.ShapeDtypeStruct((batch_size,), jnp.bool_, sharding=sharding)}


def _describe(name: str, compiled, batch_size: int, num_devices: int, seconds: float) -> dict[str, Any]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    per_device = None
    if memory is not None:
        per_device = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                      - memory.alias_size_in_bytes)
    return {"stage": name, "global batch": batch_size, "batch per device": batch_size // num_devices,
            "GFLOPs per step per device": (cost or {}).get("flops", float("nan")) / 1e9,
            "memory per device (MiB)": None if per_device is None else per_device / 2**20,
            "compile (s)": seconds}


STAGES = ("stage1", "stage2")


def compile_steps(config, mesh, train_images: int,
                  stages: tuple[str, ...] = STAGES) -> list[tuple[dict[str, Any], Any]]:
    """Compiles the steps of `stages` (stage 1's and stage 2's by default) for `mesh` on
    abstract inputs; per stage, a report row and the compiled executable (callable as
    `compiled(state, batch[, frozen])`)."""
    n = mesh.devices.size
    config_lib.validate(config, num_devices=n)
    channels = config_lib.DATASETS[config.dataset][2]
    image_shape = (config.image_size, config.image_size, channels)
    out = []

    model = anomem.AnoMem(**config.model)
    per_epoch = input_pipeline.steps_per_epoch(train_images, config.stage1.batch_size)
    tx = stage1.make_optimizer(config, per_epoch)
    state = stage1.abstract_state(model, tx, config.seed, image_shape, mesh)
    step = stage1.make_train_step(model, tx, stage1.Stage1Hparams.from_config(config),
                                  stage1.learning_rate_schedule(config, per_epoch), mesh)
    if "stage1" in stages:
        start = time.perf_counter()
        compiled = step.lower(state, _abstract_batch(config.stage1.batch_size, image_shape, mesh)).compile()
        out.append((_describe("stage1", compiled, config.stage1.batch_size, n, time.perf_counter() - start),
                    compiled))
    if "stage2" not in stages:
        return out

    frozen = stage2.abstract_fitted_memory(config, model, {"params": state.params, "batch_stats": state.batch_stats},
                                           image_shape, mesh)
    det, tx2 = stage2.make_detector(config), stage2.make_optimizer(config)
    state2 = stage2.abstract_state(det, model, frozen, tx2, image_shape, mesh)
    step2 = stage2.make_train_step(det, model, tx2, config, mesh)
    start = time.perf_counter()
    compiled = step2.lower(state2, _abstract_batch(config.stage2.batch_size, image_shape, mesh), frozen).compile()
    out.append((_describe("stage2", compiled, config.stage2.batch_size, n, time.perf_counter() - start), compiled))
    return out


def plan(config, mesh, train_images: int) -> list[dict[str, Any]]:
    """One report row per stage (see `compile_steps`)."""
    return [row for row, _ in compile_steps(config, mesh, train_images)]
