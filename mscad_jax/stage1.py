"""Stage 1: memory-augmented contrastive learning of the encoder, memories and heads.

`make_train_step` builds the pure step `(state, batch) -> (state, metrics)`, jitted once
over the mesh (state replicated, batch sharded, state donated). Losses are computed on
the global batch, so BatchNorm statistics and NT-Xent negatives span all devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from mscad_jax import checkpoint, loop, losses, parallel
from mscad_jax.data import anomalies, augment, input_pipeline
from mscad_jax.models import anomem, memory


@flax.struct.dataclass
class Stage1State:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key: checkpoints as a plain array


@dataclasses.dataclass(frozen=True)
class Stage1Hparams:
    """The static (hashable) part of the config that the step closes over."""

    scale_names: tuple[str, ...]
    scale_weights: tuple[float, ...]
    temperature: float
    memory_weight: float
    instance_weight: float
    variance_weight: float
    reconstruction_weight: float
    repulsion_weight: float
    repulsion_margin: float
    rotations: bool
    rotation_weight: float
    augment: augment.AugmentConfig
    synthetic_anomalies: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Stage1Hparams":
        names = tuple(anomem.scale_names(config.model.scales))
        s1 = config.stage1
        weights = tuple(float(w) for w in s1.scale_weights) or (1.0,) * len(names)
        return cls(names, weights, float(s1.temperature), float(s1.memory_weight), float(s1.instance_weight),
                   float(s1.variance_weight), float(s1.reconstruction_weight), float(s1.repulsion_weight),
                   float(s1.repulsion_margin), bool(s1.rotations),
                   float(s1.rotation_weight) if config.model.rotation_head else 0.0,
                   augment.from_config(s1.augment), tuple(s1.synthetic_anomalies))


def decay_mask(params: Any) -> Any:
    """True for conv/dense kernels; BN scales/biases, biases and memory slots are excluded
    from weight decay and from LARS trust-ratio adaptation."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    peak = config.stage1.base_learning_rate * config.stage1.batch_size / 256
    total = config.stage1.epochs * steps_per_epoch
    warmup = min(int(config.stage1.warmup_epochs * steps_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 0), total)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    return optax.lars(learning_rate_schedule(config, steps_per_epoch), weight_decay=config.stage1.weight_decay,
                      weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                      momentum=config.stage1.momentum)


def _init_fn(model: anomem.AnoMem, tx: optax.GradientTransformation,
             image_shape: tuple[int, ...]) -> Callable[[jax.Array], Stage1State]:
    def init(rng):
        init_rng, step_rng = jax.random.split(rng)
        variables = model.init(init_rng, jnp.zeros((2,) + tuple(image_shape), jnp.float32), train=False)
        params = variables["params"]
        return Stage1State(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                           opt_state=tx.init(params), rng=step_rng)

    return init


def create_state(model: anomem.AnoMem, tx: optax.GradientTransformation, seed: int,
                 image_shape: tuple[int, ...], mesh: Mesh) -> Stage1State:
    """A fresh state, replicated over the mesh."""
    init = _init_fn(model, tx, image_shape)
    return jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(seed))


def abstract_state(model: anomem.AnoMem, tx: optax.GradientTransformation, seed: int,
                   image_shape: tuple[int, ...], mesh: Mesh) -> Stage1State:
    """Shapes, dtypes and shardings of the state, for restoring a checkpoint into."""
    shapes = jax.eval_shape(_init_fn(model, tx, image_shape), jax.random.PRNGKey(seed))
    return checkpoint.abstract_like(shapes, parallel.replicated(mesh))


def loss_and_metrics(params, batch_stats, model: anomem.AnoMem, views: jax.Array, labelled: jax.Array,
                     rotation: jax.Array, hp: Stage1Hparams):
    """L1 = sum_s lambda_s (memory NT-Xent_s + instance NT-Xent_s) + mu sum_s L_var,s
    + reconstruction + repulsion of labelled anomalies + rotation cross-entropy.

    views: [2N] (first N: view 1, last N: view 2, row i of each the same instance);
    labelled, rotation: [N]. Rotated copies (rotation > 0) are instances of their own for
    the instance term and the rotation head, but the memory models normality: only
    unrotated normal images are anchors of the memory terms (the rest stay negatives).
    """
    out, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, views, train=True,
                                fixed_feature_retrieval=bool(hp.reconstruction_weight), mutable=["batch_stats"])
    metrics = {}
    total = 0.0
    normal = ~labelled
    memory_anchor = normal & (rotation == 0)
    slots = model.memory_slots(params)
    for name, weight in zip(hp.scale_names, hp.scale_weights):
        o = out[name]
        u1, u2 = jnp.split(o["u"], 2)
        m1, m2 = jnp.split(o["v"], 2)
        # Features of one view are pulled to what the memory retrieves for the other view.
        contrastive = 0.5 * (losses.nt_xent(u1, m2, hp.temperature, memory_anchor)
                             + losses.nt_xent(u2, m1, hp.temperature, memory_anchor))
        instance = losses.nt_xent(u1, u2, hp.temperature, normal) if hp.instance_weight else 0.0
        variance = losses.memory_variance(slots[name])
        reconstruction = 0.0
        if hp.reconstruction_weight:
            # F_s is held fixed (also inside the attention): the memory moves towards the
            # features, never the features towards the memory.
            deviation = anomem.deviation_map(jax.lax.stop_gradient(o["features"]), o["retrieved_fixed"],
                                             model.deviation)
            reconstruction = losses.memory_reconstruction(deviation, jnp.concatenate([memory_anchor, memory_anchor]))
        repulsion = 0.5 * (losses.memory_repulsion(u1, m1, hp.repulsion_margin, labelled)
                           + losses.memory_repulsion(u2, m2, hp.repulsion_margin, labelled))
        total = (total + weight * (hp.memory_weight * contrastive + hp.instance_weight * instance)
                 + hp.variance_weight * variance + hp.reconstruction_weight * reconstruction
                 + hp.repulsion_weight * repulsion)
        entropy, used = memory.usage(o["attention"])
        metrics.update({f"{name}/contrastive": contrastive, f"{name}/instance": instance,
                        f"{name}/variance": variance, f"{name}/reconstruction": reconstruction,
                        f"{name}/repulsion": repulsion, f"{name}/usage_entropy": entropy,
                        f"{name}/slots_used": used,
                        f"{name}/slot_norm": jnp.mean(jnp.linalg.norm(slots[name], axis=-1))})
    if hp.rotation_weight:
        both = jnp.concatenate([normal, normal])
        rotation_ce = losses.rotation_cross_entropy(out[anomem.ROTATION_LOGITS], jnp.concatenate([rotation, rotation]),
                                                    both)
        total = total + hp.rotation_weight * rotation_ce
        metrics["rotation_ce"] = rotation_ce
    metrics["loss"] = total
    return total, (new_vars["batch_stats"], metrics)


