"""ResNet encoders with the CIFAR stem, returning the feature map of every stage.

The CIFAR stem (3x3 stride-1 conv, no max-pool) keeps small images large enough for
four stages; stage s (1..4) has width * 2**(s-1) channels (x4 for bottlenecks) and
stages 2..4 halve the resolution.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Depth -> (blocks per stage, bottleneck?)
RESNET_LAYOUTS: dict[int, tuple[tuple[int, ...], bool]] = {
    10: ((1, 1, 1, 1), False),
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
}


def _conv(features: int, kernel: int, strides: int, name: str, dtype: Any) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), (strides, strides), padding="SAME", use_bias=False, dtype=dtype,
                   name=name)


class BasicBlock(nn.Module):
    features: int
    strides: int
    norm: Callable[..., Any]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(_conv, dtype=self.dtype)
        y = nn.relu(self.norm(name="bn1")(conv(self.features, 3, self.strides, "conv1")(x)))
        # Zero-init of the last BN scale makes each block start as the identity.
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(conv(self.features, 3, 1, "conv2")(y))
        if x.shape[-1] != self.features or self.strides != 1:
            x = self.norm(name="bn_proj")(conv(self.features, 1, self.strides, "proj")(x))
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    features: int
    strides: int
    norm: Callable[..., Any]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(_conv, dtype=self.dtype)
        y = nn.relu(self.norm(name="bn1")(conv(self.features, 1, 1, "conv1")(x)))
        y = nn.relu(self.norm(name="bn2")(conv(self.features, 3, self.strides, "conv2")(y)))
        y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(conv(self.features * 4, 1, 1, "conv3")(y))
        if x.shape[-1] != self.features * 4 or self.strides != 1:
            x = self.norm(name="bn_proj")(conv(self.features * 4, 1, self.strides, "proj")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Returns [F_1, F_2, F_3, F_4], the output of each stage."""

    depth: int = 18
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool) -> Sequence[jnp.ndarray]:
        blocks, bottleneck = RESNET_LAYOUTS[self.depth]
        norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,  # noqa: E731
                                         dtype=self.dtype, **kw)
        block_cls = BottleneckBlock if bottleneck else BasicBlock
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name="stem")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        features = []
        for stage, num_blocks in enumerate(blocks):
            for b in range(num_blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                x = block_cls(self.width * 2**stage, strides, norm, self.dtype, name=f"stage{stage + 1}_block{b + 1}")(x)
            features.append(x)
        return features


def stage_channels(depth: int, width: int, stage: int) -> int:
    """Channels C_s of stage `stage` (1..4)."""
    _, bottleneck = RESNET_LAYOUTS[depth]
    return width * 2 ** (stage - 1) * (4 if bottleneck else 1)
