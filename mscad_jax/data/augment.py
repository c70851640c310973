"""SimCLR-style image augmentations in pure JAX, following CSI (Tack et al., 2020).

All functions act on a single image of shape ``[H, W, C]`` (``C`` = 1 or 3), float32 in
``[0, 1]``, take an explicit PRNG key, keep the input shape, and are safe under ``jax.jit``
and ``jax.vmap``: randomness only ever selects values (``jnp.where`` / ``lax.switch``),
never shapes, so one compiled program serves every draw.

The CSI pipeline is: random resized crop -> horizontal flip -> colour jitter (p=0.8)
-> random grayscale (p=0.2), then the optional Gaussian blur and Gaussian noise. A
1-channel image gets brightness and contrast jitter but no saturation, hue or grayscale
ops; that choice is made statically from the shape, so grayscale datasets never pay for
colour-only ops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "AugmentConfig",
    "augment_batch",
    "augment_image",
    "color_jitter",
    "from_config",
    "gaussian_blur",
    "gaussian_noise",
    "hsv_to_rgb",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "rgb_to_grayscale",
    "rgb_to_hsv",
]

# ITU-R 601-2 luma weights, as used by PIL / torchvision ``Grayscale``.
_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Static augmentation settings (frozen, hence hashable: usable as a jit static arg).

    Attributes:
      crop_scale: range of the crop area as a fraction of the image area.
      flip: whether to apply a random horizontal flip (p = 0.5).
      jitter_strength: (brightness, contrast, saturation, hue) strengths.
      jitter_prob: probability of applying colour jitter (brightness and contrast only
        on 1-channel images).
      grayscale_prob: probability of converting to grayscale (RGB only).
      blur_prob: probability of a Gaussian blur with sigma drawn from `blur_sigma` (in
        pixels); the kernel radius is 5% of the shorter side, at least 1 pixel.
      noise_std: additive Gaussian noise whose std is drawn from U[0, noise_std]; 0 = off.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: float = 0.0


def from_config(section) -> AugmentConfig:
    """The settings of a config's `augment` section (see `mscad_jax.config`)."""
    return AugmentConfig(
        crop_scale=(float(section.crop_scale_min), 1.0), flip=bool(section.flip),
        jitter_strength=tuple(float(v) for v in section.jitter_strength), jitter_prob=float(section.jitter_prob),
        grayscale_prob=float(section.grayscale_prob), blur_prob=float(section.blur_prob),
        blur_sigma=tuple(float(v) for v in section.blur_sigma), noise_std=float(section.noise_std))


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape [H, W, C], got shape {image.shape}")


def _check_rgb(image: jax.Array, what: str) -> None:
    _check_image(image)
    if image.shape[-1] != 3:
        raise ValueError(f"{what} needs an RGB image [H, W, 3], got shape {image.shape}")


# --------------------------------------------------------------------------- geometry


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> jax.Array:
    """Crops a random box and resizes it back to ``H x W`` with bilinear interpolation.

    The box area is ``U(scale) * H * W`` and its aspect ratio (w / h) is log-uniform in
    ``ratio``. Instead of torchvision's rejection loop (data-dependent control flow), box
    sides are clipped to the image, as CSI's ``RandomResizedCropLayer`` does. With
    ``scale=(1, 1)`` and ``ratio=(1, 1)`` on a square image this is the identity.
    """
    _check_image(image)
    h_img, w_img, _ = image.shape
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)

    area = jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1]) * (h_img * w_img)
    log_r = jax.random.uniform(
        k_ratio, (), minval=math.log(ratio[0]), maxval=math.log(ratio[1])
    )
    aspect = jnp.exp(log_r)
    # At least one pixel so the sampling step never collapses to zero.
    box_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w_img)
    box_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h_img)
    y0 = jax.random.uniform(k_y, ()) * (h_img - box_h)
    x0 = jax.random.uniform(k_x, ()) * (w_img - box_w)

    # Half-pixel-centre convention: output pixel i samples the box at its centre, so a
    # full-image box maps pixel i exactly to pixel i (identity crop is exact).
    ys = y0 + (jnp.arange(h_img, dtype=jnp.float32) + 0.5) * (box_h / h_img) - 0.5
    xs = x0 + (jnp.arange(w_img, dtype=jnp.float32) + 0.5) * (box_w / w_img) - 0.5
    grid_y, grid_x = jnp.meshgrid(ys, xs, indexing="ij")

    def sample(channel: jax.Array) -> jax.Array:
        # 'nearest' only matters for the half-pixel fringe at the borders.
        return jax.scipy.ndimage.map_coordinates(
            channel, [grid_y, grid_x], order=1, mode="nearest"
        )

    out = jax.vmap(sample, in_axes=-1, out_axes=-1)(image)
    return out.astype(image.dtype)


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
    """Flips the image horizontally (along W) with probability 0.5."""
    _check_image(image)
    do_flip = jax.random.bernoulli(key, 0.5)
    return jnp.where(do_flip, image[:, ::-1, :], image)


