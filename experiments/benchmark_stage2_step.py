"""Throughput of the jitted stage-2 train step; see benchmark_stage1_step.py.

  python experiments/benchmark_stage2_step.py --config=configs/fashion_mnist.py:cpu=True
"""

from __future__ import annotations

import sys

from absl import app, flags

import benchmark_stage1_step  # the same flags, measurement and table
from mscad_jax import cli


def main(argv):
    del argv
    benchmark_stage1_step.run("stage2")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
