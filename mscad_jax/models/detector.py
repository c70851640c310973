"""Stage-2 anomaly distance detectors phi_s on a deviation map (`stage2.detector`).

`conv` (DESIGN): a small bias-free CNN; its centre c_s is the normal embeddings' mean.
No biases and no BatchNorm, as in Deep SVDD: with a bias the network could map every
input to the centre c_s (hypersphere collapse).

`metric`: phi_s(D) = W_s D at every position, W_s a bias-free 1x1 convolution
initialised to the identity, with the centre 0 (phi_s(0) = 0: an image the memory
reconstructs exactly). Its distance ||phi_s(D_s)||^2 is a learned quadratic form of the
deviation map that starts as the memory's energy A0 (mean_hw ||D_s||^2); Deep SAD then
shrinks the directions normal images deviate along and stretches those of the labelled
(or synthetic) anomalies. It keeps every position (experiments/results/
fashion_mnist_memory_fit.md: why it replaced the CNN in the chosen method).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


DETECTORS = ("conv", "metric")
# How the conv detector turns its last feature map into one vector: `mean` is DESIGN's global
# average pooling; `flatten` keeps every position (a detector that sees where).
POOLINGS = ("mean", "flatten")


class DeviationDetector(nn.Module):
    """1x1 conv -> ReLU -> 3x3 conv -> ReLU -> GAP (or flatten) -> dense, all bias-free."""

    hidden: int = 64
    embed_dim: int = 32
    pooling: str = "mean"

    @nn.compact
    def __call__(self, deviation: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(nn.Conv(self.hidden, (1, 1), use_bias=False, name="conv1")(deviation))
        x = nn.relu(nn.Conv(self.hidden, (3, 3), padding="SAME", use_bias=False, name="conv2")(x))
        x = x.mean(axis=(1, 2)) if self.pooling == "mean" else x.reshape(x.shape[0], -1)
        return nn.Dense(self.embed_dim, use_bias=False, name="dense")(x)


def _identity(key, shape, dtype=jnp.float32):
    """A 1x1 convolution kernel [1, 1, C, C] that maps every position to itself."""
    del key
    return jnp.eye(shape[-1], dtype=dtype).reshape(shape)


class MetricDetector(nn.Module):
    """W D at every position (bias-free 1x1 conv, identity at initialisation), flattened
    and scaled by 1/sqrt(H W): the squared norm of the output is mean_hw ||W D[h, w]||^2."""

    @nn.compact
    def __call__(self, deviation: jnp.ndarray) -> jnp.ndarray:
        channels, positions = deviation.shape[-1], deviation.shape[1] * deviation.shape[2]
        x = nn.Conv(channels, (1, 1), use_bias=False, kernel_init=_identity, name="metric")(deviation)
        return x.reshape(x.shape[0], -1) / jnp.sqrt(float(positions))


def metric_position_distances(embedding: jnp.ndarray, deviation_shape: Sequence[int]) -> jnp.ndarray:
    """The metric detector's distance at every position, ||W D[h, w]||^2 [B, H, W], from
    its flattened output (centre 0): their mean is its image distance ||phi(D)||^2."""
    b, h, w, c = deviation_shape
    return jnp.sum(embedding.reshape(b, h, w, c) ** 2, axis=-1) * (h * w)


class MultiScaleDetector(nn.Module):
    """One detector per scale name; maps {scale: D_s} -> {scale: embedding}."""

    scale_names: Sequence[str]
    hidden: int = 64
    embed_dim: int = 32
    pooling: str = "mean"
    kind: str = "conv"

    @property
    def zero_centre(self) -> bool:
        """Whether the centres are 0 (metric) rather than the normal embeddings' mean."""
        return self.kind == "metric"

    @nn.compact
    def __call__(self, deviations: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
        if self.kind == "metric":
            return {s: MetricDetector(name=f"detector_{s}")(deviations[s]) for s in self.scale_names}
        return {s: DeviationDetector(self.hidden, self.embed_dim, self.pooling, name=f"detector_{s}")(deviations[s])
                for s in self.scale_names}


def make_detector(scale_names: Sequence[str], stage2: Any) -> MultiScaleDetector:
    """The detectors a config's `stage2` section (detector, hidden, embed_dim, pooling) describes."""
    return MultiScaleDetector(tuple(scale_names), stage2.hidden, stage2.embed_dim, stage2.pooling, stage2.detector)
