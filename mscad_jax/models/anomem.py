"""AnoMem: encoder + one Hopfield memory and one projection head per configured scale."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mscad_jax.ops import l2_normalize
from mscad_jax.models import fitted_memory
from mscad_jax.models.memory import HopfieldMemory
from mscad_jax.models.resnet import ResNet


class ProjectionHead(nn.Module):
    """g_s: C -> C (BN, ReLU) -> proj_dim."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.hidden, use_bias=False, name="dense1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
        return nn.Dense(self.out, name="dense2")(x)


DEVIATIONS = ("difference", "normalized")


def deviation_map(features: jnp.ndarray, retrieved: jnp.ndarray, kind: str) -> jnp.ndarray:
    """D_s = F_s - R_s ('difference'), or the same on per-position unit vectors
    ('normalized'), which ignores how strongly a position fires and keeps only how far its
    direction is from the memory's prototype: ||D||^2 = 2 - 2 cos(F, R)."""
    if kind == "normalized":
        return l2_normalize(features) - l2_normalize(retrieved)
    return features - retrieved


# Output key of the rotation head's logits (4 classes: 0, 90, 180, 270 degrees).
ROTATION_LOGITS = "rotation_logits"
NUM_ROTATIONS = 4


def rotate(images: jnp.ndarray, k: int) -> jnp.ndarray:
    """Rotates a batch [N, H, W, C] by k * 90 degrees (square images)."""
    return jnp.rot90(images, k, axes=(1, 2))


class AnoMem(nn.Module):
    """Returns, per scale s (keyed 'scale{s}'), the feature map F_s, the retrieved map
    R_s, the attention over slots, the deviation map D_s and, with `heads=True`, the
    projections u = g_s(GAP(F_s)) and v = g_s(GAP(R_s)). With `rotation_head`, also
    `ROTATION_LOGITS`: which of the four rotations an image shows, predicted from the
    pooled features of the deepest scale (CSI's shifting-transformation head)."""

    depth: int = 18
    width: int = 64
    scales: Sequence[int] = (2, 3, 4)
    num_slots: int = 256
    beta: float = 10.0
    projected_memory: bool = False
    key_dim: int = 64
    proj_dim: int = 128
    deviation: str = "difference"
    dtype: Any = "float32"  # compute dtype: a name ('float32', 'bfloat16') or a jnp dtype
    rotation_head: bool = False

    def memory_slots(self, params: dict) -> dict[str, jnp.ndarray]:
        """{scale name: the memory's stored patterns [num_slots, C_s]} from the model's params."""
        return {name: params[f"memory_{name}"]["slots"] for name in scale_names(self.scales)}

    @nn.compact
    def __call__(self, x, train: bool, heads: bool = True,
                 fixed_feature_retrieval: bool = False) -> dict[str, dict[str, jnp.ndarray]]:
        """With `fixed_feature_retrieval`, each scale also holds 'retrieved_fixed': the
        retrieval for stop_gradient(F_s), through which only the memory can learn."""
        stage_maps = ResNet(self.depth, self.width, jnp.dtype(self.dtype), name="encoder")(x, train)
        out = {}
        for s in self.scales:
            name = f"scale{s}"
            features = stage_maps[s - 1].astype(jnp.float32)
            memory = HopfieldMemory(self.num_slots, self.beta, self.projected_memory, self.key_dim,
                                    name=f"memory_{name}")
            retrieved, attention = memory(features)
            result = {"features": features, "retrieved": retrieved, "attention": attention,
                      "deviation": deviation_map(features, retrieved, self.deviation)}
            if fixed_feature_retrieval:
                result["retrieved_fixed"], _ = memory(jax.lax.stop_gradient(features))
            if heads:
                head = ProjectionHead(features.shape[-1], self.proj_dim, name=f"head_{name}")
                # Shared weights, but h and m go through the head in separate calls: their
                # distributions differ (m averages memory slots), and a joint BatchNorm
                # would flatten whichever of the two has the smaller spread.
                result["u"] = head(features.mean(axis=(1, 2)), train)
                result["v"] = head(retrieved.mean(axis=(1, 2)), train)
            out[name] = result
        if self.rotation_head:
            deepest = out[f"scale{max(self.scales)}"]["features"].mean(axis=(1, 2))
            out[ROTATION_LOGITS] = nn.Dense(NUM_ROTATIONS, name="rotation_head")(deepest)
        return out


def scale_names(scales: Sequence[int]) -> list[str]:
    return [f"scale{s}" for s in scales]


def frozen_outputs(model: AnoMem, frozen: dict, images: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Stage-1 outputs in inference mode (BN running statistics), no gradient: what stage 2
    and the scorer see of the trained encoder and memories. When `frozen` holds a fitted
    memory (`fitted_memory.KEY`), its scales retrieve from it instead."""
    variables = {k: v for k, v in frozen.items() if k != fitted_memory.KEY}
    out = model.apply(jax.lax.stop_gradient(variables), images, train=False, heads=False)
    if fitted_memory.KEY in frozen:
        out = fitted_memory.apply(out, jax.lax.stop_gradient(frozen[fitted_memory.KEY]),
                                  lambda f, r: deviation_map(f, r, model.deviation))
    return jax.lax.stop_gradient(out)


def deviation_maps(outputs: dict[str, Any], names: Sequence[str]) -> dict[str, jax.Array]:
    """{scale name: D_s} from the model's outputs."""
    return {name: outputs[name]["deviation"] for name in names}