# ------------------------------------------------------------------------------ colour


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
    """Luminance ``0.299 R + 0.587 G + 0.114 B`` with a trailing channel axis: [H, W, 1]."""
    _check_rgb(image, "rgb_to_grayscale")
    weights = jnp.asarray(_LUMA, dtype=image.dtype)
    return jnp.tensordot(image, weights, axes=([-1], [0]))[..., None]


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB -> HSV for values in [0, 1]; all three HSV channels are in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = jnp.max(rgb, axis=-1)
    minc = jnp.min(rgb, axis=-1)
    delta = maxc - minc
    # Safe denominators keep the unused branch of jnp.where finite (no NaNs, even in grads).
    safe_max = jnp.where(maxc > 0, maxc, 1.0)
    safe_delta = jnp.where(delta > 0, delta, 1.0)
    s = jnp.where(maxc > 0, delta / safe_max, 0.0)
    rc = (maxc - r) / safe_delta
    gc = (maxc - g) / safe_delta
    bc = (maxc - b) / safe_delta
    h = jnp.where(r == maxc, bc - gc, jnp.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV -> RGB, inverse of :func:`rgb_to_hsv` (same sector formula as ``colorsys``)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h6 = jnp.mod(h, 1.0) * 6.0
    sector = jnp.floor(h6)
    f = h6 - sector
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    sector = sector.astype(jnp.int32) % 6
    conds = [sector == i for i in range(6)]
    r = jnp.select(conds, [v, q, p, p, t, v])
    g = jnp.select(conds, [t, v, v, q, p, p])
    b = jnp.select(conds, [p, p, t, v, v, q])
    return jnp.stack([r, g, b], axis=-1)


def _adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(image * factor, 0.0, 1.0)


def _adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    # torchvision blends with the mean *grayscale* level, not the per-channel mean.
    mean = jnp.mean(image if image.shape[-1] == 1 else rgb_to_grayscale(image))
    return jnp.clip(mean + factor * (image - mean), 0.0, 1.0)


def _adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    gray = rgb_to_grayscale(image)
    return jnp.clip(gray + factor * (image - gray), 0.0, 1.0)


def _adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
    hsv = rgb_to_hsv(image)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def color_jitter(
    key: jax.Array,
    image: jax.Array,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    random_order: bool = True,
) -> jax.Array:
    """torchvision-style ``ColorJitter`` (always applied; the pipeline draws whether to).

    On a 1-channel image only brightness and contrast apply (the others are colour-only).

    Factors are drawn as in torchvision: brightness / contrast / saturation factors are
    ``U[max(0, 1 - s), 1 + s]`` and the hue shift is ``U[-hue, hue]`` (fraction of a turn).
    With ``random_order`` (default, as torchvision and CSI shuffle the ops) the four ops are
    applied in a random permutation via ``lax.switch``; under ``vmap`` that evaluates every
    op at every step, which is cheap for the small images used here. ``random_order=False``
    uses the fixed order brightness, contrast, saturation, hue. The result is clipped to
    [0, 1] after every op, like torchvision.
    """
    _check_image(image)
    if image.shape[-1] not in (1, 3):
        raise ValueError(f"color_jitter needs a gray or RGB image [H, W, 1 or 3], got shape {image.shape}")
    k_b, k_c, k_s, k_h, k_perm = jax.random.split(key, 5)

    def factor(k: jax.Array, strength: float) -> jax.Array:
        return jax.random.uniform(k, (), minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)

    b = factor(k_b, brightness)
    c = factor(k_c, contrast)
    s = factor(k_s, saturation)
    h = jax.random.uniform(k_h, (), minval=-hue, maxval=hue)
    ops: list[Callable[[jax.Array], jax.Array]] = [
        lambda x: _adjust_brightness(x, b),
        lambda x: _adjust_contrast(x, c),
    ]
    if image.shape[-1] == 3:
        ops += [lambda x: _adjust_saturation(x, s), lambda x: _adjust_hue(x, h)]

    out = image
    if random_order:
        order = jax.random.permutation(k_perm, len(ops))
        for step in range(len(ops)):
            out = lax.switch(order[step], ops, out)
    else:
        for op in ops:
            out = op(out)
    return jnp.clip(out, 0.0, 1.0).astype(image.dtype)


def random_grayscale(key: jax.Array, image: jax.Array, p: float = 0.2) -> jax.Array:
    """With probability ``p`` replaces an RGB image by its luminance copied to 3 channels.

    A 1-channel image is returned unchanged (it is already grayscale).
    """
    _check_image(image)
    if image.shape[-1] == 1:
        return image
    _check_rgb(image, "random_grayscale")
    gray = jnp.broadcast_to(rgb_to_grayscale(image), image.shape)
    return jnp.where(jax.random.bernoulli(key, p), gray, image)


def gaussian_blur(image: jax.Array, sigma: jax.Array | float) -> jax.Array:
    """Separable Gaussian blur with std `sigma` pixels and edge padding.

    The kernel radius is static (5% of the shorter side, at least 1), so a traced
    `sigma` keeps one compiled program.
    """
    _check_image(image)
    h, w, _ = image.shape
    radius = max(1, int(0.05 * min(h, w)))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    weights = weights / weights.sum()
    taps = range(2 * radius + 1)
    rows = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    out = sum(weights[i] * rows[i:i + h] for i in taps)
    cols = jnp.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(weights[i] * cols[:, i:i + w] for i in taps).astype(image.dtype)


def gaussian_noise(key: jax.Array, image: jax.Array, max_std: float) -> jax.Array:
    """Adds N(0, s^2) noise per pixel, with s ~ U[0, max_std] per image; clipped to [0, 1]."""
    k_std, k_noise = jax.random.split(key)
    std = jax.random.uniform(k_std, (), maxval=max_std)
    return jnp.clip(image + std * jax.random.normal(k_noise, image.shape, image.dtype), 0.0, 1.0)


# ----------------------------------------------------------------------------- pipeline


def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """CSI / SimCLR augmentation of one ``[H, W, C]`` image: crop, flip, jitter, grayscale,
    then blur and noise when configured.

    Saturation, hue and grayscale run only when ``C == 3``; this is decided statically, so
    a grayscale image comes back with 1 channel, jittered in brightness and contrast only.
    Ops whose probability or strength is 0 are left out of the program.
    """
    _check_image(image)
    channels = image.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got image shape {image.shape}")
    k_crop, k_flip, k_jit_apply, k_jit, k_gray, k_blur_apply, k_blur, k_noise = jax.random.split(key, 8)

    out = random_resized_crop(k_crop, image, scale=cfg.crop_scale)
    if cfg.flip:
        out = random_flip(k_flip, out)
    if cfg.jitter_prob > 0 and any(cfg.jitter_strength):
        b, c, s, h = cfg.jitter_strength
        jittered = color_jitter(k_jit, out, b, c, s, h)
        out = jnp.where(jax.random.bernoulli(k_jit_apply, cfg.jitter_prob), jittered, out)
    if channels == 3 and cfg.grayscale_prob > 0:
        out = random_grayscale(k_gray, out, cfg.grayscale_prob)
    if cfg.blur_prob > 0:
        sigma = jax.random.uniform(k_blur, (), minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
        out = jnp.where(jax.random.bernoulli(k_blur_apply, cfg.blur_prob), gaussian_blur(out, sigma), out)
    if cfg.noise_std > 0:
        out = gaussian_noise(k_noise, out, cfg.noise_std)
    return jnp.clip(out, 0.0, 1.0).astype(image.dtype)


def augment_batch(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """Augments a batch ``[N, H, W, C]`` with one independent key per example.

    Deterministic in ``key``. Jit it with ``static_argnames="cfg"`` (cfg is hashable).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [N, H, W, C], got shape {images.shape}")
    keys = jax.random.split(key, images.shape[0])
    # cfg is closed over rather than passed through vmap: it is static Python data.
    return jax.vmap(lambda k, x: augment_image(k, x, cfg))(keys, images)
