"""One process of the two-process CPU test in test_multihost.py (not collected by pytest).

Usage: python multihost_worker.py PORT PROCESS_ID OUT_PATH
Runs three stage-1 steps on fixed data over a 2-process x 2-device mesh and, on
process 0, saves the losses and final parameters.
"""

import sys

import jax
from conftest import make_tiny_config  # noqa: E402  (sets 4 devices: overridden below)

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_disable_most_optimizations", True)

port, process_id, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402

from test_stage1 import MULTIHOST_STEPS, multihost_inputs, run_steps  # noqa: E402

assert jax.device_count() == 4 and jax.local_device_count() == 2
config, images, labelled = multihost_inputs(make_tiny_config)
losses, params = run_steps(config, images, labelled, jax.devices(), MULTIHOST_STEPS)
if jax.process_index() == 0:
    flat = np.concatenate([x.ravel() for x in jax.tree.leaves(params)])
    np.savez(out_path, losses=losses, params=flat)
