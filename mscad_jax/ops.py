"""Small array operations shared by the models, the losses and the scorer.

They live here, below every other module, so that models need not import the losses
(or the losses the data code) for a one-line helper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def l2_normalize(x: ArrayLike, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """Scale ``x`` to unit L2 norm along ``axis``.

    ``eps`` bounds the *squared* norm from below, so an all-zero vector maps to
    zero (not NaN) and its gradient stays finite.
    """
    x = jnp.asarray(x)
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps))
