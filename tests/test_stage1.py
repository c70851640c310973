"""Stage 1: the pure train step, its sharding invariance, masks, the loop and resuming."""


import jax
import numpy as np
import pytest
from clu import metric_writers

from mscad_jax import loop, parallel, stage1
from mscad_jax.data import anomalies, input_pipeline
from mscad_jax.models import anomem
from conftest import init_variables, jitted_apply


def _setup(config, images, devices):
    mesh = parallel.make_mesh(devices)
    model = anomem.AnoMem(**config.model)
    per_epoch = input_pipeline.steps_per_epoch(len(images), config.stage1.batch_size)
    tx = stage1.make_optimizer(config, per_epoch)
    hp = stage1.Stage1Hparams.from_config(config)
    state = stage1.create_state(model, tx, config.seed, images.shape[1:], mesh)
    step = stage1.make_train_step(model, tx, hp, stage1.learning_rate_schedule(config, per_epoch), mesh)
    return mesh, state, step


def jitted_loss(model, hp):
    """stage1.loss_and_metrics under jit, as the step runs it (eager, every op would
    compile on its own: minutes for one loss on two cores)."""
    def loss(params, batch_stats, views, labelled, rotation):
        return stage1.loss_and_metrics(params, batch_stats, model, views, labelled, rotation, hp)

    return jax.jit(loss)


def jitted_views(key, images, hp):
    return jax.jit(stage1.shifted_views, static_argnums=2)(key, images, hp)


MULTIHOST_STEPS = 3


def multihost_inputs(make_config):
    """The config and data that the 1-, 4-device and 2-process runs share."""
    # Without jitter: the clipped brightness/contrast of 8x8 noise images saturates pixels,
    # and near-constant BatchNorm channels then amplify float32 reduction-order differences
    # far beyond round-off within three LARS steps (measured 4e-5 relative in L2), which
    # would blunt this test's tolerance. The views themselves are bitwise identical.
    config = make_config(**{"stage1.epochs": 3, "stage1.base_learning_rate": 0.5, "stage1.augment.jitter_prob": 0.0})
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
    labelled = np.zeros(8, bool)
    labelled[5] = True  # the masked NT-Xent and the repulsion term are exercised too
    return config, images, labelled


def run_steps(config, images, labelled, devices, num_steps):
    """(losses per step, final params) as host arrays."""
    losses, params, _ = _run(config, images, labelled, devices, num_steps)
    return losses, params


def _run(config, images, labelled, devices, num_steps):
    mesh, state, step = _setup(config, images, devices)
    losses = []
    arrays = {"image": images, "labelled_anomaly": labelled}
    for _, batch in input_pipeline.train_batches(arrays, config.stage1.batch_size, config.seed, 0, num_steps, mesh):
        state, metrics = step(state, batch)
        losses.append(parallel.fetch(metrics)["loss"])
    return np.array(losses), parallel.fetch(state.params), step


def test_same_result_on_one_and_four_devices(tiny_config):
    config, images, labelled = multihost_inputs(tiny_config)
    loss1, params1, _ = _run(config, images, labelled, jax.devices()[:1], MULTIHOST_STEPS)
    loss4, params4, _ = _run(config, images, labelled, jax.devices()[:4], MULTIHOST_STEPS)
    assert np.all(np.isfinite(loss1))
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    flat1 = np.concatenate([x.ravel() for x in jax.tree.leaves(params1)])
    flat4 = np.concatenate([x.ravel() for x in jax.tree.leaves(params4)])
    # Relative to the whole parameter vector: single small leaves (BN biases ~1e-3, whose
    # gradients are cancelling batch sums) differ at float32 round-off from the changed
    # reduction order: ~3e-6 absolute on one CPU, 1.8e-5 on one element of 21,876 on another
    # (XLA compiles for the host's instruction set). Per-device BatchNorm statistics or a
    # per-device NT-Xent would differ by orders of magnitude more.
    assert np.linalg.norm(flat4 - flat1) / np.linalg.norm(flat1) < 1e-5
    np.testing.assert_allclose(flat4, flat1, rtol=1e-4, atol=5e-5)


