"""Throughput of the jitted stage-1 train step (images/s; each image is two views).

  python experiments/benchmark_stage1_step.py --config=configs/fashion_mnist.py:cpu=True

Random uint8 images of the config's shape; the first step (compilation) is timed apart.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import config as config_lib
from mscad_jax import cli, parallel, stage1
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:args]).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps after the compiling one.")
_CHANNELS = flags.DEFINE_integer("channels", 1, "Image channels.")


def main(argv):
    del argv
    config = _CONFIG.value
    config_lib.validate(config, num_devices=jax.device_count())
    batch = config.stage1.batch_size
    size = config.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch * 4, size, size, _CHANNELS.value), dtype=np.uint8)
    mesh = parallel.make_mesh()
    model = anomem.AnoMem(**config.model)
    tx = stage1.make_optimizer(config, 4)
    state = stage1.create_state(model, tx, config.seed, images.shape[1:], mesh)
    step = stage1.make_train_step(model, tx, stage1.Stage1Hparams.from_config(config),
                                  stage1.learning_rate_schedule(config, 4), mesh)
    arrays = {"image": images, "labelled_anomaly": np.zeros(len(images), bool)}
    batches = [b for _, b in input_pipeline.train_batches(arrays, batch, 0, 0, _STEPS.value + 1, mesh)]
    start = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for b in batches[1:]:
        state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    print(f"{flag_text} on {jax.device_count()} {jax.devices()[0].platform} device(s): "
          f"first step {compile_s:.1f} s, then {_STEPS.value * batch / seconds:.0f} images/s "
          f"({_STEPS.value / seconds:.2f} steps/s of batch {batch})")


flags.mark_flags_as_required(["config"])

if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