def shifted_views(key: jax.Array, images: jax.Array, hp: Stage1Hparams) -> tuple[jax.Array, jax.Array]:
    """Two augmented views of every image, stacked [2N], and the rotation index [N] of each
    instance. With `hp.rotations` every augmented view also enters rotated by 90, 180 and
    270 degrees (N = 4B): the copies share the augmentation, so only the rotation differs."""
    k1, k2 = jax.random.split(key)
    num_rotations = anomem.NUM_ROTATIONS if hp.rotations else 1

    def view(k):
        x = augment.augment_batch(k, images, hp.augment)
        return jnp.concatenate([anomem.rotate(x, r) for r in range(num_rotations)])

    rotation = jnp.repeat(jnp.arange(num_rotations), images.shape[0])
    return jnp.concatenate([view(k1), view(k2)]), rotation


def make_train_step(model: anomem.AnoMem, tx: optax.GradientTransformation, hp: Stage1Hparams,
                    schedule: optax.Schedule, mesh: Mesh) -> Callable[[Stage1State, dict], tuple[Stage1State, dict]]:
    """The jitted step. batch: {'image': uint8 [B,H,W,C], 'labelled_anomaly': bool [B]}."""

    def train_step(state: Stage1State, batch: dict) -> tuple[Stage1State, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        images, labelled = input_pipeline.to_float(batch["image"]), batch["labelled_anomaly"]
        if hp.synthetic_anomalies:
            # Every image also enters corrupted (e.g. a pasted patch), as a labelled anomaly:
            # a negative of the contrastive terms, repelled from the memory.
            images, labelled, _ = anomalies.append_synthetic_anomalies(jax.random.fold_in(key, 1), images, labelled,
                                                                       hp.synthetic_anomalies)
        views, rotation = shifted_views(key, images, hp)
        labelled = jnp.tile(labelled, len(rotation) // labelled.shape[0])
        grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
        (_, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, model, views, labelled,
                                                     rotation, hp)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        # With BatchNorm after every conv, the loss ignores the scale of the conv weights,
        # so their gradient grows as weight decay shrinks them: logged to tell apart.
        metrics["encoder_norm"] = optax.global_norm(params["encoder"])
        metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(train_step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                   out_shardings=parallel.replicated(mesh), donate_argnums=(0,))


def train(config: ml_collections.ConfigDict, train_images: np.ndarray, labelled_anomaly: np.ndarray,
          workdir: str, mesh: Mesh, writer, *, restore_only: bool = False) -> tuple[anomem.AnoMem, Stage1State]:
    """Trains stage 1 to `config.stage1.epochs`, resuming from workdir's checkpoints."""
    model = anomem.AnoMem(**config.model)
    per_epoch = input_pipeline.steps_per_epoch(len(train_images), config.stage1.batch_size)
    tx = make_optimizer(config, per_epoch)
    image_shape = train_images.shape[1:]
    hp = Stage1Hparams.from_config(config)
    stage = loop.Stage(
        name="stage1", num_steps=config.stage1.epochs * per_epoch,
        abstract_state=lambda: abstract_state(model, tx, config.seed, image_shape, mesh),
        create_state=lambda: create_state(model, tx, config.seed, image_shape, mesh),
        make_step=lambda: make_train_step(model, tx, hp, learning_rate_schedule(config, per_epoch), mesh),
        arrays={"image": train_images, "labelled_anomaly": labelled_anomaly},
        batch_size=config.stage1.batch_size, data_seed=config.seed)
    state = loop.run_stage(stage, config, workdir, mesh, writer, restore_only=restore_only)
    return model, state