def test_train_step_compiles_once_and_lowers_the_loss(tiny_config, random_images):
    config = tiny_config(**{"stage1.epochs": 8, "stage1.base_learning_rate": 1.0})
    images = random_images(8)
    losses, _, step = _run(config, images, np.zeros(8, bool), jax.devices()[:2], 8)
    assert step._cache_size() == 1
    assert losses[-3:].mean() < losses[:3].mean()


def test_batches_and_steps_make_no_implicit_transfers(tiny_config, random_images):
    """The loop's claim: batches go to the devices explicitly, and the step keeps its
    metrics there until they are fetched (explicitly) at a logging step."""
    config = tiny_config()
    images = random_images(16)
    mesh, state, step = _setup(config, images, jax.devices()[:1])
    step(state, next(input_pipeline.train_batches(  # compiles outside the guard
        {"image": images, "labelled_anomaly": np.zeros(16, bool)}, config.stage1.batch_size, 0, 0, 1, mesh))[1])
    mesh, state, step = _setup(config, images, jax.devices()[:1])
    arrays = {"image": images, "labelled_anomaly": np.zeros(16, bool)}
    with jax.transfer_guard("disallow"):
        for _, batch in input_pipeline.train_batches(arrays, config.stage1.batch_size, 0, 0, 3, mesh):
            state, metrics = step(state, batch)
        assert np.isfinite(parallel.fetch(metrics)["loss"])


def test_decay_mask_excludes_norms_biases_and_memory_slots(tiny_config):
    model = anomem.AnoMem(**tiny_config().model)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((2, 8, 8, 1), np.float32),
                                               train=False))["params"]
    mask = stage1.decay_mask(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["['memory_scale2']['slots']"] is False
    assert flat["['head_scale2']['dense2']['bias']"] is False
    assert flat["['encoder']['stem_bn']['scale']"] is False
    assert flat["['encoder']['stem']['kernel']"] is True
    assert flat["['head_scale2']['dense1']['kernel']"] is True


def test_learning_rate_warms_up_then_decays(tiny_config):
    config = tiny_config(**{"stage1.epochs": 10, "stage1.warmup_epochs": 2, "stage1.batch_size": 128,
                            "stage1.base_learning_rate": 1.0})
    schedule = stage1.learning_rate_schedule(config, steps_per_epoch=10)
    peak = 1.0 * 128 / 256
    assert float(schedule(0)) == 0.0
    assert float(schedule(20)) == pytest.approx(peak)
    assert float(schedule(10)) == pytest.approx(peak / 2)
    assert float(schedule(99)) < 0.01 * peak


def test_loop_raises_on_non_finite_loss_naming_the_step(tmp_path):
    def step_fn(state, batch):
        return state, {"loss": np.float32(np.nan if batch == 3 else 1.0)}

    writer = metric_writers.create_default_writer(str(tmp_path), just_logging=True)
    from mscad_jax import checkpoint
    ckpt = checkpoint.manager(str(tmp_path / "ckpt"))
    with pytest.raises(loop.NonFiniteLossError, match="step 4"):
        loop.run(step_fn, {"x": np.zeros(1)}, ((s, s) for s in range(6)), num_steps=6, writer=writer, ckpt=ckpt,
                 log_every=5, checkpoint_every=100, prefix="stage1")


def test_resumed_training_matches_an_uninterrupted_run(tiny_config, random_images, tmp_path, batch_stream):
    images = random_images(16)
    flags = np.zeros(16, bool)
    mesh = parallel.make_mesh(jax.devices()[:1])
    writer = metric_writers.create_default_writer(str(tmp_path), just_logging=True)
    config = tiny_config(**{"stage1.epochs": 2})  # 4 steps, checkpoints every 2
    _, full = stage1.train(config, images, flags, str(tmp_path / "a"), mesh, writer)

    batch_stream.interrupt_at(2)
    with pytest.raises(KeyboardInterrupt):
        stage1.train(config, images, flags, str(tmp_path / "b"), mesh, writer)
    steps_run = batch_stream.record()
    _, resumed = stage1.train(config, images, flags, str(tmp_path / "b"), mesh, writer)
    assert steps_run == [2, 3]  # resumed from the step-2 checkpoint, not from scratch
    assert int(resumed.step) == 4
    # Everything the state carries resumes: params, BatchNorm statistics, optimizer moments.
    for part in ("params", "batch_stats", "opt_state"):
        got, want = parallel.fetch(getattr(resumed, part)), parallel.fetch(getattr(full, part))
        assert jax.tree.structure(got) == jax.tree.structure(want), part
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=part)


