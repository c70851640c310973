"""The patch kNN for local anomalies, a baseline measured beside a finished run (not
part of the exported score): each position of a feature map (or of the raw image)
against the same place in its nearest normal training images (SPADE), measured by the
distance to the closest, by a ridge reconstruction out of them, or by one ridge
reconstruction of the whole map; or against a bank of patches from anywhere (PatchCore).

Moved out of the library by issue 25: its bank is every normal training image's feature
map, which no exported artifact can carry. Results: experiments/results/fashion_mnist_local.md.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/patch_knn.py --workdir=W \
      --distance=image_ridge --window=2 --weights=1,0,0 --neighbours_on=same --pixels=1.0

`--workdir` is a finished run of an `anomaly_type=local` config (its config.json is read);
it prints the image AUROC of the worst position and the pixel AUROC of the maps.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
from scipy import ndimage
from sklearn.neighbors import NearestNeighbors

DISTANCES = ("ridge", "image_ridge", "nearest")
# The distances that reconstruct from the neighbours (and so take a penalty and a window).
RIDGE_DISTANCES = ("ridge", "image_ridge")
METRICS = ("cosine", "euclidean")
# Held-out normal training images that give the patch kNN's normal statistics.
MAX_HELD_OUT = 1000
# The name of the raw [0, 1] image when it is scored as one more map.
PIXELS = "pixels"
# The pixel map's ridge penalty (local_pixel_baseline.py measured 0.1 against 1.0).
PIXEL_RIDGE_PENALTY = 0.1


def nearest_rows(bank: np.ndarray, queries: np.ndarray | None, k: int,
                 metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Distances and bank indices, [Q, k] each, of every query row's `k` nearest bank
    rows, nearest first (`queries=None`: the bank against itself, each row left out)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    bank = np.asarray(bank, np.float32).reshape(len(bank), -1)
    available = len(bank) - (1 if queries is None else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs 1..{available} bank rows to compare against, the bank holds {len(bank)}")
    search = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(bank)
    if queries is None:
        return search.kneighbors()  # scikit-learn leaves each bank row out of its own search
    return search.kneighbors(np.asarray(queries, np.float32).reshape(len(queries), -1))


def _shifted_maps(maps: np.ndarray, radius: int) -> list[np.ndarray]:
    """maps [..., H, W, C] moved by every offset of at most `radius` along each axis: a list
    of (2 radius + 1)^2 arrays of the same shape. Edge padding repeats border positions, so
    a shift never brings in zeros."""
    h, w = maps.shape[-3:-1]
    pad = [(0, 0)] * (maps.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)]
    padded = np.pad(maps, pad, mode="edge")
    side = 2 * radius + 1
    return [padded[..., dy:dy + h, dx:dx + w, :] for dy in range(side) for dx in range(side)]


def aligned_patch_distance(bank_maps: np.ndarray, query_maps: np.ndarray, neighbours: np.ndarray,
                           radius: int = 0, metric: str = "cosine", chunk: int = 128) -> np.ndarray:
    """[Q, H, W] distance (`metric`) of each query position to the closest position, at
    most `radius` away along each axis, of the maps of its neighbour images.

    bank_maps [N, H, W, C] and query_maps [Q, H, W, C] are feature maps; neighbours [Q, K]
    indexes bank_maps. Comparing a position only with the same place in similar normal
    images (SPADE) keeps what a position-free patch bank loses: a patch that is normal
    somewhere in a T-shirt can still be wrong where it is.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    cosine = metric == "cosine"
    unit = lambda x: np.asarray(x, np.float32) / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    bank, queries = (unit(bank_maps), unit(query_maps)) if cosine else (np.asarray(bank_maps, np.float32),
                                                                       np.asarray(query_maps, np.float32))
    _check_shapes(bank, queries, neighbours)
    out = np.empty(queries.shape[:3], np.float32)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        best = np.full(q.shape[:3], np.inf, np.float32)
        for k in range(neighbours.shape[1]):
            for other in _shifted_maps(bank[neighbours[start:start + chunk, k]], radius):
                distance = 1.0 - np.einsum("qhwc,qhwc->qhw", q, other) if cosine \
                    else np.sum((q - other) ** 2, axis=-1)
                best = np.minimum(best, distance)
        out[start:start + chunk] = best if cosine else np.sqrt(best)
    return out


