"""Stage-2 anomaly distance detector phi_s: a small bias-free CNN on a deviation map.

No biases and no BatchNorm, as in Deep SVDD: with a bias the network could map every
input to the centre c_s (hypersphere collapse).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


# How the detector turns its last feature map into one vector: `mean` is DESIGN's global
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


class MultiScaleDetector(nn.Module):
    """One detector per scale name; maps {scale: D_s} -> {scale: embedding}."""

    scale_names: Sequence[str]
    hidden: int = 64
    embed_dim: int = 32
    pooling: str = "mean"

    @nn.compact
    def __call__(self, deviations: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
        return {s: DeviationDetector(self.hidden, self.embed_dim, self.pooling, name=f"detector_{s}")(deviations[s])
                for s in self.scale_names}


def make_detector(scale_names: Sequence[str], stage2: Any) -> MultiScaleDetector:
    """The detectors a config's `stage2` section (hidden, embed_dim, pooling) describes."""
    return MultiScaleDetector(tuple(scale_names), stage2.hidden, stage2.embed_dim, stage2.pooling)
