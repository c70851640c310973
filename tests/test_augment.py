"""Tests for mscad_jax.data.augment (SimCLR / CSI augmentations)."""

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscad_jax.data import augment as aug

# One jitted entry point shared by tests so the (static) config compiles once per shape.
_jit_batch = jax.jit(aug.augment_batch, static_argnames="cfg")
_CFG = aug.AugmentConfig()


def _images(n: int, h: int, w: int, c: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.RandomState(seed).rand(n, h, w, c).astype(np.float32))


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_batch_shape_dtype_range(channels):
    images = _images(4, 16, 16, channels)
    out = _jit_batch(jax.random.key(0), images, _CFG)
    assert out.shape == images.shape
    assert out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not np.allclose(out, images)


def test_augment_batch_deterministic_per_key():
    images = _images(4, 16, 16, 3)
    a = _jit_batch(jax.random.key(1), images, _CFG)
    b = _jit_batch(jax.random.key(1), images, _CFG)
    c = _jit_batch(jax.random.key(2), images, _CFG)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Identical inputs in one batch still get independent augmentations.
    same = _jit_batch(jax.random.key(1), jnp.stack([images[0]] * 4), _CFG)
    assert not np.allclose(same[0], same[1])


def test_jit_of_vmap_matches_augment_batch():
    images = _images(4, 16, 16, 3)
    key = jax.random.key(3)
    keys = jax.random.split(key, 4)
    manual = jax.jit(jax.vmap(lambda k, x: aug.augment_image(k, x, _CFG)))(keys, images)
    np.testing.assert_allclose(manual, _jit_batch(key, images, _CFG), atol=1e-6)


