"""Modern Hopfield memory: learnable normal prototypes queried at every spatial position.

Default (cosine) form: a = softmax(beta * cos(f, M)), r = a @ M. The projected form
softmax(beta * (f Wq)(M Wk)^T) (M Wk Wv) is behind `projected=True`. The stored
patterns are the `slots` param, an explicit leaf of the params pytree (reach them
through `AnoMem.memory_slots`). `usage` gives the memory's diagnostics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mscad_jax.ops import l2_normalize


def cosine_attention(queries: jnp.ndarray, slots: jnp.ndarray, beta: float) -> jnp.ndarray:
    """softmax over slots of beta * cos(query, slot); queries [..., C], slots [N, C]."""
    return jax.nn.softmax(beta * l2_normalize(queries) @ l2_normalize(slots).T, axis=-1)


def usage(attention: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Diagnostics of a memory's attention [..., N]: (entropy of the mean attention over
    slots, number of slots holding more than 1% of it)."""
    p = attention.reshape(-1, attention.shape[-1]).mean(axis=0)
    entropy = -jnp.sum(p * jnp.log(jnp.clip(p, 1e-12)))
    return entropy, jnp.sum(p > 0.01)


class HopfieldMemory(nn.Module):
    """Retrieves, for each feature vector, a convex combination of stored patterns."""

    num_slots: int
    beta: float = 10.0
    projected: bool = False
    key_dim: int = 64

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """features [..., C] -> (retrieved [..., C], attention [..., num_slots]), float32."""
        channels = features.shape[-1]
        slots = self.param("slots", nn.initializers.normal(stddev=1.0), (self.num_slots, channels))
        # Attention runs in float32 even under bf16 compute: the softmax is sharp (beta 10).
        f = features.astype(jnp.float32)
        if not self.projected:
            attention = cosine_attention(f, slots, self.beta)
            return attention @ slots, attention
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)  # noqa: E731
        keys = dense(self.key_dim, "w_k")(slots)
        logits = self.beta * dense(self.key_dim, "w_q")(f) @ keys.T
        attention = jax.nn.softmax(logits, axis=-1)
        return attention @ dense(channels, "w_v")(keys), attention