def test_shifted_views_rotate_the_same_augmented_view(tiny_config, random_images):
    config = tiny_config(**{"stage1.rotations": True})
    hp = stage1.Stage1Hparams.from_config(config)
    images = input_pipeline.to_float(random_images(3))
    views, rotation = stage1.shifted_views(jax.random.key(0), images, hp)
    assert views.shape == (2 * 4 * 3, 8, 8, 1)
    np.testing.assert_array_equal(rotation, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    first_view = np.asarray(views[:12])
    for r in range(1, 4):
        np.testing.assert_array_equal(first_view[3 * r:3 * r + 3], np.rot90(first_view[:3], r, axes=(1, 2)))
    assert not np.array_equal(views[:3], views[12:15])  # the two views are different augmentations
    plain, rotation = stage1.shifted_views(jax.random.key(0), images, stage1.Stage1Hparams.from_config(tiny_config()))
    assert plain.shape == (6, 8, 8, 1) and rotation.tolist() == [0, 0, 0]


def test_stage1_loss_with_labelled_anomalies_and_every_term_matches_reference(tiny_config, random_images):
    from test_losses import (ref_memory_reconstruction, ref_memory_repulsion, ref_memory_variance, ref_nt_xent,
                             ref_rotation_cross_entropy)

    config = tiny_config(**{
        "model.rotation_head": True, "stage1.rotations": True, "stage1.scale_weights": (1.0, 0.5, 2.0),
        "stage1.memory_weight": 0.7, "stage1.instance_weight": 0.3, "stage1.variance_weight": 1.3,
        "stage1.reconstruction_weight": 0.5, "stage1.repulsion_weight": 0.9, "stage1.repulsion_margin": 0.1,
        "stage1.rotation_weight": 0.6})
    hp = stage1.Stage1Hparams.from_config(config)
    model = anomem.AnoMem(**config.model)
    variables = init_variables(model, jax.random.key(1), (2, 8, 8, 1), train=False)
    labelled_images = np.array([False, True, False])
    views, rotation = jitted_views(jax.random.key(2), input_pipeline.to_float(random_images(3)), hp)
    labelled = np.tile(labelled_images, 4)
    loss, (_, metrics) = jitted_loss(model, hp)(variables["params"], variables["batch_stats"], views, labelled, rotation)
    out, _ = jitted_apply(model, train=True, mutable=["batch_stats"])(variables, views)
    out = jax.tree.map(lambda x: np.asarray(x, np.float64), out)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    normal = ~labelled
    anchor = normal & (np.asarray(rotation) == 0)  # only unrotated normal images anchor the memory terms
    assert anchor.tolist() == [True, False, True] + [False] * 9
    want = 0.0
    for name, weight in zip(hp.scale_names, (1.0, 0.5, 2.0)):
        o = out[name]
        u1, u2 = np.split(o["u"], 2)
        m1, m2 = np.split(o["v"], 2)
        contrastive = 0.5 * (ref_nt_xent(u1, m2, 0.5, anchor) + ref_nt_xent(u2, m1, 0.5, anchor))
        instance = ref_nt_xent(u1, u2, 0.5, normal)
        variance = ref_memory_variance(np.asarray(variables["params"][f"memory_{name}"]["slots"], np.float64))
        reconstruction = ref_memory_reconstruction(unit(o["features"]) - unit(o["retrieved"]),
                                                   np.concatenate([anchor, anchor]))
        repulsion = 0.5 * (ref_memory_repulsion(u1, m1, 0.1, labelled) + ref_memory_repulsion(u2, m2, 0.1, labelled))
        np.testing.assert_allclose(metrics[f"{name}/contrastive"], contrastive, rtol=1e-4)
        np.testing.assert_allclose(metrics[f"{name}/repulsion"], repulsion, rtol=1e-4, atol=1e-6)
        assert repulsion > 0  # the labelled anomaly's features and retrieval are not yet apart
        want += weight * (0.7 * contrastive + 0.3 * instance) + 1.3 * variance + 0.5 * reconstruction + 0.9 * repulsion
    rotation_ce = ref_rotation_cross_entropy(out[anomem.ROTATION_LOGITS], np.tile(np.asarray(rotation), 2),
                                             np.concatenate([normal, normal]))
    want += 0.6 * rotation_ce
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)


