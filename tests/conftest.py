"""Test-wide JAX setup: four fake CPU devices (for sharding tests) and fast compiles."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Must happen before any JAX computation initialises the CPU backend.
jax.config.update("jax_num_cpu_devices", 4)
# Compile time dominates the tiny models used in tests.
jax.config.update("jax_disable_most_optimizations", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tiny import make_tiny_config  # noqa: E402,F401  (tests import it from here too)


def init_variables(module, key, *inputs, **kwargs):
    """`module.init(key, *inputs, **kwargs)` under jit. Eager, each of the model's ops
    would be dispatched and compiled on its own: ~25 s for the tiny AnoMem on two cores,
    against a few seconds for one compiled init. A shape tuple stands for zeros of that
    shape."""
    inputs = [np.zeros(x, np.float32) if isinstance(x, tuple) else x for x in inputs]
    return jax.jit(functools.partial(module.init, **kwargs))(key, *inputs)


def untrained_stage1(config, images, mesh):
    """(model, frozen variables) of a stage 1 at initialisation, for `images`' shape."""
    from mscad_jax import stage1
    from mscad_jax.models import anomem

    model = anomem.AnoMem(**config.model)
    state = stage1.create_state(model, stage1.make_optimizer(config, 1), config.seed, images.shape[1:], mesh)
    return model, {"params": state.params, "batch_stats": state.batch_stats}


def jitted_apply(module, **kwargs):
    """`module.apply(variables, *inputs, **kwargs)` under jit, for the same reason."""
    return jax.jit(functools.partial(module.apply, **kwargs))


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture
def random_images():
    def make(n, size=8, channels=1, seed=0):
        return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)

    return make


@pytest.fixture
def batch_stream(monkeypatch):
    """Controls a stage's batches: `interrupt_at(step)` raises KeyboardInterrupt there (a
    pre-emption); `record()` returns the list the steps run get appended to."""
    from mscad_jax.data import input_pipeline

    real = input_pipeline.train_batches

    class Control:
        def interrupt_at(self, at):
            def batches(*args, **kwargs):
                for step, batch in real(*args, **kwargs):
                    if step == at:
                        raise KeyboardInterrupt("pre-empted")
                    yield step, batch

            monkeypatch.setattr(input_pipeline, "train_batches", batches)

        def record(self):
            steps = []

            def batches(*args, **kwargs):
                for step, batch in real(*args, **kwargs):
                    steps.append(step)
                    yield step, batch

            monkeypatch.setattr(input_pipeline, "train_batches", batches)
            return steps

    return Control()
