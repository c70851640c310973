"""A production scorer's install (requirements-runtime.txt: jax, numpy, flatbuffers,
Pillow; no TensorFlow, Flax or optax) loads an artifact and scores as the training
environment does. `bash .ci/run` builds that venv and names its python in
MSCAD_RUNTIME_PYTHON."""

import json
import os
import subprocess

import numpy as np
import pytest

from mscad_jax import exported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_PYTHON = os.environ.get("MSCAD_RUNTIME_PYTHON")

SCRIPT = """
import json, sys
import numpy as np
from mscad_jax import exported
model = exported.load(sys.argv[1])
images = np.load(sys.argv[2])
out = model.score(images)
missing = [m for m in ("tensorflow", "flax", "optax", "ml_collections", "orbax") if m in sys.modules]
print(json.dumps({"score": out["score"].tolist(), "loaded_training_libraries": missing}))
"""


@pytest.mark.skipif(not RUNTIME_PYTHON, reason="set MSCAD_RUNTIME_PYTHON to a venv built from "
                    "requirements-runtime.txt (bash .ci/run does)")
def test_an_artifact_scores_in_a_venv_without_tensorflow_flax_or_optax(tmp_path):
    from test_export import make_job  # the export tests' tiny finished job

    job = make_job(tmp_path)
    images = job["data"].test_images[:20]
    np.save(tmp_path / "images.npy", images)
    for module in ("tensorflow", "flax", "optax"):
        probe = subprocess.run([RUNTIME_PYTHON, "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is installed in the runtime venv"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([RUNTIME_PYTHON, "-c", SCRIPT, job["artifact"], str(tmp_path / "images.npy")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded_training_libraries"] == []
    want = exported.load(job["artifact"]).score(images)["score"]
    np.testing.assert_allclose(report["score"], want, rtol=1e-5, atol=1e-5)