def _window_norm(residual: np.ndarray, window: int) -> np.ndarray:
    """[B, H, W, C] signed residual -> [B, H, W] norm of its mean over the `window` x
    `window` positions around each one (scipy's uniform filter: for an even window, one
    more position before than after), zeros beyond the border."""
    if window > 1:
        residual = ndimage.uniform_filter(residual, size=(1, window, window, 1), mode="constant")
    return np.linalg.norm(residual, axis=-1)


def _check_shapes(bank: np.ndarray, queries: np.ndarray, neighbours: np.ndarray) -> None:
    if neighbours.shape[0] != len(queries) or bank.shape[1:] != queries.shape[1:]:
        raise ValueError(f"maps {bank.shape} and {queries.shape} with neighbours {neighbours.shape} do not match")


def _check_ridge(bank: np.ndarray, queries: np.ndarray, neighbours: np.ndarray, penalty: float, window: int) -> None:
    if not penalty > 0:
        raise ValueError(f"penalty={penalty} must be > 0")
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    _check_shapes(bank, queries, neighbours)


def _ridge_leftover(basis: np.ndarray, target: np.ndarray, penalty: float) -> np.ndarray:
    """target - B^T a for a = argmin ||target - B^T a||^2 + penalty ||a||^2, that is
    (B B^T + penalty I)^-1 B target, batched: basis B [..., R, D], target [..., D, 1]."""
    gram = basis @ np.swapaxes(basis, -1, -2) + penalty * np.eye(basis.shape[-2], dtype=basis.dtype)
    return target - np.swapaxes(basis, -1, -2) @ np.linalg.solve(gram, basis @ target)


def aligned_ridge_residual(bank_maps: np.ndarray, query_maps: np.ndarray, neighbours: np.ndarray,
                           penalty: float, radius: int = 0, window: int = 1, chunk: int = 32) -> np.ndarray:
    """[Q, H, W] Euclidean norm of what is left of each query position after its ridge
    reconstruction from the positions, at most `radius` away along each axis, of the same
    place in its K neighbour images (the signed residual averaged over `window` x `window`
    positions first, `_window_norm`).

    With those R = K (2 radius + 1)^2 vectors as the rows of B [R, C] and the query vector
    q [C], the coefficients are argmin_a ||q - B^T a||^2 + penalty ||a||^2, that is
    (B B^T + penalty I)^-1 B q. bank_maps [N, H, W, C], query_maps [Q, H, W, C]; neighbours
    [Q, K] indexes bank_maps. On Fashion-MNIST local anomalies it separates better than
    the distance to the nearest such position (`aligned_patch_distance`): a normal place
    is largely a blend of the same place in similar images, a pasted patch is not.
    """
    bank = np.asarray(bank_maps, np.float32)
    queries = np.asarray(query_maps, np.float32)
    _check_ridge(bank, queries, neighbours, penalty, window)
    out = np.empty(queries.shape[:3], np.float32)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk, :, :, :, None]  # [B, H, W, C, 1]
        shifted = _shifted_maps(bank[neighbours[start:start + chunk]], radius)  # each [B, K, H, W, C]
        basis = np.moveaxis(np.concatenate(shifted, axis=1), 1, 3)  # [B, H, W, R, C]
        out[start:start + chunk] = _window_norm(_ridge_leftover(basis, q, penalty)[..., 0], window)
    return out


