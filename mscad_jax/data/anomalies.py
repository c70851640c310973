"""Synthetic anomalies for the ``style`` and ``local`` protocols, in pure JAX.

Style corruptions change the whole image the way CIFAR-10-C does (Hendrycks & Dietterich,
2019), with the CIFAR-10-C parameters for severities 1..5; spatial parameters (blur sigma)
are scaled by ``max(1, min(H, W) / 32)`` so that larger images get a comparable effect.
``severity`` and ``name`` are static Python values: they pick parameters and kernel sizes,
which fixes shapes at trace time.

Local anomalies corrupt a small region and also return its mask, float32 ``[H, W]`` in
{0, 1}: CutPaste (Li et al., 2021) ``cutpaste_patch`` and ``scar``. Regions are drawn from
coordinate grids (``jnp.where`` on comparisons), never from dynamic slices with traced
sizes, so every function is jit/vmap-friendly with fixed output shapes. Pixels outside
the mask are returned bit-for-bit unchanged.

Images are ``[H, W, C]`` float32 in [0, 1] with ``C`` = 1 or 3; outputs stay in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mscad_jax.data.augment import hsv_to_rgb, rgb_to_hsv

__all__ = [
    "LOCAL_ANOMALIES",
    "append_synthetic_anomalies",
    "label_masks",
    "box_downsample_matrix",
    "SYNTHETIC_ANOMALIES",
    "STYLE_CORRUPTIONS",
    "brightness",
    "contrast",
    "cutpaste_patch",
    "gaussian_blur",
    "gaussian_noise",
    "local_anomaly",
    "local_anomaly_batch",
    "pixelate",
    "scar",
    "style_corrupt",
    "style_corrupt_batch",
    "synthetic_anomalies",
]

StyleFn = Callable[[jax.Array, jax.Array, int], jax.Array]
LocalFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

SEVERITIES = (1, 2, 3, 4, 5)

# CIFAR-10-C parameters (Hendrycks' make_cifar_c.py), indexed by severity - 1.
_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # in pixels at 32 x 32
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected an image of shape [H, W, C] with C in (1, 3), got {image.shape}"
        )


def _check_severity(severity: int) -> None:
    # bool is an int subclass; a traced array cannot choose kernel sizes, so reject both.
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise ValueError(
            f"severity must be a Python int in {SEVERITIES} (static), got {severity!r}"
        )
    if int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")


# ---------------------------------------------------------------------- style corruptions


def gaussian_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
    """Adds i.i.d. N(0, std^2) noise, std = 0.04..0.10 for severity 1..5, then clips."""
    _check_image(image)
    _check_severity(severity)
    std = _NOISE_STD[int(severity) - 1]
    noise = jax.random.normal(key, image.shape, dtype=image.dtype) * std
    return jnp.clip(image + noise, 0.0, 1.0)


def _gaussian_kernel1d(sigma: float) -> np.ndarray:
    # truncate = 4 sigma, as scipy/skimage (which CIFAR-10-C used) do by default.
    radius = max(1, int(math.ceil(4.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _conv1d_edge(image: jax.Array, kernel: np.ndarray, axis: int) -> jax.Array:
    """Convolves along ``axis`` with a small static kernel, edge-replicated borders.

    A sum of shifted slices is used instead of lax.conv: the kernel is tiny and static,
    and this stays trivially jit/vmap-able for any channel count.
    """
    radius = (len(kernel) - 1) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    # 'edge' matches skimage.filters.gaussian's default mode='nearest'.
    padded = jnp.pad(image, pad, mode="edge")
    n = image.shape[axis]
    out = jnp.zeros_like(image)
    for i, w in enumerate(kernel):
        out = out + float(w) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
    return out


def gaussian_blur(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
    """Separable Gaussian blur, sigma = (0.4..1.0) * max(1, min(H, W) / 32), severity 1..5.

    ``key`` is unused (the corruption is deterministic) but kept for a uniform signature.
    """
    del key
    _check_image(image)
    _check_severity(severity)
    # Scale up for larger images only: below 32 px the CIFAR sigmas (0.4 px) would shrink
    # to a numerical no-op.
    sigma = _BLUR_SIGMA[int(severity) - 1] * max(1.0, min(image.shape[:2]) / 32.0)
    kernel = _gaussian_kernel1d(sigma)
    out = _conv1d_edge(image, kernel, axis=0)
    out = _conv1d_edge(out, kernel, axis=1)
    return jnp.clip(out, 0.0, 1.0)


def contrast(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
    """Shrinks each channel towards its spatial mean by factor 0.75..0.15 (severity 1..5)."""
    del key
    _check_image(image)
    _check_severity(severity)
    c = _CONTRAST[int(severity) - 1]
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    return jnp.clip((image - mean) * c + mean, 0.0, 1.0)


def brightness(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
    """Adds 0.05..0.3 (severity 1..5) to the HSV value channel (to the intensity if gray)."""
    del key
    _check_image(image)
    _check_severity(severity)
    c = _BRIGHTNESS[int(severity) - 1]
    if image.shape[-1] == 1:
        return jnp.clip(image + c, 0.0, 1.0)
    # Brightening V (not RGB) keeps hue and saturation, as in CIFAR-10-C.
    hsv = rgb_to_hsv(image)
    hsv = hsv.at[..., 2].set(jnp.clip(hsv[..., 2] + c, 0.0, 1.0))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0).astype(image.dtype)


def box_downsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] area-averaging weights: PIL's BOX filter for a downscale (each output
    cell averages the input it covers, fractional edges weighted by their overlap)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    left = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, left + 1) - np.maximum(lo, left), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def pixelate(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
    """Box-downsamples to ``factor * size`` (0.95..0.65) and upsamples back with nearest."""
    del key
    _check_image(image)
    _check_severity(severity)
    c = _PIXELATE[int(severity) - 1]
    h, w, _ = image.shape
    # At least one pixel less than the input, or pixelate would be a no-op on tiny images.
    h_small = max(1, min(h - 1, int(h * c)))
    w_small = max(1, min(w - 1, int(w * c)))
    down_h = jnp.asarray(box_downsample_matrix(h, h_small))
    down_w = jnp.asarray(box_downsample_matrix(w, w_small))
    small = jnp.einsum("ah,hwc,bw->abc", down_h, image, down_w)
    # Nearest upsampling with half-pixel centres: static index tables, a plain gather.
    idx_h = np.minimum(((np.arange(h) + 0.5) * h_small / h).astype(np.int32), h_small - 1)
    idx_w = np.minimum(((np.arange(w) + 0.5) * w_small / w).astype(np.int32), w_small - 1)
    out = small[idx_h][:, idx_w]
    return jnp.clip(out, 0.0, 1.0).astype(image.dtype)


STYLE_CORRUPTIONS: dict[str, StyleFn] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "pixelate": pixelate,
}


def _style_fn(name: str) -> StyleFn:
    if name not in STYLE_CORRUPTIONS:
        raise ValueError(
            f"unknown style corruption {name!r}; allowed: {sorted(STYLE_CORRUPTIONS)}"
        )
    return STYLE_CORRUPTIONS[name]


def style_corrupt(key: jax.Array, image: jax.Array, name: str, severity: int) -> jax.Array:
    """Applies the style corruption ``name`` (see ``STYLE_CORRUPTIONS``) at ``severity`` 1..5.

    ``name`` and ``severity`` must be static (mark them static when jitting).
    """
    fn = _style_fn(name)
    _check_severity(severity)
    return fn(key, image, int(severity))


def style_corrupt_batch(
    key: jax.Array, images: jax.Array, name: str, severity: int
) -> jax.Array:
    """Batched :func:`style_corrupt` over ``[N, H, W, C]``, one key per example."""
    fn = _style_fn(name)
    _check_severity(severity)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [N, H, W, C], got {images.shape}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: fn(k, x, int(severity)))(keys, images)


# ------------------------------------------------------------------------ local anomalies


def cutpaste_patch(
    key: jax.Array,
    image: jax.Array,
    area_frac: tuple[float, float] = (0.02, 0.15),
    aspect: tuple[float, float] = (0.3, 3.3),
    shift: tuple[float, float] = (0.1, 0.25),
) -> tuple[jax.Array, jax.Array]:
    """CutPaste: copies a random rectangle to another random location.

    The rectangle covers ``U(area_frac)`` of the image with a log-uniform aspect ratio in
    ``aspect``. The pasted patch gets a per-channel intensity shift of ``U(shift)``, with
    one sign pointing away from the closer end of [0, 1] given the patch mean, so that the
    pasted region differs from what it covers even when source and target coincide or
    the image is flat.

    Returns:
      (image, mask): the corrupted image and the float32 [H, W] mask of the pasted box.
    """
    _check_image(image)
    h, w, c = image.shape
    k_area, k_ratio, k_sy, k_sx, k_ty, k_tx, k_shift = jax.random.split(key, 7)

    area = jax.random.uniform(k_area, (), minval=area_frac[0], maxval=area_frac[1]) * (h * w)
    ratio = jnp.exp(
        jax.random.uniform(k_ratio, (), minval=math.log(aspect[0]), maxval=math.log(aspect[1]))
    )
    # Patch sides are traced integers; >= 1 so the mask is never empty.
    ph = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, h).astype(jnp.int32)
    pw = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, w).astype(jnp.int32)
    # randint accepts traced bounds; the range keeps the whole box inside the image.
    sy = jax.random.randint(k_sy, (), 0, h - ph + 1)
    sx = jax.random.randint(k_sx, (), 0, w - pw + 1)
    ty = jax.random.randint(k_ty, (), 0, h - ph + 1)
    tx = jax.random.randint(k_tx, (), 0, w - pw + 1)

    ys = jnp.arange(h)
    xs = jnp.arange(w)
    in_y = (ys >= ty) & (ys < ty + ph)
    in_x = (xs >= tx) & (xs < tx + pw)
    mask = in_y[:, None] & in_x[None, :]
    # Every output pixel looks up its would-be source pixel; only those inside the
    # target box are kept, so the gather has a fixed [H, W] shape whatever the box size.
    src_y = jnp.clip(ys - ty + sy, 0, h - 1)
    src_x = jnp.clip(xs - tx + sx, 0, w - 1)
    patch = image[src_y][:, src_x]

    maskf = mask.astype(image.dtype)
    patch_mean = jnp.sum(patch * maskf[..., None]) / (jnp.sum(maskf) * c)
    sign = jnp.where(patch_mean > 0.5, -1.0, 1.0)
    delta = jax.random.uniform(k_shift, (c,), minval=shift[0], maxval=shift[1])
    patch = jnp.clip(patch + sign * delta, 0.0, 1.0)

    out = jnp.where(mask[..., None], patch, image).astype(image.dtype)
    return out, mask.astype(jnp.float32)


def scar(
    key: jax.Array,
    image: jax.Array,
    width_px: tuple[float, float] = (2.0, 4.0),
    length_frac: tuple[float, float] = (0.10, 0.25),
    max_angle_deg: float = 45.0,
) -> tuple[jax.Array, jax.Array]:
    """Scar: a thin rotated rectangle filled with a uniform random colour.

    The "Scar" of CutPaste's comparisons (Li et al., 2021), not its CutPaste-scar, which
    fills the rectangle with a patch of the image. A random grey close to the pixels it
    covers changes almost nothing: on Fashion-MNIST a quarter of the scars change their
    pixels by less than 0.2 on average (`experiments/local_visibility.py`).

    Width is ``U(width_px)`` pixels at 32 x 32, scaled by ``min(H, W) / 32`` (at least
    one pixel); length is ``U(length_frac) * min(H, W)``; the angle is uniform in
    ``[-max_angle_deg, max_angle_deg]``. The centre is an integer pixel, which always
    lies inside the rectangle, so the mask is never empty.

    Returns:
      (image, mask): the corrupted image and the float32 [H, W] scar mask.
    """
    _check_image(image)
    h, w, c = image.shape
    side = min(h, w)
    k_w, k_len, k_ang, k_cy, k_cx, k_col = jax.random.split(key, 6)

    scale = side / 32.0
    width = jnp.maximum(
        jax.random.uniform(k_w, (), minval=width_px[0], maxval=width_px[1]) * scale, 1.0
    )
    length = jax.random.uniform(k_len, (), minval=length_frac[0], maxval=length_frac[1]) * side
    angle = jnp.deg2rad(jax.random.uniform(k_ang, (), minval=-max_angle_deg, maxval=max_angle_deg))
    # Static margin from the longest possible half-length keeps most scars whole; capped
    # so tiny images still have a valid range.
    margin_y = min(int(length_frac[1] * side / 2), (h - 1) // 2)
    margin_x = min(int(length_frac[1] * side / 2), (w - 1) // 2)
    cy = jax.random.randint(k_cy, (), margin_y, h - margin_y)
    cx = jax.random.randint(k_cx, (), margin_x, w - margin_x)

    yy, xx = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    dy = (yy - cy).astype(jnp.float32)
    dx = (xx - cx).astype(jnp.float32)
    # Coordinates along (u) and across (v) the scar's axis.
    u = dx * jnp.cos(angle) + dy * jnp.sin(angle)
    v = -dx * jnp.sin(angle) + dy * jnp.cos(angle)
    mask = (jnp.abs(u) <= length / 2) & (jnp.abs(v) <= width / 2)

    colour = jax.random.uniform(k_col, (c,), dtype=image.dtype)
    out = jnp.where(mask[..., None], colour, image).astype(image.dtype)
    return out, mask.astype(jnp.float32)


LOCAL_ANOMALIES: dict[str, LocalFn] = {
    "cutpaste": cutpaste_patch,
    "scar": scar,
}


def _local_fn(kind: str) -> LocalFn:
    if kind not in LOCAL_ANOMALIES:
        raise ValueError(f"unknown local anomaly kind {kind!r}; allowed: {tuple(LOCAL_ANOMALIES)}")
    return LOCAL_ANOMALIES[kind]


def local_anomaly(key: jax.Array, image: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
    """Applies the local anomaly ``kind`` ('cutpaste' or 'scar'); returns (image, mask)."""
    return _local_fn(kind)(key, image)


def local_anomaly_batch(
    key: jax.Array, images: jax.Array, kind: str
) -> tuple[jax.Array, jax.Array]:
    """Batched :func:`local_anomaly`: ``[N, H, W, C]`` -> (images, masks ``[N, H, W]``)."""
    fn = _local_fn(kind)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [N, H, W, C], got {images.shape}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(fn)(keys, images)


# Synthetic anomalies that a training step can add to its batch as labelled anomalies.
SYNTHETIC_ANOMALIES = (*LOCAL_ANOMALIES, "rotation")


def _pick(candidates: Sequence[jax.Array], choice: jax.Array) -> jax.Array:
    """Row i of candidates[choice[i]], for candidates of the same shape [N, ...]."""
    stacked = jnp.stack(candidates)
    return jnp.take_along_axis(stacked, choice.reshape((1, -1) + (1,) * (stacked.ndim - 2)), axis=0)[0]


def synthetic_anomalies(key: jax.Array, images: jax.Array, kinds: Sequence[str]) -> tuple[jax.Array, jax.Array]:
    """One corrupted copy of every image [N, H, W, C], its kind drawn uniformly from
    `kinds`: a local anomaly (cutpaste, scar) or a rotation by 90, 180 or 270 degrees;
    and where each copy is corrupted, float32 [N, H, W] (a rotation: everywhere)."""
    k_kind, k_rotation, k_local = jax.random.split(key, 3)
    candidates, masks = [], []
    for kind in kinds:
        if kind == "rotation":
            rotated = jnp.stack([jnp.rot90(images, r, axes=(1, 2)) for r in (1, 2, 3)])
            pick = jax.random.randint(k_rotation, (images.shape[0],), 0, 3)
            candidates.append(_pick(list(rotated), pick))
            masks.append(jnp.ones(images.shape[:3], jnp.float32))
        else:
            copies, mask = local_anomaly_batch(jax.random.fold_in(k_local, len(candidates)), images, kind)
            candidates.append(copies)
            masks.append(mask)
    choice = jax.random.randint(k_kind, (images.shape[0],), 0, len(candidates))
    return _pick(candidates, choice), _pick(masks, choice)


def append_synthetic_anomalies(key: jax.Array, images: jax.Array, labelled: jax.Array,
                               kinds: Sequence[str]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The batch with one corrupted copy of every image appended (`synthetic_anomalies`),
    each copy flagged as a labelled anomaly, and where each row is anomalous (a labelled
    anomaly of the batch: everywhere; a normal image: nowhere):
    ([2N, H, W, C], [2N], float32 [2N, H, W])."""
    copies, masks = synthetic_anomalies(key, images, kinds)
    return (jnp.concatenate([images, copies]), jnp.concatenate([labelled, jnp.ones_like(labelled)]),
            jnp.concatenate([label_masks(labelled, images.shape[1:3]), masks]))


def label_masks(labelled: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Where each image is anomalous, float32 [N, H, W], from image labels [N]: a labelled
    anomaly everywhere, a normal image nowhere."""
    return jnp.broadcast_to(labelled.astype(jnp.float32)[:, None, None], (labelled.shape[0], *size))
