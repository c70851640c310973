"""Loss functions for AnoMem-style anomaly detection.

All functions are pure ``jax.numpy`` code: they are ``jax.jit``-able, contain no
Python control flow on traced values, and never return NaN for empty selections
(an empty mask yields ``0.0``).

They are written for the **global** batch: callers pass whole (possibly sharded)
arrays and let the compiler partition the computation. No collectives
(``psum``/``all_gather``) are used here, so the functions must not be called
inside ``shard_map``/``pmap`` on per-device shards if the global semantics are
wanted (in particular NT-Xent, whose negatives are all other rows of the global
batch).

Functions
---------
* :func:`nt_xent` -- SimCLR NT-Xent contrastive loss with an optional anchor mask
  (masked-out pairs are still used as negatives).
* :func:`memory_variance` -- VICReg-style variance hinge on memory slots that
  prevents memory collapse.
* :func:`memory_repulsion` -- hinge pushing apart the two views of labelled
  anomalies.
* :func:`memory_reconstruction` -- mean squared deviation map of normal rows: asks
  the retrieved map to reconstruct the features.
* :func:`rotation_cross_entropy` -- cross-entropy of a shifting-transformation
  (rotation) classifier over selected rows.
* :func:`deep_sad_loss` -- Deep SAD (semi-supervised Deep SVDD) loss over
  multiple scales, with optional per-sample weights for padded rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mscad_jax.ops import l2_normalize

__all__ = [
    "nt_xent",
    "memory_variance",
    "memory_repulsion",
    "memory_reconstruction",
    "rotation_cross_entropy",
    "deep_sad_loss",
    "position_deep_sad_loss",
]


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over entries where ``mask`` is True; 0.0 if none are.

    ``jnp.where`` (rather than multiplication) keeps NaN/inf in masked-out
    entries from leaking into the result or its gradient.
    """
    mask = mask.astype(bool)
    total = jnp.sum(jnp.where(mask, values, jnp.zeros_like(values)))
    count = jnp.sum(mask.astype(values.dtype))
    return total / jnp.maximum(count, 1.0)