def _first_step(config, images):
    """What a one-device step starts from, for comparing it with loss_and_metrics: the
    hparams, model, state, jitted step, first batch of `images`, the step's key and the
    batch as floats."""
    mesh, state, step = _setup(config, images, jax.devices()[:1])
    batch = next(input_pipeline.train_batches({"image": images, "labelled_anomaly": np.zeros(len(images), bool)},
                                              len(images), 0, 0, 1, mesh))[1]
    key = jax.random.fold_in(state.rng, state.step)
    return (stage1.Stage1Hparams.from_config(config), anomem.AnoMem(**config.model), state, step, batch, key,
            input_pipeline.to_float(parallel.fetch(batch["image"])))


def test_synthetic_anomalies_enter_stage1_as_labelled_copies(tiny_config, random_images):
    """stage1.synthetic_anomalies: the step adds one corrupted copy of every image as a
    labelled anomaly; its loss is the loss of that enlarged batch."""
    config = tiny_config(**{"stage1.synthetic_anomalies": ("cutpaste", "scar"), "stage1.batch_size": 4})
    hp, model, state, step, batch, key, floats = _first_step(config, random_images(4))
    corrupted, _ = jax.jit(anomalies.synthetic_anomalies, static_argnums=2)(jax.random.fold_in(key, 1), floats,
                                                                            ("cutpaste", "scar"))
    assert not np.array_equal(corrupted, floats)
    views, rotation = jitted_views(key, np.concatenate([floats, corrupted]), hp)
    labelled = np.array([False] * 4 + [True] * 4)
    want, (_, metrics) = jitted_loss(model, hp)(state.params, state.batch_stats, views, labelled, rotation)
    assert all(metrics[f"{name}/repulsion"] > 0 for name in hp.scale_names)  # the copies are repelled
    _, got = step(state, batch)
    np.testing.assert_allclose(parallel.fetch(got)["loss"], want, rtol=1e-5)


def test_reconstruction_moves_the_memory_not_the_encoder(tiny_config, random_images):
    config = tiny_config(**{"stage1.memory_weight": 0.0, "stage1.variance_weight": 0.0,
                            "stage1.reconstruction_weight": 1.0})
    hp = stage1.Stage1Hparams.from_config(config)
    model = anomem.AnoMem(**config.model)
    variables = init_variables(model, jax.random.key(1), (2, 8, 8, 1), train=False)
    views, rotation = jitted_views(jax.random.key(2), input_pipeline.to_float(random_images(4)), hp)
    loss = jitted_loss(model, hp)
    grads = jax.grad(lambda p: loss(p, variables["batch_stats"], views, np.zeros(4, bool), rotation)[0])(
        variables["params"])
    assert all(float(np.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
    assert float(np.abs(grads["memory_scale3"]["slots"]).max()) > 0.0
