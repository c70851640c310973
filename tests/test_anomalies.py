"""Tests for mscad_jax.data.anomalies (style corruptions and local anomalies)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscad_jax.data import anomalies as anom

_jit_style_batch = jax.jit(anom.style_corrupt_batch, static_argnames=("name", "severity"))
_jit_local_batch = jax.jit(anom.local_anomaly_batch, static_argnames="kind")


def _images(n: int, h: int, w: int, c: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.RandomState(seed).rand(n, h, w, c).astype(np.float32))


# ------------------------------------------------------------------------ style


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(anom.STYLE_CORRUPTIONS))
def test_style_corruption_shape_range_change_determinism(name, channels):
    image = _images(1, 16, 16, channels)[0]
    key = jax.random.key(0)
    out = anom.style_corrupt(key, image, name, 3)
    assert out.shape == image.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(jnp.mean(jnp.abs(out - image))) > 1e-3
    np.testing.assert_array_equal(out, anom.style_corrupt(key, image, name, 3))


@pytest.mark.parametrize("name", ["gaussian_noise", "gaussian_blur", "contrast", "brightness"])
def test_style_severity_monotone(name):
    image = _images(1, 16, 16, 3, seed=1)[0]
    key = jax.random.key(1)
    diffs = [
        float(jnp.mean(jnp.abs(anom.style_corrupt(key, image, name, s) - image)))
        for s in anom.SEVERITIES
    ]
    assert diffs[0] > 0
    assert all(a < b for a, b in zip(diffs, diffs[1:])), diffs


def test_style_corrupt_batch():
    images = _images(4, 8, 8, 3)
    out = _jit_style_batch(jax.random.key(2), images, name="gaussian_noise", severity=5)
    assert out.shape == images.shape
    again = _jit_style_batch(jax.random.key(2), images, name="gaussian_noise", severity=5)
    np.testing.assert_array_equal(out, again)
    other = _jit_style_batch(jax.random.key(3), images, name="gaussian_noise", severity=5)
    assert not np.allclose(out, other)
    # Per-example keys: the noise differs between identical inputs.
    twins = jnp.stack([images[0]] * 2)
    same = _jit_style_batch(jax.random.key(2), twins, name="gaussian_noise", severity=5)
    assert not np.allclose(same[0], same[1])


def test_pixelate_is_blockwise_constant():
    image = _images(1, 20, 20, 1)[0]
    out = anom.pixelate(jax.random.key(0), image, 5)  # 20 -> 13 px, then nearest back
    n_unique_rows = len({tuple(np.asarray(r).ravel()) for r in out})
    assert n_unique_rows == 13


def test_style_bad_name_and_severity_rejected():
    image = jnp.zeros((8, 8, 3))
    with pytest.raises(ValueError) as err:
        anom.style_corrupt(jax.random.key(0), image, "fog", 1)
    for allowed in anom.STYLE_CORRUPTIONS:
        assert allowed in str(err.value)
    for bad in (0, 6, True, 2.0):
        with pytest.raises(ValueError, match="severity"):
            anom.style_corrupt(jax.random.key(0), image, "contrast", bad)
    with pytest.raises(ValueError, match="allowed"):
        anom.style_corrupt_batch(jax.random.key(0), image[None], "fog", 1)


# ------------------------------------------------------------------------ local


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["cutpaste", "scar"])
def test_local_anomaly_batch(kind, channels):
    images = _images(8, 16, 16, channels, seed=4)
    out, masks = _jit_local_batch(jax.random.key(5), images, kind=kind)
    assert out.shape == images.shape and out.dtype == jnp.float32
    assert masks.shape == (8, 16, 16) and masks.dtype == jnp.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert np.all(masks.sum(axis=(1, 2)) >= 1)
    inside = masks[..., None] > 0
    # Outside the mask: bit-for-bit unchanged.
    np.testing.assert_array_equal(jnp.where(inside, 0.0, out), jnp.where(inside, 0.0, images))
    # Inside: every masked pixel differs (random-noise input, so no accidental equality).
    changed = jnp.any(out != images, axis=-1)
    assert bool(jnp.all(changed == (masks > 0)))
    # Deterministic per key, different across keys.
    out2, masks2 = _jit_local_batch(jax.random.key(5), images, kind=kind)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(masks, masks2)
    _, masks3 = _jit_local_batch(jax.random.key(6), images, kind=kind)
    assert not np.array_equal(masks, masks3)


def test_cutpaste_mask_is_a_rectangle_of_bounded_area():
    images = _images(8, 32, 32, 3, seed=7)
    out, masks = _jit_local_batch(jax.random.key(8), images, kind="cutpaste")
    for m in np.asarray(masks):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # the mask fills its bounding box
        # 2%-15% of 1024 px, with slack for rounding each side.
        assert 10 <= m.sum() <= 0.15 * 1024 * 1.3


def test_cutpaste_changes_flat_image():
    flat = jnp.full((16, 16, 3), 0.5, jnp.float32)
    out, mask = anom.cutpaste_patch(jax.random.key(9), flat)
    assert float(mask.sum()) >= 1
    assert bool(jnp.all(jnp.any(out != flat, axis=-1) == (mask > 0)))


def test_scar_is_thin():
    image = _images(1, 32, 32, 3)[0]
    keys = jax.random.split(jax.random.key(10), 8)
    _, masks = jax.jit(jax.vmap(anom.scar, in_axes=(0, None)))(keys, image)
    area = np.asarray(masks).sum(axis=(1, 2))
    # At most ~4 px wide x 25% of 32 px long (plus rasterisation slack).
    assert np.all(area >= 1) and np.all(area <= 4 * 8 * 1.6)


def test_local_anomaly_single_and_bad_kind():
    image = _images(1, 8, 8, 1)[0]
    out, mask = anom.local_anomaly(jax.random.key(11), image, "scar")
    assert out.shape == image.shape and mask.shape == (8, 8)
    with pytest.raises(ValueError) as err:
        anom.local_anomaly(jax.random.key(0), image, "blob")
    assert "cutpaste" in str(err.value) and "scar" in str(err.value)
    with pytest.raises(ValueError, match="scar"):
        anom.local_anomaly_batch(jax.random.key(0), image[None], "blob")
