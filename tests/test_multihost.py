"""Two real JAX processes (gloo collectives on CPU) reproduce the single-process result."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from test_stage1 import MULTIHOST_STEPS, multihost_inputs, run_steps

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_four_devices(tiny_config, tmp_path):
    out = str(tmp_path / "process0.npz")
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(port), str(i), out],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    result = np.load(out)
    config, images, labelled = multihost_inputs(tiny_config)
    losses, params = run_steps(config, images, labelled, jax.devices()[:4], MULTIHOST_STEPS)
    flat = np.concatenate([x.ravel() for x in jax.tree.leaves(params)])
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5)
    assert np.linalg.norm(result["params"] - flat) / np.linalg.norm(flat) < 1e-5
