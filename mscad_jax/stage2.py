"""Stage 2: anomaly distance detectors on the deviation maps D_s = F_s - R_s.

The stage-1 encoder and memories are frozen: their variables are an argument of the
step (not part of the trained state) and pass through `stop_gradient`. One bias-free
detector per scale maps D_s to an embedding; a_s = ||phi_s(D_s) - c_s||^2 with c_s
fixed at initialisation (Deep SVDD), and labelled anomalies are pushed away with the
Deep SAD term.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from mscad_jax import checkpoint, loop, losses, parallel
from mscad_jax.data import anomalies, input_pipeline
from mscad_jax.models import anomem, detector, fitted_memory


@flax.struct.dataclass
class Stage2State:
    step: jax.Array
    params: Any
    opt_state: Any
    centers: Any  # {scale name: [embedding size]}, fixed after initialisation
    rng: jax.Array


def make_detector(config: ml_collections.ConfigDict) -> detector.MultiScaleDetector:
    """The detectors of `config.stage2`, one per configured scale."""
    return detector.make_detector(anomem.scale_names(config.model.scales), config.stage2)


def distances(embeddings: dict[str, jax.Array], centers: dict[str, jax.Array], names) -> jax.Array:
    """a_s for every sample: [B, S] in the order of `names`."""
    return jnp.stack([jnp.sum((embeddings[n] - centers[n]) ** 2, axis=-1) for n in names], axis=-1)


def push_from_zero(center: np.ndarray, eps: float) -> np.ndarray:
    """Coordinates closer to 0 than eps move to +-eps: a centre at 0 is trivially reached
    by a bias-free network with zero weights."""
    sign = np.where(center >= 0, 1.0, -1.0)
    return np.where(np.abs(center) < eps, sign * eps, center).astype(np.float32)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.adamw(config.stage2.learning_rate, weight_decay=config.stage2.weight_decay)


def _sample_deviations(det, model, frozen, image_shape) -> dict[str, jax.Array]:
    """The deviation maps of one blank image: what gives the detector its shapes."""
    sample = anomem.frozen_outputs(model, frozen, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
    return anomem.deviation_maps(sample, det.scale_names)


def _init_params(det: detector.MultiScaleDetector, model: anomem.AnoMem, frozen: dict,
                 image_shape: tuple[int, ...], rng: jax.Array):
    return det.init(rng, _sample_deviations(det, model, frozen, image_shape))


def _zero_centres(det, model, frozen, image_shape, params) -> dict[str, jax.Array]:
    """Centres of 0 in the shapes of the detector's embeddings (the metric detector's)."""
    shapes = jax.eval_shape(lambda p: det.apply(p, _sample_deviations(det, model, frozen, image_shape)), params)
    return {n: jnp.zeros(shapes[n].shape[1:], jnp.float32) for n in det.scale_names}


def abstract_state(det, model, frozen, tx, image_shape, mesh) -> Stage2State:
    def init(rng):
        params = _init_params(det, model, frozen, image_shape, rng)
        centers = _zero_centres(det, model, frozen, image_shape, params)
        return Stage2State(jnp.zeros((), jnp.int32), params, tx.init(params), centers, rng)

    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    return checkpoint.abstract_like(shapes, parallel.replicated(mesh))


def make_embed_fn(det, model, mesh: Mesh) -> Callable:
    """Jitted (frozen, params, images uint8) -> {scale: embedding}."""
    def embed(frozen, params, images):
        outputs = anomem.frozen_outputs(model, frozen, input_pipeline.to_float(images))
        return det.apply(params, anomem.deviation_maps(outputs, det.scale_names))

    rep = parallel.replicated(mesh)
    return jax.jit(embed, in_shardings=(rep, rep, parallel.batch_sharded(mesh)),
                   out_shardings=parallel.batch_sharded(mesh))


def create_state(config, det, model, frozen, tx, train_images: np.ndarray, normal: np.ndarray,
                 mesh: Mesh) -> Stage2State:
    """Initial detector params and the centres: c_s = the mean embedding of normal
    training data (conv), or 0 (metric)."""
    rng = jax.random.PRNGKey(config.seed + 1)
    init_rng, step_rng = jax.random.split(rng)
    rep = parallel.replicated(mesh)
    params = jax.jit(lambda f, r: _init_params(det, model, f, train_images.shape[1:], r), out_shardings=rep)(
        frozen, init_rng)
    if det.zero_centre:
        centers = _zero_centres(det, model, frozen, train_images.shape[1:], params)
    else:
        centers = _mean_embeddings(config, det, model, frozen, params, train_images[normal], mesh)
    state = Stage2State(jnp.zeros((), jnp.int32), params, tx.init(params), centers, step_rng)
    return jax.device_put(state, rep)


def _mean_embeddings(config, det, model, frozen, params, images: np.ndarray, mesh: Mesh) -> dict[str, np.ndarray]:
    """Deep SVDD's centres: the normal images' mean embeddings, pushed away from 0."""
    embed = make_embed_fn(det, model, mesh)
    sums: dict[str, Any] = {n: 0.0 for n in det.scale_names}
    for valid, batch in input_pipeline.eval_batches({"image": images}, config.eval.batch_size, mesh):
        emb = parallel.fetch(embed(frozen, params, batch["image"]))
        for n in det.scale_names:
            sums[n] = sums[n] + emb[n][:valid].sum(axis=0, dtype=np.float64)
    return {n: push_from_zero(sums[n] / len(images), config.stage2.center_eps) for n in det.scale_names}


def loss_and_metrics(params: dict, det: detector.MultiScaleDetector, deviations: dict[str, jax.Array],
                     centers: dict[str, jax.Array], labelled: jax.Array, eta: float) -> tuple[jax.Array, dict]:
    """Stage 2's loss: multi-scale Deep SAD on the squared distances of the detectors'
    embeddings to the centres (Deep SVDD when nothing is labelled), and per-scale mean
    distances of the normal rows."""
    names = det.scale_names
    dist = distances(det.apply(params, deviations), centers, names)
    loss = losses.deep_sad_loss(dist, labelled, eta)
    normal = (~labelled).astype(jnp.float32)
    metrics = {"loss": loss}
    for i, n in enumerate(names):
        metrics[f"{n}/normal_distance"] = jnp.sum(dist[:, i] * normal) / jnp.maximum(normal.sum(), 1.0)
    return loss, metrics


# A position is a labelled anomaly when a synthetic defect covers at least this share of
# it, normal when none does; the positions a defect only grazes are left out of the loss.
ANOMALOUS_COVERAGE = 0.25


def position_labels(masks: jax.Array, shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """(anomalous, normal) [B, h, w] of a scale's positions from pixel masks [B, H, W]:
    the share of each position's pixels that the defect covers (box downsampling)."""
    rows = jnp.asarray(anomalies.box_downsample_matrix(masks.shape[1], shape[0]))
    cols = jnp.asarray(anomalies.box_downsample_matrix(masks.shape[2], shape[1]))
    coverage = jnp.einsum("hH,bHW,wW->bhw", rows, masks, cols)
    return (coverage >= ANOMALOUS_COVERAGE).astype(jnp.float32), (coverage <= 0.0).astype(jnp.float32)


