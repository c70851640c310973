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

import jax
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import aot, cli, logs, parallel, report
from mscad_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:args]).",
                                          lock_config=True)
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None, "Devices in the mesh (default: all present).")
_TRAIN_IMAGES = flags.DEFINE_integer("train_images", 50000, "Training set size, for the schedules' steps per epoch.")


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
        rows = aot.plan(_CONFIG.value, mesh, _TRAIN_IMAGES.value)
    except config_lib.ConfigError as e:
        cli.refuse(str(e))
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    print(f"# Plan for {mesh.devices.size} {devices[0].platform} device(s), `{flag_text}`\n")
    print(report.results_table(rows, list(rows[0]), mean_row=False))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=cli.parse_flags)
