"""Throughput of the jitted stage-1 train step, against the machine's own matmul ceiling.

  python experiments/benchmark_stage1_step.py --config=configs/fashion_mnist.py:cpu=True
  python experiments/benchmark_stage2_step.py --config=configs/fashion_mnist.py:cpu=True

Random uint8 images of the config's shape. Reports images/s (an image enters stage 1 as
two augmented views, of four rotations when stage1.rotations), FLOPs per step from the
compiled executable's cost analysis, the achieved GFLOP/s as a fraction of a plain
jitted float32 matmul measured in the same run, compile time and the executable's
memory (arguments + outputs + temporaries). Time it with nothing else running.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import aot, cli, parallel, report, stage1, stage2
from mscad_jax import config as config_lib
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:args]).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps after a warm-up step.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "Size n of the n x n float32 matmul that sets the ceiling.")


def matmul_gflops(n: int, repeats: int = 10) -> float:
    """GFLOP/s of a jitted n x n float32 matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    jax.block_until_ready(out)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def time_steps(step, state, batches, extra=()) -> float:
    """Seconds per step over `batches` after one warm-up step."""
    state, metrics = step(state, batches[0], *extra)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for b in batches[1:]:
        state, metrics = step(state, b, *extra)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / (len(batches) - 1)


def benchmark(config, stage_name: str, num_steps: int, ceiling: float) -> dict:
    """One table row for stage 1 or stage 2 of `config` on all local devices."""
    mesh = parallel.make_mesh()
    [(row, step)] = aot.compile_steps(config, mesh, train_images=50000, stages=(stage_name,))
    channels = config_lib.DATASETS[config.dataset][2]
    batch = config.stage1.batch_size if stage_name == "stage1" else config.stage2.batch_size
    images = np.random.default_rng(0).integers(0, 256, (batch * 4, config.image_size, config.image_size, channels),
                                               dtype=np.uint8)
    arrays = {"image": images, "labelled_anomaly": np.zeros(len(images), bool)}
    batches = [b for _, b in input_pipeline.train_batches(arrays, batch, 0, 0, num_steps + 1, mesh)]
    model = anomem.AnoMem(**config.model)
    s1 = stage1.create_state(model, stage1.make_optimizer(config, 4), config.seed, images.shape[1:], mesh)
    if stage_name == "stage1":
        seconds = time_steps(step, s1, batches)
    else:
        frozen = {"params": s1.params, "batch_stats": s1.batch_stats}
        det, tx = stage2.make_detector(config), stage2.make_optimizer(config)
        state = stage2.create_state(config, det, model, frozen, tx, images, np.ones(len(images), bool), mesh)
        seconds = time_steps(step, state, batches, (frozen,))
    flops = row["GFLOPs per step per device"] * mesh.devices.size
    return {"stage": stage_name, "images/s": batch / seconds, "steps/s": 1 / seconds,
            "GFLOPs per step": flops, "GFLOP/s": flops / seconds, "matmul GFLOP/s": ceiling,
            "fraction of matmul": flops / seconds / ceiling, "compile (s)": row["compile (s)"],
            "memory per device (MiB)": row["memory per device (MiB)"]}


def run(stage_name: str) -> None:
    config = _CONFIG.value
    ceiling = matmul_gflops(_MATMUL.value)
    row = benchmark(config, stage_name, _STEPS.value, ceiling)
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    print(f"# {stage_name} step, `{flag_text}`, {jax.device_count()} {jax.devices()[0].platform} device(s)\n")
    print(report.results_table([row], list(row), mean_row=False))


def main(argv):
    del argv
    run("stage1")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