def position_loss_and_metrics(params: dict, det: detector.MultiScaleDetector, deviations: dict[str, jax.Array],
                              masks: jax.Array, eta: float) -> tuple[jax.Array, dict]:
    """Stage 2's loss with `stage2.position_labels`: the metric detector's distance at
    every position (centre 0) is trained by Deep SAD per position, the positions under a
    synthetic defect as anomalies and the rest as normal, summed over scales."""
    embeddings = det.apply(params, deviations)
    loss, metrics = 0.0, {}
    for n in det.scale_names:
        dist = detector.metric_position_distances(embeddings[n], deviations[n].shape)
        anomalous, normal = position_labels(masks, dist.shape[1:])
        loss = loss + losses.position_deep_sad_loss(dist, anomalous, normal, eta)
        metrics[f"{n}/normal_distance"] = jnp.sum(dist * normal) / jnp.maximum(normal.sum(), 1.0)
        metrics[f"{n}/anomalous_distance"] = jnp.sum(dist * anomalous) / jnp.maximum(anomalous.sum(), 1.0)
    metrics["loss"] = loss
    return loss, metrics


def make_train_step(det, model, tx, config: ml_collections.ConfigDict, mesh: Mesh):
    """The jitted step (state, batch, frozen) -> (state, metrics)."""
    names = det.scale_names
    eta = float(config.stage2.eta)
    synthetic = tuple(config.stage2.synthetic_anomalies)
    per_position = bool(config.stage2.position_labels)

    def train_step(state: Stage2State, batch: dict, frozen: dict):
        images = input_pipeline.to_float(batch["image"])
        key = jax.random.fold_in(state.rng, state.step)
        labelled = batch["labelled_anomaly"]
        masks = anomalies.label_masks(labelled, images.shape[1:3])
        if synthetic:
            # Every image also enters corrupted, as a labelled anomaly (Deep SAD's second term).
            images, labelled, masks = anomalies.append_synthetic_anomalies(jax.random.fold_in(key, 1), images,
                                                                           labelled, synthetic)
        deviations = anomem.deviation_maps(anomem.frozen_outputs(model, frozen, images), names)
        if per_position:
            grad_fn = jax.value_and_grad(position_loss_and_metrics, has_aux=True)
            (_, metrics), grads = grad_fn(state.params, det, deviations, masks, eta)
        else:
            grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
            (_, metrics), grads = grad_fn(state.params, det, deviations, state.centers, labelled, eta)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    rep = parallel.replicated(mesh)
    step = jax.jit(train_step, in_shardings=(rep, parallel.batch_sharded(mesh), rep), out_shardings=rep,
                   donate_argnums=(0,))
    return step