def test_config_is_hashable_and_frozen():
    cfg = aug.AugmentConfig(crop_scale=(0.2, 1.0))
    assert hash(cfg) == hash(aug.AugmentConfig(crop_scale=(0.2, 1.0)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flip = False  # type: ignore[misc]


def test_grayscale_input_gets_brightness_and_contrast_only():
    gray = _images(1, 16, 16, 1)[0]
    key = jax.random.key(4)
    cfg = dataclasses.replace(_CFG, jitter_prob=1.0)
    out = aug.augment_image(key, gray, cfg)
    assert out.shape == gray.shape
    geometry_only = aug.augment_image(key, gray, dataclasses.replace(cfg, jitter_prob=0.0))
    assert not np.allclose(out, geometry_only)  # brightness / contrast did run
    # Saturation and hue strengths cannot matter for a gray image.
    np.testing.assert_array_equal(out, aug.augment_image(key, gray, dataclasses.replace(
        cfg, jitter_strength=(0.4, 0.4, 0.0, 0.0))))


def test_jitter_off_applies_only_geometry_to_rgb():
    rgb = _images(1, 16, 16, 3)[0]
    key = jax.random.key(5)
    cfg = dataclasses.replace(_CFG, jitter_prob=0.0, grayscale_prob=0.0)
    out = aug.augment_image(key, rgb, cfg)
    # Geometry is per-channel, so each output channel equals augmenting that channel alone.
    for ch in range(3):
        single = aug.augment_image(key, rgb[..., ch : ch + 1], cfg)
        np.testing.assert_allclose(out[..., ch : ch + 1], single, atol=1e-6)


def test_gray_brightness_and_contrast_match_torchvision_formulas():
    gray = _images(1, 8, 8, 1)[0]
    np.testing.assert_allclose(aug._adjust_brightness(gray, 1.3), np.clip(gray * 1.3, 0, 1), atol=1e-6)
    mean = float(np.mean(gray))
    np.testing.assert_allclose(aug._adjust_contrast(gray, 0.5), np.clip(mean + 0.5 * (gray - mean), 0, 1),
                               atol=1e-6)


def test_gaussian_blur_reference_and_invariants():
    image = _images(1, 10, 12, 1)[0]
    sigma = 0.8
    out = np.asarray(aug.gaussian_blur(image, sigma))
    # Reference: the same separable kernel (radius 1 at this size) with edge padding, in float64.
    w = np.exp(-0.5 * (np.arange(-1, 2) / sigma) ** 2)
    w /= w.sum()
    x = np.asarray(image, np.float64)[..., 0]
    rows = np.pad(x, ((1, 1), (0, 0)), mode="edge")
    y = sum(w[i] * rows[i:i + 10] for i in range(3))
    cols = np.pad(y, ((0, 0), (1, 1)), mode="edge")
    ref = sum(w[i] * cols[:, i:i + 12] for i in range(3))
    np.testing.assert_allclose(out[..., 0], ref, atol=1e-6)
    flat = jnp.full((8, 8, 3), 0.3)
    np.testing.assert_allclose(aug.gaussian_blur(flat, 1.5), flat, atol=1e-6)
    # A tiny sigma puts (almost) all weight on the centre tap: the identity.
    np.testing.assert_allclose(aug.gaussian_blur(image, 1e-3), image, atol=1e-6)
    assert float(jnp.abs(jnp.diff(out, axis=1)).mean()) < float(jnp.abs(jnp.diff(image, axis=1)).mean())


def test_gaussian_noise_deterministic_in_key_and_in_range():
    image = _images(1, 8, 8, 1)[0]
    a = aug.gaussian_noise(jax.random.key(1), image, 0.2)
    np.testing.assert_array_equal(a, aug.gaussian_noise(jax.random.key(1), image, 0.2))
    assert not np.allclose(a, aug.gaussian_noise(jax.random.key(2), image, 0.2))
    assert a.shape == image.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(aug.gaussian_noise(jax.random.key(1), image, 0.0), image)


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_and_noise_in_the_pipeline(channels):
    images = _images(4, 16, 16, channels)
    cfg = aug.AugmentConfig(crop_scale=(1.0, 1.0), flip=False, jitter_prob=0.0, grayscale_prob=0.0,
                            blur_prob=1.0, noise_std=0.1)
    a = _jit_batch(jax.random.key(3), images, cfg)
    np.testing.assert_array_equal(a, _jit_batch(jax.random.key(3), images, cfg))
    assert not np.allclose(a, _jit_batch(jax.random.key(4), images, cfg))
    assert a.shape == images.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # The same key draws the same crop with blur and noise off: they are what differs.
    off = _jit_batch(jax.random.key(3), images, dataclasses.replace(cfg, blur_prob=0.0, noise_std=0.0))
    assert not np.allclose(a, off, atol=1e-3)
    assert float(jnp.abs(jnp.diff(off, axis=2)).mean()) != float(jnp.abs(jnp.diff(a, axis=2)).mean())


def test_from_config_reads_every_field():
    from mscad_jax import config as config_lib

    section = config_lib.base_config().stage1.augment
    section.crop_scale_min = 0.3
    section.blur_prob = 0.5
    section.noise_std = 0.05
    cfg = aug.from_config(section)
    assert cfg.crop_scale == (0.3, 1.0) and cfg.blur_prob == 0.5 and cfg.noise_std == 0.05
    assert {f.name for f in dataclasses.fields(cfg)} == {
        "crop_scale", "flip", "jitter_strength", "jitter_prob", "grayscale_prob", "blur_prob", "blur_sigma",
        "noise_std"}


def test_identity_crop():
    image = _images(1, 16, 16, 3)[0]
    out = aug.random_resized_crop(jax.random.key(6), image, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(out, image, atol=1e-5)


def test_crop_fixed_shape_and_zooms():
    image = _images(1, 12, 20, 1)[0]
    crop = jax.jit(jax.vmap(lambda k: aug.random_resized_crop(k, image, scale=(0.1, 0.3))))
    out = crop(jax.random.split(jax.random.key(7), 4))
    assert out.shape == (4, 12, 20, 1)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # A 10-30% crop of noise, upsampled bilinearly, is smoother than the original.
    out_tv = float(jnp.abs(jnp.diff(out, axis=2)).mean())
    assert out_tv < float(jnp.abs(jnp.diff(image, axis=1)).mean())


def test_flip_is_its_own_inverse_and_flips_sometimes():
    image = _images(1, 8, 8, 3)[0]
    keys = jax.random.split(jax.random.key(8), 16)
    once = jax.vmap(aug.random_flip, in_axes=(0, None))(keys, image)
    twice = jax.vmap(aug.random_flip)(keys, once)
    np.testing.assert_array_equal(twice, jnp.broadcast_to(image, twice.shape))
    flipped = [bool(jnp.array_equal(o, image[:, ::-1])) for o in once]
    assert any(flipped) and not all(flipped)


def test_random_grayscale():
    image = _images(1, 8, 8, 3)[0]
    out = aug.random_grayscale(jax.random.key(9), image, p=1.0)
    assert out.shape == image.shape
    np.testing.assert_allclose(out[..., 0], out[..., 1])
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    expected = image @ jnp.asarray([0.299, 0.587, 0.114])
    np.testing.assert_allclose(out[..., 0], expected, atol=1e-6)
    np.testing.assert_array_equal(aug.random_grayscale(jax.random.key(9), image, p=0.0), image)
    gray = image[..., :1]
    np.testing.assert_array_equal(aug.random_grayscale(jax.random.key(9), gray, p=1.0), gray)


def test_hsv_matches_colorsys_and_round_trips():
    rgb = np.random.RandomState(10).rand(32, 3).astype(np.float32)
    rgb[:4] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0.2, 0.9, 0.9]]
    hsv = np.asarray(aug.rgb_to_hsv(jnp.asarray(rgb)))
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-5)
    np.testing.assert_allclose(aug.hsv_to_rgb(jnp.asarray(hsv)), rgb, atol=1e-5)


@pytest.mark.parametrize("random_order", [True, False])
def test_color_jitter(random_order):
    image = _images(1, 8, 8, 3)[0]
    key = jax.random.key(11)
    out = aug.color_jitter(key, image, 0.4, 0.4, 0.4, 0.1, random_order=random_order)
    assert out.shape == image.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not np.allclose(out, image)
    # Zero strengths draw factor 1 / shift 0 for every op: identity up to HSV round-off.
    still = aug.color_jitter(key, image, 0.0, 0.0, 0.0, 0.0, random_order=random_order)
    np.testing.assert_allclose(still, image, atol=1e-5)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="channels"):
        aug.augment_image(jax.random.key(0), jnp.zeros((8, 8, 2)), _CFG)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        aug.augment_batch(jax.random.key(0), jnp.zeros((8, 8, 3)), _CFG)
    with pytest.raises(ValueError, match="gray or RGB"):
        aug.color_jitter(jax.random.key(0), jnp.zeros((8, 8, 2)))
