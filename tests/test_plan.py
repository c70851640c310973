"""mscad_jax.plan: ahead-of-time compilation of both stages for a mesh, without running."""

import os
import subprocess
import sys

import jax
import pytest

from mscad_jax import aot, parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.image_size=8", "--config.model.width=4", "--config.model.num_slots=8", "--config.model.proj_dim=8",
        "--config.stage1.batch_size=16", "--config.stage2.batch_size=16", "--config.stage2.hidden=4",
        "--config.stage2.embed_dim=4"]


def test_plan_reports_per_device_batch_flops_and_memory(tiny_config):
    config = tiny_config(**{"stage1.batch_size": 16, "stage2.batch_size": 16})
    one = aot.plan(config, parallel.make_mesh(jax.devices()[:1]), train_images=64)
    four = aot.plan(config, parallel.make_mesh(jax.devices()[:4]), train_images=64)
    assert [r["stage"] for r in four] == ["stage1", "stage2"]
    for a, b in zip(one, four):
        assert (a["batch per device"], b["batch per device"]) == (16, 4)
        assert b["memory per device (MiB)"] > 0
        # The partitioned step does about a quarter of the work on each of four devices.
        assert 0.2 < b["GFLOPs per step per device"] / a["GFLOPs per step per device"] < 0.35


@pytest.mark.parametrize("memory_fit", ["none", "kmeans"])
def test_one_stage_is_compiled_alone(tiny_config, memory_fit):
    """The step benchmarks compile only the stage they time (with the fitted memory's
    slots among stage 2's inputs when the config fits one)."""
    config = tiny_config(**{"stage1.batch_size": 16, "stage2.batch_size": 16, "stage2.memory_fit": memory_fit})
    [(row, compiled)] = aot.compile_steps(config, parallel.make_mesh(jax.devices()[:1]), 64, stages=("stage2",))
    assert row["stage"] == "stage2" and callable(compiled)


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    return subprocess.run([sys.executable, "-m", "mscad_jax.plan", "--config=configs/default.py", *TINY, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_plan_command_makes_eight_cpu_devices():
    proc = _run("--num_devices=8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Plan for 8 cpu device(s)" in proc.stdout
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| stage")][1:]
    assert [r[0].strip() for r in rows] == ["stage1", "stage2"]
    assert all(int(r[2]) == 2 for r in rows)  # 16 / 8 per device


@pytest.mark.parametrize("devices", ["3", "0"])
def test_plan_refuses_a_mesh_the_batch_does_not_divide(devices):
    proc = _run(f"--num_devices={devices}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and "Traceback" not in proc.stderr
    assert ("divisible by the number of devices (3)" in errors[0]) if devices == "3" else "num_devices" in errors[0]