def train(config: ml_collections.ConfigDict, model: anomem.AnoMem, frozen: dict, train_images: np.ndarray,
          labelled_anomaly: np.ndarray, workdir: str, mesh: Mesh, writer, *,
          restore_only: bool = False) -> tuple[detector.MultiScaleDetector, Stage2State]:
    """Trains the detectors to `config.stage2.epochs`, resuming from workdir's checkpoints."""
    det = make_detector(config)
    tx = make_optimizer(config)
    per_epoch = input_pipeline.steps_per_epoch(len(train_images), config.stage2.batch_size)

    def make_step():
        step_fn = make_train_step(det, model, tx, config, mesh)
        return lambda state, batch: step_fn(state, batch, frozen)

    stage = loop.Stage(
        name="stage2", num_steps=config.stage2.epochs * per_epoch,
        abstract_state=lambda: abstract_state(det, model, frozen, tx, train_images.shape[1:], mesh),
        create_state=lambda: create_state(config, det, model, frozen, tx, train_images, ~labelled_anomaly, mesh),
        make_step=make_step, arrays={"image": train_images, "labelled_anomaly": labelled_anomaly},
        batch_size=config.stage2.batch_size, data_seed=config.seed + 1)
    state = loop.run_stage(stage, config, workdir, mesh, writer, restore_only=restore_only)
    return det, state


# Normal training images the fitted memory is fitted on (a seeded subset when larger):
# the k-means holds every image's feature map of a scale in host memory.
MAX_MEMORY_FIT_IMAGES = 10000


def memory_fit_names(config: ml_collections.ConfigDict) -> list[str]:
    """The scales the fitted memory replaces stage 1's memory at (`stage2.memory_fit_scales`,
    () = every scale of the model)."""
    return anomem.scale_names(tuple(config.stage2.memory_fit_scales) or tuple(config.model.scales))