def nt_xent(
    u: ArrayLike,
    v: ArrayLike,
    temperature: float | ArrayLike,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """NT-Xent (normalised temperature-scaled cross-entropy) loss.

    Args:
      u: ``[B, D]`` embeddings of the first view.
      v: ``[B, D]`` embeddings of the second view (row ``i`` pairs with ``u[i]``).
      temperature: softmax temperature (> 0).
      mask: optional bool ``[B]``. ``mask[i] = False`` removes both ``u[i]`` and
        ``v[i]`` as anchors (hence as positives), but they remain negatives in
        every other anchor's denominator (e.g. labelled anomalies).

    Rows are L2-normalised and stacked into ``z = concat(u, v)`` (``2B`` rows).
    With ``s = z z^T / temperature`` and the diagonal excluded, each anchor ``a``
    with positive ``p(a)`` contributes
    ``-s[a, p(a)] + logsumexp_{k != a} s[a, k]`` (all other ``2B - 1`` rows,
    i.e. the positive plus ``2B - 2`` negatives).

    Returns:
      Scalar mean over valid anchors (``2 * sum(mask)`` of them); 0.0 when there
      is no valid anchor. For ``B = 1`` the only term in the denominator is the
      positive, so the loss is 0.
    """
    u = jnp.asarray(u)
    v = jnp.asarray(v)
    b = u.shape[0]
    z = jnp.concatenate([l2_normalize(u), l2_normalize(v)], axis=0)  # [2B, D]
    sim = (z @ z.T) / temperature  # [2B, 2B]

    n = 2 * b
    idx = jnp.arange(n)
    # Exclude self-similarity from every denominator.
    sim_no_diag = jnp.where(idx[:, None] == idx[None, :], -jnp.inf, sim)
    lse = jax.nn.logsumexp(sim_no_diag, axis=-1)  # [2B]
    pos_idx = (idx + b) % n
    pos = sim[idx, pos_idx]  # [2B]
    per_anchor = lse - pos

    if mask is None:
        valid = jnp.ones((n,), dtype=bool)
    else:
        m = jnp.asarray(mask).astype(bool).reshape(b)
        valid = jnp.concatenate([m, m], axis=0)
    return _masked_mean(per_anchor, valid)


def memory_variance(memory: ArrayLike) -> jax.Array:
    """VICReg-style variance hinge on memory slots, against collapse.

    Args:
      memory: ``[N, C]`` stored patterns (``N`` slots of dimension ``C``).

    Each slot is L2-normalised and scaled by ``sqrt(C)``:
    ``z = sqrt(C) * l2_normalize(memory)``. Unit vectors spread uniformly (or,
    e.g., the ``±`` standard basis) over the sphere in ``R^C`` have
    ``E[x_d^2] = 1 / C`` per coordinate, i.e. per-coordinate std ``1/sqrt(C)``;
    scaling by ``sqrt(C)`` makes that target std 1, so the usual VICReg hinge
    ``relu(1 - std)`` is 0 for a well-spread memory and ~1 for a collapsed one
    (all slots equal -> std 0), independent of ``C``.

    Returns:
      ``mean_d relu(1 - sqrt(var_n(z[:, d]) + 1e-4))``.
    """
    memory = jnp.asarray(memory)
    c = memory.shape[-1]
    z = jnp.sqrt(jnp.asarray(c, dtype=memory.dtype)) * l2_normalize(memory, axis=-1)
    std = jnp.sqrt(jnp.var(z, axis=0) + 1e-4)
    return jnp.mean(jax.nn.relu(1.0 - std))


def memory_repulsion(
    u: ArrayLike,
    v: ArrayLike,
    margin: float | ArrayLike,
    mask: ArrayLike,
) -> jax.Array:
    """Hinge on the cosine similarity of the two views of labelled anomalies.

    Args:
      u: ``[B, D]`` first-view embeddings.
      v: ``[B, D]`` second-view embeddings.
      margin: cosine similarities above this value are penalised.
      mask: bool ``[B]``, True for labelled anomalies.

    Returns:
      Mean over masked rows of ``relu(cos(u_i, v_i) - margin)``; 0.0 when no row
      is masked.
    """
    cos = jnp.sum(l2_normalize(u) * l2_normalize(v), axis=-1)  # [B]
    per_row = jax.nn.relu(cos - margin)
    return _masked_mean(per_row, jnp.asarray(mask).astype(bool).reshape(cos.shape))


def memory_reconstruction(deviation: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Mean over masked rows of ``mean_{h,w} ||D[b, h, w]||^2``.

    Args:
      deviation: ``[B, H, W, C]`` deviation maps ``D = F - R`` (or their normalised
        form); callers stop the gradient into ``F`` when only the memory should learn.
      mask: bool ``[B]``, True for the rows that count (normal images).

    This is the training-free score A0 of the masked rows: minimising it makes the
    memory retrieve, at every position, a prototype close to the observed feature.
    """
    d = jnp.asarray(deviation)
    per_row = jnp.mean(jnp.sum(jnp.square(d), axis=-1), axis=(1, 2))
    return _masked_mean(per_row, jnp.asarray(mask).astype(bool).reshape(per_row.shape))


def rotation_cross_entropy(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Mean over masked rows of the softmax cross-entropy of integer ``labels``.

    Args:
      logits: ``[B, K]`` classifier outputs (K shifting transformations).
      labels: int ``[B]`` index of the transformation each row shows.
      mask: bool ``[B]``, True for the rows that count.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    per_row = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return _masked_mean(per_row, jnp.asarray(mask).astype(bool).reshape(per_row.shape))


def deep_sad_loss(
    distances: ArrayLike,
    labelled_anomaly: ArrayLike,
    eta: float | ArrayLike = 1.0,
    eps: float = 1e-6,
    weights: ArrayLike | None = None,
) -> jax.Array:
    """Multi-scale Deep SAD loss.

    Args:
      distances: ``[B, S]`` squared distances of each sample to the centre at
        each of ``S`` scales (non-negative).
      labelled_anomaly: bool ``[B]``, True for labelled anomalies.
      eta: weight of the anomaly term.
      eps: keeps the inverse distance finite.
      weights: optional float ``[B]`` (default all ones), e.g. 0 for padded rows.

    Per sample and scale the term is ``d`` for normal/unlabelled samples and
    ``eta / (d + eps)`` for labelled anomalies (pushing them away from the
    centre); terms are summed over scales. Without anomalies in the batch this is
    the Deep SVDD one-class loss ``mean_b sum_s d``.

    Returns:
      ``sum_b w_b * per_sample_b / max(sum_b w_b, 1)``.
    """
    d = jnp.asarray(distances)
    lab = jnp.asarray(labelled_anomaly).astype(bool).reshape(d.shape[0], 1)
    per_term = jnp.where(lab, eta / (d + eps), d)
    per_sample = jnp.sum(per_term, axis=-1)  # [B]
    if weights is None:
        w = jnp.ones_like(per_sample)
    else:
        w = jnp.asarray(weights).astype(per_sample.dtype).reshape(per_sample.shape)
    # ``where`` so that garbage (inf/NaN) in zero-weight padded rows cannot leak.
    weighted = jnp.where(w != 0, w * per_sample, jnp.zeros_like(per_sample))
    return jnp.sum(weighted) / jnp.maximum(jnp.sum(w), 1.0)


def position_deep_sad_loss(
    distances: ArrayLike,
    anomalous: ArrayLike,
    normal: ArrayLike,
    eta: float | ArrayLike = 1.0,
    eps: float = 1e-6,
) -> jax.Array:
    """Deep SAD per position of one scale, for a detector that scores every position.

    Args:
      distances: ``[B, H, W]`` squared distance of each position to the centre.
      anomalous: ``[B, H, W]`` 1 where a position is a labelled anomaly.
      normal: ``[B, H, W]`` 1 where a position is normal (positions that are neither,
        e.g. the rim of a defect, are left out).
      eta: weight of the anomaly term.

    Returns ``mean_normal d + eta * mean_anomalous 1 / (d + eps)``: each term averaged
    over its own positions, since a defect covers a few positions of an image while the
    image-level loss gives the corrupted copies half of the batch.
    """
    d = jnp.asarray(distances)
    return _masked_mean(d, jnp.asarray(normal)) + eta * _masked_mean(1.0 / (d + eps), jnp.asarray(anomalous))
