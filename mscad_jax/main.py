"""Entry point: python -m mscad_jax.main --config=configs/<name>.py --workdir=DIR.

Parses flags, initialises multi-host JAX when asked, validates the config before
anything is written, and dispatches to train.train_and_evaluate.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mscad_jax import config as config_lib
from mscad_jax import cli, logs, parallel, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events, results.")
_MODE = flags.DEFINE_enum("mode", "train", config_lib.MODES,
                          "train: run (or resume) both stages and evaluate; evaluate: re-run evaluation only.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: coordinator host:port.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Also print every log record (ours and the libraries') on the "
                             "console; without it the console shows progress lines, warnings and the results, "
                             "and the records go to WORKDIR/log.txt.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_console(_VERBOSE.value)
    parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info("process %d of %d; %d local / %d global devices: %s", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count(), jax.devices())
    try:
        config = _CONFIG.value
        config.keys()  # config_flags defers a missing or broken file's error to first use
    except OSError as e:
        cli.refuse(f"--config could not be loaded: {' '.join(str(e).split())}")
    # Problems the user can fix (a bad field, a batch larger than the data, evaluating an
    # untrained workdir) end with one line and status 2, not a traceback.
    try:
        train.train_and_evaluate(config, _WORKDIR.value, _MODE.value)
    except (config_lib.ConfigError, FileNotFoundError) as e:
        cli.refuse(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