def image_ridge_residual(bank_maps: np.ndarray, query_maps: np.ndarray, neighbours: np.ndarray,
                         penalty: float, window: int = 1, chunk: int = 64) -> np.ndarray:
    """[Q, H, W] Euclidean norm, at each position, of what is left of the query map after
    one ridge reconstruction of the whole map out of its K neighbour maps (coefficients
    shared by all positions), the signed residual averaged over `window` x `window`
    positions first (`_window_norm`).

    With the flattened neighbour maps as the rows of B [K, H W C] and the flattened query
    q, the coefficients are (B B^T + penalty I)^-1 B q. bank_maps [N, H, W, C], query_maps
    [Q, H, W, C]; neighbours [Q, K] indexes bank_maps. On raw Fashion-MNIST pixels with a
    5 x 5 window it finds cutpastes (a box shifted in intensity) at 90 image AUROC.
    """
    bank = np.asarray(bank_maps, np.float32)
    queries = np.asarray(query_maps, np.float32)
    _check_ridge(bank, queries, neighbours, penalty, window)
    out = np.empty(queries.shape[:3], np.float32)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        basis = bank[neighbours[start:start + chunk]].reshape(len(q), neighbours.shape[1], -1)  # [B, K, D]
        leftover = _ridge_leftover(basis, q.reshape(len(q), -1, 1), penalty)
        out[start:start + chunk] = _window_norm(leftover.reshape(q.shape), window)
    return out


def aligned_map(distance: str, bank_maps: np.ndarray, query_maps: np.ndarray, neighbours: np.ndarray,
                radius: int = 0, penalty: float = 1.0, window: int = 1, metric: str = "cosine") -> np.ndarray:
    """[Q, H, W] map of `distance` (DISTANCES) of each query map against
    its neighbours' maps: 'nearest' (`aligned_patch_distance` in `metric`), 'ridge'
    (`aligned_ridge_residual`) or 'image_ridge' (`image_ridge_residual`, no `radius`)."""
    if distance == "nearest":
        return aligned_patch_distance(bank_maps, query_maps, neighbours, radius, metric)
    if distance == "image_ridge":
        if radius:
            raise ValueError(f"radius={radius}: image_ridge fits whole maps, with no slack per position")
        return image_ridge_residual(bank_maps, query_maps, neighbours, penalty, window)
    if distance == "ridge":
        return aligned_ridge_residual(bank_maps, query_maps, neighbours, penalty, radius, window)
    raise ValueError(f"distance {distance!r} is not one of nearest, ridge, image_ridge")


