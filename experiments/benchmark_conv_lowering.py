"""Ways to lower one 3x3 convolution on this machine: the speed levers of the encoder.

  python experiments/benchmark_conv_lowering.py [--batch=256] [--dtype=float32]

Times forward + backward (gradients of input and kernel) of a 3x3 stride-1 SAME
convolution at the encoder's map sizes (28x28x16 .. 4x4x128 for the Fashion-MNIST cpu
config, 32x32x32 .. 4x4x256 for ResNet-18 width 32) for:
  xla        lax.conv_general_dilated, NHWC/HWIO (what flax's nn.Conv lowers to);
  nchw       the same in NCHW/OIHW;
  slices     nine shifted slices concatenated on channels, then one dot;
  patches    lax.conv_general_dilated_patches, then one dot.
Also the forward pass alone, and the kernel gradient alone (the slowest part of
XLA:CPU's convolution at small channel counts). Time it with nothing else running;
XLA_FLAGS (e.g. --xla_cpu_use_onednn=true) apply as usual.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from mscad_jax import report

_BATCH = flags.DEFINE_integer("batch", 256, "Images per call (the encoder sees 2 views x batch).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after a warm-up call.")
SHAPES = ((28, 16), (14, 32), (7, 64), (4, 128), (32, 32), (16, 64), (8, 128), (4, 256))
DIMS = ("NHWC", "HWIO", "NHWC")


def xla(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DIMS)


def nchw(x, k):
    y = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1), (1, 1), "SAME",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y.transpose(0, 2, 3, 1)


def slices(x, k):
    _, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    return cols @ k.reshape(9 * c, -1)


def patches(x, k):
    cols = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME", dimension_numbers=DIMS)
    return cols @ k.transpose(2, 0, 1, 3).reshape(-1, k.shape[-1])  # patch channels are (c, kh, kw)


def milliseconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(_REPEATS.value):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / _REPEATS.value * 1e3


def main(argv):
    del argv
    dtype = jnp.dtype(_DTYPE.value)
    rows = []
    for size, channels in SHAPES:
        x = jax.random.normal(jax.random.key(0), (_BATCH.value, size, size, channels), dtype)
        k = jax.random.normal(jax.random.key(1), (3, 3, channels, channels), dtype)
        row = {"map": f"{size}x{size}x{channels}",
               "GFLOPs fwd": 2 * _BATCH.value * size * size * channels * channels * 9 / 1e9}
        for name, conv in (("xla", xla), ("nchw", nchw), ("slices", slices), ("patches", patches)):
            loss = lambda x, k, conv=conv: jnp.sum(jnp.square(conv(x, k).astype(jnp.float32)))  # noqa: E731
            row[f"{name} fwd+bwd ms"] = milliseconds(jax.jit(jax.grad(loss, argnums=(0, 1))), x, k)
        row["xla fwd ms"] = milliseconds(jax.jit(xla), x, k)
        dy = jnp.ones_like(xla(x, k))
        row["xla kernel grad ms"] = milliseconds(jax.jit(lambda x, k, dy: jax.vjp(xla, x, k)[1](dy)[1]), x, k, dy)
        rows.append(row)
    print(f"# 3x3 convolution, batch {_BATCH.value}, {_DTYPE.value}, {jax.devices()[0].platform}\n")
    print(report.results_table(rows, list(rows[0]), mean_row=False))


if __name__ == "__main__":
    sys.exit(app.run(main))
