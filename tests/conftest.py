"""Test-wide JAX setup: four fake CPU devices (for sharding tests) and fast compiles."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Must happen before any JAX computation initialises the CPU backend.
jax.config.update("jax_num_cpu_devices", 4)
# Compile time dominates the tiny models used in tests.
jax.config.update("jax_disable_most_optimizations", True)
