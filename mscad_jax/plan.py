"""Plan a launch: compile both stages' train steps ahead of time for a mesh of N devices.

  python -m mscad_jax.plan --config=configs/cifar10.py --num_devices=8

Nothing runs and no data is loaded: the steps are lowered and compiled on abstract
states and batches (shapes, dtypes, shardings). The report gives, per stage, the global
batch and the batch per device, FLOPs per step on each device (the compiled, partitioned
executable's cost analysis) and the memory per device (arguments, outputs, temporaries). A batch that
does not divide the mesh is refused with one line and status 2, as in `main`.

On a CPU host, N fake devices are made (`jax_num_cpu_devices`) when there are fewer; on
accelerators N cannot exceed the devices present.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import cli, logs, parallel, report, stage1, stage2
from mscad_jax import config as config_lib
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:args]).",
                                          lock_config=True)
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None, "Devices in the mesh (default: all present).")
_TRAIN_IMAGES = flags.DEFINE_integer("train_images", 50000, "Training set size, for the schedules' steps per epoch.")


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


def plan(config, mesh, train_images: int) -> list[dict[str, Any]]:
    """Compiles stage 1's and stage 2's steps for `mesh`; one report row per stage."""
    n = mesh.devices.size
    config_lib.validate(config, num_devices=n)
    channels = config_lib.DATASETS[config.dataset][2]
    image_shape = (config.image_size, config.image_size, channels)
    rows = []

    model = anomem.AnoMem(**config.model)
    per_epoch = input_pipeline.steps_per_epoch(train_images, config.stage1.batch_size)
    tx = stage1.make_optimizer(config, per_epoch)
    state = stage1.abstract_state(model, tx, config.seed, image_shape, mesh)
    step = stage1.make_train_step(model, tx, stage1.Stage1Hparams.from_config(config),
                                  stage1.learning_rate_schedule(config, per_epoch), mesh)
    start = time.perf_counter()
    compiled = step.lower(state, _abstract_batch(config.stage1.batch_size, image_shape, mesh)).compile()
    rows.append(_describe("stage1", compiled, config.stage1.batch_size, n, time.perf_counter() - start))

    frozen = {"params": state.params, "batch_stats": state.batch_stats}
    det, tx2 = stage2.make_detector(config), stage2.make_optimizer(config)
    state2 = stage2.abstract_state(det, model, frozen, tx2, image_shape, mesh)
    step2 = stage2.make_train_step(det, model, tx2, config, mesh)
    start = time.perf_counter()
    compiled = step2.lower(state2, _abstract_batch(config.stage2.batch_size, image_shape, mesh), frozen).compile()
    rows.append(_describe("stage2", compiled, config.stage2.batch_size, n, time.perf_counter() - start))
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_console()
    wanted = _NUM_DEVICES.value
    if wanted is not None and wanted < 1:
        cli.refuse(f"--num_devices={wanted} is invalid: a positive integer")
    if wanted:
        # Only the CPU backend reads this, and only before it starts (nothing above has
        # touched a device): a CPU host gets N fake devices to compile for.
        jax.config.update("jax_num_cpu_devices", wanted)
    devices = jax.devices()
    if wanted and wanted > len(devices):
        cli.refuse(f"--num_devices={wanted} is more than the {len(devices)} {devices[0].platform} devices here")
    mesh = parallel.make_mesh(devices[:wanted] if wanted else devices)
    try:
        rows = plan(_CONFIG.value, mesh, _TRAIN_IMAGES.value)
    except config_lib.ConfigError as e:
        cli.refuse(str(e))
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    print(f"# Plan for {mesh.devices.size} {devices[0].platform} device(s), `{flag_text}`\n")
    print(report.results_table(rows, list(rows[0]), mean_row=False))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=cli.parse_flags)