def fit_memory(config: ml_collections.ConfigDict, model: anomem.AnoMem, frozen: dict, normal_images: np.ndarray,
               mesh: Mesh) -> dict:
    """`frozen` with the memory `config.stage2.memory_fit` asks for fitted to the normal
    training images' frozen features (models.fitted_memory); unchanged for 'none'."""
    if config.stage2.memory_fit == "none":
        return frozen
    if len(normal_images) > MAX_MEMORY_FIT_IMAGES:
        pick = np.random.default_rng([config.seed, 11]).choice(len(normal_images), MAX_MEMORY_FIT_IMAGES,
                                                              replace=False)
        normal_images = normal_images[np.sort(pick)]
    names = memory_fit_names(config)
    features_fn = parallel.jit_over_batch(
        lambda f, x: {n: o["features"] for n, o in anomem.frozen_outputs(model, f, input_pipeline.to_float(x)).items()
                      if n in names}, mesh, 1)
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for valid, batch in input_pipeline.eval_batches({"image": normal_images}, config.eval.batch_size, mesh):
        out = parallel.fetch(features_fn(frozen, batch["image"]))
        for n in names:
            chunks[n].append(out[n][:valid])
    s2 = config.stage2
    if s2.memory_fit == "maps":
        maps = {n: fitted_memory.fit_maps(np.concatenate(chunks[n]), s2.memory_fit_slots, config.seed + i)
                for i, n in enumerate(names)}
        fitted = fitted_memory.map_memory(maps, s2.memory_fit_neighbours, s2.memory_fit_window, s2.memory_fit_dtype)
    else:
        slots = {n: fitted_memory.fit_slots(np.concatenate(chunks[n]), s2.memory_fit_slots, config.seed + i)
                 for i, n in enumerate(names)}
        fitted = {"slots": slots, "beta": np.float32(s2.memory_fit_beta)}
    return jax.device_put({**frozen, fitted_memory.KEY: fitted}, parallel.replicated(mesh))


def abstract_fitted_memory(config: ml_collections.ConfigDict, model: anomem.AnoMem, frozen: dict,
                           image_shape: tuple[int, ...], mesh: Mesh) -> dict:
    """`frozen` (abstract) with the abstract fitted memory `fit_memory` would add: what
    ahead-of-time compilation of stage 2 takes for it."""
    if config.stage2.memory_fit == "none":
        return frozen
    outputs = jax.eval_shape(lambda f: anomem.frozen_outputs(model, f, jnp.zeros((1,) + tuple(image_shape))), frozen)
    rep = parallel.replicated(mesh)
    s2 = config.stage2
    if s2.memory_fit == "maps":
        maps = {n: np.zeros((s2.memory_fit_slots,) + outputs[n]["features"].shape[1:], np.float32)
                for n in memory_fit_names(config)}
        fitted = fitted_memory.map_memory(maps, s2.memory_fit_neighbours, s2.memory_fit_window, s2.memory_fit_dtype)
        return {**frozen, fitted_memory.KEY: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), fitted)}
    slots = {n: jax.ShapeDtypeStruct(outputs[n]["features"].shape[1:3] + (s2.memory_fit_slots,
                                                                          outputs[n]["features"].shape[-1]),
                                     jnp.float32, sharding=rep) for n in memory_fit_names(config)}
    beta = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    return {**frozen, fitted_memory.KEY: {"slots": slots, "beta": beta}}


def make_pooled_fn(model: anomem.AnoMem, mesh: Mesh) -> Callable:
    """Jitted (frozen, images uint8) -> {'pooled': concat_s GAP(F_s)}, for the linear probe."""
    names = anomem.scale_names(model.scales)

    def pooled(frozen, images):
        out = anomem.frozen_outputs(model, frozen, input_pipeline.to_float(images))
        return {"pooled": jnp.concatenate([out[n]["features"].mean(axis=(1, 2)) for n in names], axis=-1)}

    return parallel.jit_over_batch(pooled, mesh, 1)
