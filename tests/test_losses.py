"""Tests for mscad_jax.losses against independent float64 NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mscad_jax import losses, ops

RTOL = 1e-5


@pytest.fixture
def x64():
    """Run the test body with 64-bit JAX types enabled."""
    with jax.enable_x64(True):
        yield


def _rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


# ----------------------------------------------------------------------------
# Independent float64 NumPy references (explicit loops).
# ----------------------------------------------------------------------------


def _np_unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_nt_xent(u, v, temperature, mask=None):
    b = u.shape[0]
    z = np.concatenate([_np_unit(u), _np_unit(v)], axis=0)
    n = 2 * b
    mask = np.ones(b, bool) if mask is None else np.asarray(mask, bool)
    terms = []
    for a in range(n):
        if not mask[a % b]:
            continue
        p = (a + b) % n
        s_pos = z[a] @ z[p] / temperature
        denom = sum(np.exp(z[a] @ z[k] / temperature) for k in range(n) if k != a)
        terms.append(-np.log(np.exp(s_pos) / denom))
    return float(np.mean(terms)) if terms else 0.0


def ref_memory_variance(memory):
    n, c = memory.shape
    z = np.sqrt(c) * _np_unit(memory)
    out = 0.0
    for d in range(c):
        col = z[:, d]
        var = np.sum((col - col.mean()) ** 2) / n
        out += max(0.0, 1.0 - np.sqrt(var + 1e-4))
    return out / c


def ref_memory_repulsion(u, v, margin, mask):
    terms = []
    for i in range(u.shape[0]):
        if mask[i]:
            cos = np.dot(u[i], v[i]) / (np.linalg.norm(u[i]) * np.linalg.norm(v[i]))
            terms.append(max(0.0, cos - margin))
    return float(np.mean(terms)) if terms else 0.0


def ref_deep_sad(distances, lab, eta=1.0, eps=1e-6, weights=None):
    b, s = distances.shape
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)
    num = 0.0
    for i in range(b):
        per = 0.0
        for j in range(s):
            d = distances[i, j]
            per += eta / (d + eps) if lab[i] else d
        num += w[i] * per
    return num / max(w.sum(), 1.0)


def _uv(seed, b, d):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)), rng.normal(size=(b, d))


# ----------------------------------------------------------------------------
# l2_normalize
# ----------------------------------------------------------------------------


def test_l2_normalize_unit_norm_and_zero_safe():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    y = ops.l2_normalize(x)
    np.testing.assert_allclose(np.asarray(y), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(ops.l2_normalize(x)))(x)
    assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------
# nt_xent
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize(
    "mask", [None, [True, False, True, True, False, True]], ids=["nomask", "mask"]
)
def test_nt_xent_matches_reference_x64(x64, temperature, mask):
    u, v = _uv(0, 6, 5)
    got = losses.nt_xent(
        jnp.asarray(u), jnp.asarray(v), temperature, None if mask is None else jnp.asarray(mask)
    )
    assert got.dtype == jnp.float64
    assert _rel_err(got, ref_nt_xent(u, v, temperature, mask)) < RTOL


def test_nt_xent_matches_reference_float32():
    u, v = _uv(1, 8, 16)
    mask = np.array([True, True, False, True, True, True, False, True])
    got = losses.nt_xent(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), 0.2, mask)
    assert got.dtype == jnp.float32
    assert _rel_err(got, ref_nt_xent(u, v, 0.2, mask)) < RTOL


def test_nt_xent_masked_pairs_stay_negatives(x64):
    """Masked pairs are not anchors but still enter the other denominators."""
    u, v = _uv(2, 5, 4)
    mask = np.array([True, True, False, True, False])
    full = float(losses.nt_xent(u, v, 0.3, mask))
    subset = float(losses.nt_xent(u[mask], v[mask], 0.3))
    assert abs(full - subset) > 1e-3
    # Moving a masked row changes the loss (it is a negative)...
    u2 = u.copy()
    u2[2] = u[0]
    assert abs(float(losses.nt_xent(u2, v, 0.3, mask)) - full) > 1e-3
    assert _rel_err(losses.nt_xent(u2, v, 0.3, mask), ref_nt_xent(u2, v, 0.3, mask)) < RTOL


def test_nt_xent_all_false_mask_is_zero_with_finite_grad():
    u, v = _uv(3, 4, 3)
    mask = jnp.zeros((4,), bool)
    loss, grads = jax.value_and_grad(losses.nt_xent, argnums=(0, 1))(
        jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), 0.5, mask
    )
    assert float(loss) == 0.0
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g) == 0.0)


def test_nt_xent_batch_of_one_is_zero():
    u, v = _uv(4, 1, 6)
    loss, grads = jax.value_and_grad(losses.nt_xent, argnums=(0, 1))(
        jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), 0.1
    )
    assert abs(float(loss)) < 1e-6
    assert ref_nt_xent(u, v, 0.1) == pytest.approx(0.0, abs=1e-12)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


def test_nt_xent_symmetric_in_u_v(x64):
    u, v = _uv(5, 7, 4)
    mask = np.array([True, False, True, True, True, False, True])
    a = float(losses.nt_xent(u, v, 0.25, mask))
    b = float(losses.nt_xent(v, u, 0.25, mask))
    assert a == pytest.approx(b, rel=1e-12)
    # Sanity: not symmetric under an unrelated change.
    assert float(losses.nt_xent(u, u[::-1], 0.25, mask)) != pytest.approx(a, rel=1e-6)


def test_nt_xent_invariant_to_row_scaling(x64):
    u, v = _uv(6, 6, 5)
    rng = np.random.default_rng(60)
    su = rng.uniform(0.1, 10.0, size=(6, 1))
    sv = rng.uniform(0.1, 10.0, size=(6, 1))
    a = float(losses.nt_xent(u, v, 0.2))
    b = float(losses.nt_xent(u * su, v * sv, 0.2))
    assert a == pytest.approx(b, rel=1e-10)


def test_nt_xent_lower_for_aligned_views(x64):
    rng = np.random.default_rng(7)
    u = rng.normal(size=(8, 6))
    aligned = float(losses.nt_xent(u, u + 0.01 * rng.normal(size=u.shape), 0.2))
    random = float(losses.nt_xent(u, rng.normal(size=u.shape), 0.2))
    assert aligned < random


def test_nt_xent_gradient_matches_finite_differences(x64):
    u, v = _uv(8, 3, 4)
    mask = jnp.array([True, False, True])
    temperature = 0.4

    def f(u, v):
        return losses.nt_xent(u, v, temperature, mask)

    gu, gv = jax.grad(f, argnums=(0, 1))(jnp.asarray(u), jnp.asarray(v))
    h = 1e-6
    for arr, grad, which in ((u, gu, 0), (v, gv, 1)):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += h
            minus[idx] -= h
            args_p = (plus, v) if which == 0 else (u, plus)
            args_m = (minus, v) if which == 0 else (u, minus)
            fd[idx] = (ref_nt_xent(*args_p, temperature, np.asarray(mask))
                       - ref_nt_xent(*args_m, temperature, np.asarray(mask))) / (2 * h)
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-8)
        assert np.max(np.abs(fd)) > 1e-3  # non-trivial gradient


def test_nt_xent_global_batch_with_sharded_inputs():
    """Sharded inputs give the global-batch loss (negatives cross shards)."""
    devices = np.array(jax.devices())
    assert devices.size == 4
    mesh = Mesh(devices, ("data",))
    sharding = NamedSharding(mesh, P("data"))
    u, v = _uv(9, 8, 4)
    mask = np.array([True, True, False, True, True, True, True, False])
    uj = jax.device_put(jnp.asarray(u, jnp.float32), sharding)
    vj = jax.device_put(jnp.asarray(v, jnp.float32), sharding)
    mj = jax.device_put(jnp.asarray(mask), sharding)
    got = jax.jit(losses.nt_xent)(uj, vj, 0.3, mj)
    assert _rel_err(got, ref_nt_xent(u, v, 0.3, mask)) < RTOL


# ----------------------------------------------------------------------------
# memory_variance
# ----------------------------------------------------------------------------


def test_memory_variance_matches_reference(x64):
    rng = np.random.default_rng(10)
    # Few slots -> some coordinates have std < 1, so the hinge is active.
    memory = rng.normal(size=(5, 8)) + 0.5
    ref = ref_memory_variance(memory)
    assert ref > 0.05
    assert _rel_err(losses.memory_variance(memory), ref) < RTOL


def test_memory_variance_float32_matches_reference():
    rng = np.random.default_rng(11)
    memory = rng.normal(size=(6, 10)) + 0.3
    got = losses.memory_variance(jnp.asarray(memory, jnp.float32))
    assert _rel_err(got, ref_memory_variance(memory)) < RTOL


@pytest.mark.parametrize("c", [4, 64])
def test_memory_variance_zero_for_well_spread_memory(c):
    # +/- standard basis: per-coordinate std of sqrt(C)*z is exactly 1 for any C.
    eye = np.eye(c)
    memory = jnp.asarray(np.concatenate([eye, -eye], axis=0), jnp.float32)
    assert float(losses.memory_variance(memory)) == 0.0
    # Many random slots: nearly uniform on the sphere -> hinge near 0.
    rng = np.random.default_rng(c)
    rand = jnp.asarray(rng.normal(size=(4096, c)), jnp.float32)
    assert float(losses.memory_variance(rand)) < 0.05


def test_memory_variance_near_one_for_collapsed_memory():
    row = np.random.default_rng(12).normal(size=(1, 16))
    memory = jnp.asarray(np.repeat(row, 32, axis=0), jnp.float32)
    val = float(losses.memory_variance(memory))
    assert val == pytest.approx(1.0 - np.sqrt(1e-4), abs=1e-3)
    g = jax.grad(losses.memory_variance)(memory)
    assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------
# memory_repulsion
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [-0.5, 0.0, 0.3])
def test_memory_repulsion_matches_reference(x64, margin):
    rng = np.random.default_rng(13)
    u = rng.normal(size=(7, 4))
    v = u + 0.8 * rng.normal(size=(7, 4))
    mask = np.array([True, False, True, True, False, True, False])
    ref = ref_memory_repulsion(u, v, margin, mask)
    assert ref > 0.0
    assert _rel_err(losses.memory_repulsion(u, v, margin, mask), ref) < RTOL


def test_memory_repulsion_zero_without_mask():
    u, v = _uv(14, 5, 3)
    mask = jnp.zeros((5,), bool)
    loss, g = jax.value_and_grad(losses.memory_repulsion)(
        jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), -1.0, mask
    )
    assert float(loss) == 0.0
    assert np.all(np.asarray(g) == 0.0)


def test_memory_repulsion_margin_and_unmasked_rows_ignored():
    theta = np.array([0.2, 1.0, 2.0])
    u = np.tile([[1.0, 0.0]], (3, 1))
    v = np.stack([np.cos(theta), np.sin(theta)], axis=1) * np.array([[2.0], [0.5], [3.0]])
    cos = np.cos(theta)
    mask = np.array([True, True, True])
    # Margin above every cosine -> 0.
    assert float(losses.memory_repulsion(u, v, 0.99, mask)) == 0.0
    # Margin between: only rows with cos > margin contribute.
    margin = 0.5
    expected = np.mean(np.maximum(cos - margin, 0.0))
    assert float(losses.memory_repulsion(u, v, margin, mask)) == pytest.approx(expected, rel=1e-5)
    # Identical views give 1 - margin.
    assert float(losses.memory_repulsion(u, u, 0.25, mask)) == pytest.approx(0.75, rel=1e-6)
    # Changing unmasked rows leaves the loss unchanged.
    m = jnp.array([True, False, True])
    v2 = v.copy()
    v2[1] = u[1]
    a = float(losses.memory_repulsion(u, v, 0.0, m))
    b = float(losses.memory_repulsion(u, v2, 0.0, m))
    assert a == b


# ----------------------------------------------------------------------------
# deep_sad_loss
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_deep_sad_matches_reference(x64, eta):
    rng = np.random.default_rng(15)
    d = rng.uniform(0.0, 3.0, size=(6, 3))
    d[1, 0] = 2e-6  # anomaly close to the centre: eps matters
    d[4, 2] = 0.0
    lab = np.array([False, True, False, False, True, False])
    w = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 2.0])
    ref = ref_deep_sad(d, lab, eta=eta)
    assert _rel_err(losses.deep_sad_loss(d, lab, eta=eta), ref) < RTOL
    refw = ref_deep_sad(d, lab, eta=eta, weights=w)
    assert _rel_err(losses.deep_sad_loss(d, lab, eta=eta, weights=w), refw) < RTOL


def test_deep_sad_equals_svdd_without_anomalies():
    rng = np.random.default_rng(16)
    d = rng.uniform(0.0, 2.0, size=(8, 4)).astype(np.float32)
    lab = np.zeros(8, bool)
    got = float(losses.deep_sad_loss(d, lab))
    assert got == pytest.approx(float(np.mean(np.sum(d.astype(np.float64), axis=1))), rel=RTOL)


def test_deep_sad_anomaly_term_decreases_with_distance():
    ds = jnp.linspace(0.01, 10.0, 20)
    lab = jnp.array([True])
    vals = np.array([float(losses.deep_sad_loss(jnp.full((1, 2), x), lab)) for x in ds])
    assert np.all(np.diff(vals) < 0)
    # Gradient w.r.t. the distance is negative for anomalies, positive for normals.
    g_anom = jax.grad(lambda d: losses.deep_sad_loss(d, lab))(jnp.ones((1, 2)))
    g_norm = jax.grad(lambda d: losses.deep_sad_loss(d, jnp.array([False])))(jnp.ones((1, 2)))
    assert np.all(np.asarray(g_anom) < 0)
    assert np.all(np.asarray(g_norm) > 0)


def test_deep_sad_weights_ignore_padded_rows():
    rng = np.random.default_rng(17)
    d = rng.uniform(0.0, 2.0, size=(5, 3)).astype(np.float32)
    lab = np.array([False, True, False, False, False])
    real = float(losses.deep_sad_loss(d, lab))
    # Pad with garbage rows (huge distances, a near-zero anomaly, an inf).
    pad_d = np.array([[1e6, 1e6, 1e6], [0.0, 0.0, 0.0], [np.inf, 1.0, 1.0]], np.float32)
    pad_lab = np.array([False, True, False])
    dd = np.concatenate([d, pad_d])
    ll = np.concatenate([lab, pad_lab])
    w = np.concatenate([np.ones(5), np.zeros(3)]).astype(np.float32)
    padded = float(losses.deep_sad_loss(dd, ll, weights=w))
    assert padded == pytest.approx(real, rel=1e-6)
    # Without the weights the padding dominates.
    assert float(losses.deep_sad_loss(dd, ll)) > 1e3 * real
    # Default weights equal explicit ones.
    assert float(losses.deep_sad_loss(d, lab, weights=np.ones(5))) == pytest.approx(real)


def test_deep_sad_all_zero_weights_is_zero():
    d = jnp.ones((3, 2))
    assert float(losses.deep_sad_loss(d, jnp.zeros(3, bool), weights=jnp.zeros(3))) == 0.0


# ----------------------------------------------------------------------------
# memory_reconstruction, rotation_cross_entropy
# ----------------------------------------------------------------------------


def ref_memory_reconstruction(deviation, mask):
    terms = []
    for i in range(deviation.shape[0]):
        if mask[i]:
            d = np.asarray(deviation[i], np.float64)
            terms.append(np.mean([[np.dot(d[h, w], d[h, w]) for w in range(d.shape[1])] for h in range(d.shape[0])]))
    return float(np.mean(terms)) if terms else 0.0


def ref_rotation_cross_entropy(logits, labels, mask):
    terms = []
    for i in range(logits.shape[0]):
        if mask[i]:
            row = np.asarray(logits[i], np.float64)
            terms.append(-(row[labels[i]] - np.log(np.sum(np.exp(row)))))
    return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize("mask", [[True, True, True, True], [True, False, False, True]])
def test_memory_reconstruction_matches_reference(x64, mask):
    d = np.random.default_rng(20).normal(size=(4, 3, 2, 5))
    got = losses.memory_reconstruction(jnp.asarray(d), jnp.asarray(mask))
    assert _rel_err(got, ref_memory_reconstruction(d, mask)) < RTOL


def test_memory_reconstruction_empty_mask_is_zero_and_gradient_finite():
    d = jnp.ones((2, 2, 2, 3))
    mask = jnp.zeros(2, bool)
    assert float(losses.memory_reconstruction(d, mask)) == 0.0
    g = jax.grad(lambda x: losses.memory_reconstruction(x, mask))(d)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("mask", [[True] * 5, [False, True, True, False, True]])
def test_rotation_cross_entropy_matches_reference(x64, mask):
    rng = np.random.default_rng(21)
    logits = rng.normal(size=(5, 4)) * 3
    labels = np.array([0, 3, 1, 2, 2])
    got = losses.rotation_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    assert _rel_err(got, ref_rotation_cross_entropy(logits, labels, mask)) < RTOL


def test_rotation_cross_entropy_is_low_for_confident_correct_logits():
    labels = jnp.array([0, 1, 2, 3])
    confident = 20.0 * jax.nn.one_hot(labels, 4)
    assert float(losses.rotation_cross_entropy(confident, labels, jnp.ones(4, bool))) < 1e-6
    wrong = 20.0 * jax.nn.one_hot((labels + 1) % 4, 4)
    assert float(losses.rotation_cross_entropy(wrong, labels, jnp.ones(4, bool))) > 19.0


# ----------------------------------------------------------------------------
# jit
# ----------------------------------------------------------------------------


def test_all_losses_under_jit():
    rng = np.random.default_rng(18)
    u = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    mask = jnp.array([True, False, True, True, False, True])
    mem = jnp.asarray(rng.normal(size=(5, 4)) + 0.5, jnp.float32)
    d = jnp.asarray(rng.uniform(0.1, 2.0, size=(6, 3)), jnp.float32)
    w = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])

    cases = [
        (losses.nt_xent, (u, v, 0.3, mask)),
        (losses.nt_xent, (u, v, jnp.float32(0.3))),
        (losses.memory_variance, (mem,)),
        (losses.memory_repulsion, (u, v, 0.1, mask)),
        (losses.deep_sad_loss, (d, mask, 0.5, 1e-6, w)),
        (losses.memory_reconstruction, (u.reshape(6, 2, 2, 1), mask)),
        (losses.rotation_cross_entropy, (u, jnp.array([0, 1, 2, 3, 0, 1]), mask)),
    ]
    for fn, args in cases:
        eager = fn(*args)
        jitted = jax.jit(fn)(*args)
        assert jitted.shape == ()
        assert np.isfinite(float(jitted))
        np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    # Python-float parameters traced as jit arguments still work.
    jitted = jax.jit(losses.nt_xent)(u, v, 0.3, mask)
    assert _rel_err(jitted, ref_nt_xent(np.asarray(u), np.asarray(v), 0.3, np.asarray(mask))) < RTOL