def _nearest_images(bank: np.ndarray, queries: np.ndarray, held_rows: np.ndarray,
                    neighbours: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Indices of the `neighbours` nearest bank maps (`metric`, flattened) of every query
    and of every held-out bank row, [Q, K] and [len(held_rows), K]."""
    test_neighbours = nearest_rows(bank, queries, neighbours, metric)[1]
    # One neighbour more than asked, then each held-out row's own index dropped: it is in
    # the bank, and an image must not be compared with itself.
    found = nearest_rows(bank, bank[held_rows], neighbours + 1, metric)[1]
    others = found != held_rows[:, None]
    return test_neighbours, np.take_along_axis(found, np.argsort(~others, axis=1, kind="stable")[:, :neighbours], 1)


def add_patch_knn_scores(train: dict[str, np.ndarray], test: dict[str, np.ndarray], names: list[str],
                         bank_size: int, seed: int, neighbours: int = 0, radius: int = 0, distance: str = "nearest",
                         penalty: float = 1.0, window: int = 1, neighbours_on: str = "deepest",
                         pixel_window: int = 0) -> dict[str, np.ndarray]:
    """Adds 'patch_knn/<scale>', the largest over positions of 'patch_map/<scale>' [M, H_s, W_s]:
    how far each position is from the normal training patches. Returns the same image
    scores for held-out normal training images (their statistics).

    `neighbours=0`: PatchCore's bank, a random draw of `bank_size` patches from any
    position of half of the training images, cosine distance to the nearest; the other
    half is held out. `neighbours=K`: the patches within `radius` positions of the same
    place in the K nearest normal training images (cosine on the deepest scale's flattened
    map, or with `neighbours_on='same'` on each scale's own), measured by `distance`:
    'nearest', SPADE's cosine distance to the closest, or 'ridge', the residual of a ridge
    reconstruction out of them (`penalty`, `window`; knn.aligned_ridge_residual), or
    'image_ridge', the residual of one ridge reconstruction of the whole map out of those
    images' maps (knn.image_ridge_residual; `radius` does not apply). Held out is a
    seeded subset of up to `MAX_HELD_OUT` training images, each searched with itself left
    out. With `pixel_window` > 0 (and neighbours), 'patches/pixels' in `train` and `test`
    (the [0, 1] images) is scored too, as `PIXELS`: the same ridge distance with its own
    window and `PIXEL_RIDGE_PENALTY`, its neighbours picked by Euclidean pixel distance, as
    the raw-pixel floor picks them.
    """
    if pixel_window and not neighbours:
        raise ValueError(f"pixel_window={pixel_window}: the pixel map is a ridge fit out of the nearest images, "
                         "which needs neighbours > 0")
    rng = np.random.default_rng([seed, 9])
    count = len(train[f"patches/{names[0]}"])
    if neighbours >= count:
        raise ValueError(f"--neighbours={neighbours} needs more normal training images than "
                                     f"that; there are {count}")
    if neighbours:
        held_rows = np.sort(rng.choice(count, min(count, MAX_HELD_OUT), replace=False))
        # model.scales is a set of stages in any order: the deepest is the largest number.
        deepest_name = max(names, key=lambda n: int(n.removeprefix("scale")))
        nearest = {n: _nearest_images(train[f"patches/{n}"], test[f"patches/{n}"], held_rows, neighbours)
                   for n in (names if neighbours_on == "same" else [deepest_name])}
        if pixel_window:
            nearest[PIXELS] = _nearest_images(train[f"patches/{PIXELS}"], test[f"patches/{PIXELS}"], held_rows,
                                              neighbours, "euclidean")
            names = [*names, PIXELS]
    else:
        order = rng.permutation(count)
        bank_rows, held_rows = order[: count // 2], order[count // 2:]
    held_out = {}
    for n in names:
        patches = train.pop(f"patches/{n}")
        queries = test.pop(f"patches/{n}")
        if neighbours:
            test_neighbours, held_neighbours = nearest[n if neighbours_on == "same" or n == PIXELS else deepest_name]
            measure = functools.partial(aligned_map, distance, patches, radius=radius,
                                        penalty=PIXEL_RIDGE_PENALTY if n == PIXELS else penalty,
                                        window=pixel_window if n == PIXELS else window)
            test_map, held_map = measure(queries, test_neighbours), measure(patches[held_rows], held_neighbours)
        else:
            channels = patches.shape[-1]
            bank = patches[bank_rows].reshape(-1, channels)
            bank = bank[np.random.default_rng([seed, 10]).choice(len(bank), min(bank_size, len(bank)), replace=False)]
            distance_map = lambda x: nearest_rows(bank, x.reshape(-1, channels), 1)[0][:, 0].reshape(x.shape[:3])  # noqa: E731
            test_map, held_map = distance_map(queries), distance_map(patches[held_rows])
        test[f"patch_map/{n}"] = test_map
        test[f"patch_knn/{n}"] = test_map.reshape(len(test_map), -1).max(axis=1)
        held_out[f"patch_knn/{n}"] = held_map.reshape(len(held_map), -1).max(axis=1)
    return held_out


def patch_localisation_maps(test: dict[str, np.ndarray], held_out_stats: dict[str, tuple[float, float]],
                            names: list[str], weights: tuple[float, ...], image_shape: tuple[int, int]) -> np.ndarray:
    """sum_s w_s patch_map_s / mu_s, each scale's map upsampled to the image and in units of
    its mean image score on held-out normal data (as fusion.localisation_maps does)."""
    total = 0.0
    for n, w in zip(names, weights):
        per_scale = test.pop(f"patch_map/{n}")
        upsampled = jax.image.resize(per_scale, (len(per_scale), *image_shape), "bilinear")
        total = total + w * np.asarray(upsampled) / max(held_out_stats[f"patch_knn/{n}"][0], 1e-12)
    return total



def main(argv):
    from absl import flags

    from mscad_jax import config as config_lib
    from mscad_jax import metrics, parallel, stage1
    from mscad_jax.data import protocols
    from mscad_jax.models import anomem
    from mscad_jax import evaluate
    from clu import metric_writers

    f = flags.FLAGS
    with open(os.path.join(f.workdir, "config.json"), encoding="utf-8") as fh:
        config = config_lib.from_json(json.load(fh))
    mesh = parallel.make_mesh()
    data = protocols.build_protocol(config)
    writer = metric_writers.create_default_writer(None, just_logging=True)
    model, state = stage1.train(config, data.train_images, data.train_labelled_anomaly, f.workdir, mesh, writer,
                                restore_only=True)
    frozen = {"params": state.params, "batch_stats": state.batch_stats}
    names = anomem.scale_names(config.model.scales)

    def maps(frozen, images):
        out = anomem.frozen_outputs(model, frozen, images.astype(np.float32) / 255.0)
        return {f"patches/{n}": out[n]["features"] for n in names}

    fn = parallel.jit_over_batch(maps, mesh, 1)
    normal = data.train_images[~data.train_labelled_anomaly]
    train = evaluate.score_images(fn, (frozen,), normal, config.eval.batch_size, mesh)
    test = evaluate.score_images(fn, (frozen,), data.test_images, config.eval.batch_size, mesh)
    weights = tuple(float(w) for w in f.weights) if f.weights else (1.0,) * len(names)
    patch_names = list(names)
    pixel_window = f.pixels_window if f.pixels else 0
    if pixel_window:
        train[f"patches/{PIXELS}"] = normal.astype(np.float32) / 255.0
        test[f"patches/{PIXELS}"] = data.test_images.astype(np.float32) / 255.0
        patch_names.append(PIXELS)
        weights = (*weights, float(f.pixels))
    held_out = add_patch_knn_scores(train, test, names, f.bank_size, config.seed, f.neighbours, f.radius, f.distance,
                                    f.penalty, f.window, f.neighbours_on, pixel_window)
    stats = {k: (float(np.mean(v)), float(np.std(v))) for k, v in held_out.items()}
    score = sum(w * (test[f"patch_knn/{n}"] - stats[f"patch_knn/{n}"][0]) / max(stats[f"patch_knn/{n}"][1], 1e-12)
                for n, w in zip(patch_names, weights))
    heat = patch_localisation_maps(test, stats, patch_names, weights, data.test_images.shape[1:3])
    image = metrics.image_metrics(score, data.test_labels)["auroc"]
    pixel = metrics.pixel_auroc(heat, data.test_masks)
    print(f"patch kNN on {f.workdir}: image AUROC {100 * image:.2f}, pixel AUROC "
          f"{'-' if pixel is None else f'{100 * pixel:.2f}'}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "A finished run of a local-anomaly config.", required=True)
    flags.DEFINE_integer("neighbours", 50, "K nearest normal images; 0 = a bank of patches from anywhere.")
    flags.DEFINE_integer("radius", 0, "Positions of slack along each axis.")
    flags.DEFINE_enum("distance", "ridge", DISTANCES, "ridge | image_ridge | nearest.")
    flags.DEFINE_float("penalty", 1.0, "Ridge penalty.")
    flags.DEFINE_integer("window", 1, "Signed residual averaged over window x window positions.")
    flags.DEFINE_enum("neighbours_on", "deepest", ["deepest", "same"], "The map that picks the K nearest images.")
    flags.DEFINE_list("weights", [], "w_s per scale; empty = all 1.")
    flags.DEFINE_float("pixels", 0.0, "Weight of the raw image as one more map; 0 = off.")
    flags.DEFINE_integer("pixels_window", 4, "The pixel map's window.")
    flags.DEFINE_integer("bank_size", 20000, "Patches in the PatchCore bank (neighbours=0).")
    app.run(main)
