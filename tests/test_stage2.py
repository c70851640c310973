"""Stage 2: frozen stage-1 model, centres, Deep SVDD / SAD training, scores and maps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from clu import metric_writers

from mscad_jax import losses, parallel, stage2
from mscad_jax.data import anomalies, input_pipeline
from mscad_jax.models import anomem, detector
from mscad_jax.scoring import function as scoring
from conftest import init_variables, jitted_apply, untrained_stage1
from tiny import make_tiny_config


def test_no_gradient_reaches_the_frozen_encoder_and_memories(tiny_config, random_images):
    config = tiny_config()
    images = random_images(8)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    det = stage2.make_detector(config)
    names = det.scale_names
    params = init_variables(det, jax.random.key(0), anomem.deviation_maps(
        jax.jit(anomem.frozen_outputs, static_argnums=0)(model, frozen, jnp.zeros((1, 8, 8, 1))), names))
    centers = {n: jnp.full((config.stage2.embed_dim,), 0.1) for n in names}
    x = input_pipeline.to_float(images)

    def loss(frozen_vars, det_params):
        deviations = anomem.deviation_maps(anomem.frozen_outputs(model, frozen_vars, x), names)
        dist = stage2.distances(det.apply(det_params, deviations), centers, names)
        return losses.deep_sad_loss(dist, jnp.zeros(8, bool))

    g_frozen, g_det = jax.jit(jax.grad(loss, argnums=(0, 1)))(frozen, params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_frozen))
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(g_det))


def test_stage2_loss_matches_a_float64_reference(tiny_config, random_images):
    """Deep SAD over scales: normal rows add d, labelled anomalies eta / (d + eps), mean over rows."""
    config = tiny_config()
    images = random_images(6)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    det = stage2.make_detector(config)
    outputs = jax.jit(anomem.frozen_outputs, static_argnums=0)(model, frozen, input_pipeline.to_float(images))
    deviations = anomem.deviation_maps(outputs, det.scale_names)
    params = init_variables(det, jax.random.key(1), deviations)
    rng = np.random.default_rng(0)
    centers = {n: jnp.asarray(rng.normal(size=config.stage2.embed_dim), jnp.float32) for n in det.scale_names}
    labelled = jnp.array([False, True, False, False, True, False])
    loss, metrics = jax.jit(stage2.loss_and_metrics, static_argnums=(1, 5))(params, det, deviations, centers,
                                                                            labelled, 0.7)

    embeddings = {n: np.asarray(e, np.float64) for n, e in jitted_apply(det)(params, deviations).items()}
    d = np.stack([((embeddings[n] - np.asarray(centers[n], np.float64)) ** 2).sum(-1) for n in det.scale_names], -1)
    lab = np.asarray(labelled)
    expected = np.where(lab[:, None], 0.7 / (d + 1e-6), d).sum(-1).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    for i, n in enumerate(det.scale_names):
        np.testing.assert_allclose(float(metrics[f"{n}/normal_distance"]), d[~lab, i].mean(), rtol=1e-5)


def test_stage2_steps_make_no_implicit_transfers(tiny_config, random_images):
    config = tiny_config(**{"stage2.synthetic_anomalies": ("rotation",)})
    images = random_images(16)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    det, tx = stage2.make_detector(config), stage2.make_optimizer(config)
    state = stage2.create_state(config, det, model, frozen, tx, images, np.ones(16, bool), mesh)
    step = stage2.make_train_step(det, model, tx, config, mesh)
    arrays = {"image": images, "labelled_anomaly": np.zeros(16, bool)}
    batches = list(input_pipeline.train_batches(arrays, config.stage2.batch_size, 1, 0, 3, mesh))
    state, _ = step(state, batches[0][1], frozen)  # compiles outside the guard
    with jax.transfer_guard("disallow"):
        for _, batch in batches[1:]:
            state, metrics = step(state, batch, frozen)
        assert np.isfinite(parallel.fetch(metrics)["loss"])


def test_centers_are_pushed_away_from_zero():
    c = stage2.push_from_zero(np.array([0.0, 0.05, -0.05, 0.3, -2.0]), 0.1)
    np.testing.assert_allclose(c, [0.1, 0.1, -0.1, 0.3, -2.0])


def _train_and_score(config, images, labelled, mesh, workdir):
    model, frozen = untrained_stage1(config, images, mesh)
    frozen_before = parallel.fetch(frozen)
    writer = metric_writers.create_default_writer(workdir, just_logging=True)
    det, trained = stage2.train(config, model, frozen, images, labelled, workdir, mesh, writer)
    fresh = stage2.create_state(config, det, model, frozen, stage2.make_optimizer(config), images, ~labelled, mesh)
    score_fn = parallel.jit_over_batch(scoring.raw_score_function(model, det, "mean"), mesh, 3)
    _, batch = next(input_pipeline.eval_batches({"image": images}, len(images), mesh))
    before = parallel.fetch(score_fn(frozen, fresh.params, fresh.centers, batch["image"]))
    after = parallel.fetch(score_fn(frozen, trained.params, trained.centers, batch["image"]))
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(parallel.fetch(frozen))):
        np.testing.assert_array_equal(a, b)
    return det, model, frozen, fresh, trained, before, after


def test_one_class_training_pulls_normal_data_to_the_centres(tiny_config, random_images, tmp_path):
    config = tiny_config(**{"stage2.epochs": 6, "stage2.learning_rate": 1e-3})
    images = random_images(16)
    labelled = np.zeros(16, bool)
    mesh = parallel.make_mesh(jax.devices()[:2])
    det, model, frozen, fresh, _, before, after = _train_and_score(config, images, labelled, mesh, str(tmp_path))
    # Centres: the mean initial embedding of the normal training data, pushed from 0.
    emb = parallel.fetch(stage2.make_embed_fn(det, model, mesh)(frozen, fresh.params, images))
    for n in det.scale_names:
        expected = stage2.push_from_zero(emb[n].mean(axis=0), config.stage2.center_eps)
        np.testing.assert_allclose(parallel.fetch(fresh.centers[n]), expected, rtol=1e-5, atol=1e-6)
        assert after[f"detector/{n}"].mean() < before[f"detector/{n}"].mean()
        # The training-free score does not depend on the detector.
        np.testing.assert_allclose(after[f"a0/{n}"], before[f"a0/{n}"], rtol=1e-6)
        assert after[f"map/{n}"].shape == (16, 8, 8)


def test_unbalanced_training_separates_labelled_anomalies(tiny_config, random_images, tmp_path):
    config = tiny_config(**{"stage2.epochs": 6, "stage2.learning_rate": 1e-3, "protocol": "unbalanced"})
    images = random_images(16)
    images[-4:] = 255 - images[-4:] // 4  # anomalies: brighter images
    labelled = np.zeros(16, bool)
    labelled[-4:] = True
    mesh = parallel.make_mesh(jax.devices()[:2])
    det, _, _, _, _, before, after = _train_and_score(config, images, labelled, mesh, str(tmp_path))
    sad = lambda s: float(losses.deep_sad_loss(  # noqa: E731
        np.stack([s[f"detector/{n}"] for n in det.scale_names], -1), labelled, config.stage2.eta))
    assert sad(after) < 0.5 * sad(before)
    total = sum(after[f"detector/{n}"] for n in det.scale_names)
    assert total[labelled].mean() > total[~labelled].mean()




def test_stage2_resumes_from_its_checkpoint_like_an_uninterrupted_run(tiny_config, random_images, tmp_path,
                                                                      batch_stream):
    config = tiny_config(**{"stage2.epochs": 2, "stage2.learning_rate": 1e-3})  # 4 steps, checkpoints every 2
    images = random_images(16)
    labelled = np.zeros(16, bool)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    writer = metric_writers.create_default_writer(str(tmp_path), just_logging=True)
    _, full = stage2.train(config, model, frozen, images, labelled, str(tmp_path / "a"), mesh, writer)

    batch_stream.interrupt_at(2)
    with pytest.raises(KeyboardInterrupt):
        stage2.train(config, model, frozen, images, labelled, str(tmp_path / "b"), mesh, writer)
    steps_run = batch_stream.record()
    _, resumed = stage2.train(config, model, frozen, images, labelled, str(tmp_path / "b"), mesh, writer)
    assert steps_run == [2, 3]
    for part in ("params", "opt_state", "centers"):
        got, want = parallel.fetch(getattr(resumed, part)), parallel.fetch(getattr(full, part))
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=part)


def test_synthetic_anomalies_are_corrupted_copies_of_each_image(random_images):
    images = input_pipeline.to_float(random_images(6, size=12))
    key = jax.random.key(0)
    rotated, masks = anomalies.synthetic_anomalies(key, images, ("rotation",))
    for got, x in zip(np.asarray(rotated), np.asarray(images)):
        assert any(np.array_equal(got, np.rot90(x, r, axes=(0, 1))) for r in (1, 2, 3))
    np.testing.assert_array_equal(masks, 1.0)  # a rotation is anomalous everywhere
    mixed, masks = anomalies.synthetic_anomalies(key, images, ("cutpaste", "scar", "rotation"))
    again, masks_again = anomalies.synthetic_anomalies(key, images, ("cutpaste", "scar", "rotation"))
    np.testing.assert_array_equal(mixed, again)
    np.testing.assert_array_equal(masks, masks_again)
    assert mixed.shape == images.shape and float(mixed.min()) >= 0.0 and float(mixed.max()) <= 1.0
    changed = np.abs(np.asarray(mixed) - np.asarray(images)).max(axis=-1)
    assert np.all(changed.reshape(6, -1).max(axis=1) > 0)  # every copy differs from its image
    assert np.all(changed[np.asarray(masks) == 0] == 0)  # and only where its mask says


def test_appended_rows_carry_their_masks(random_images):
    images = input_pipeline.to_float(random_images(4, size=12))
    given = jnp.asarray([False, True, False, False])
    out, labelled, masks = anomalies.append_synthetic_anomalies(jax.random.key(1), images, given, ("cutpaste",))
    assert out.shape[0] == labelled.shape[0] == masks.shape[0] == 8
    np.testing.assert_array_equal(labelled, [False, True, False, False, True, True, True, True])
    # A given label marks the whole image, a normal image nowhere, a pasted patch its box.
    np.testing.assert_array_equal(masks[:4], np.broadcast_to(np.asarray(given, np.float32)[:, None, None], (4, 12, 12)))
    covered = np.asarray(masks[4:]).reshape(4, -1).mean(axis=1)
    assert np.all((covered > 0) & (covered < 0.5))


def test_position_labels_mark_the_positions_a_defect_covers():
    masks = np.zeros((1, 8, 8), np.float32)
    masks[0, :4, :4] = 1.0  # the top-left quadrant
    masks[0, 6, 7] = 1.0  # one pixel of the bottom-right position
    anomalous, normal = stage2.position_labels(jnp.asarray(masks), (2, 2))
    np.testing.assert_array_equal(anomalous[0], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(normal[0], [[0, 1], [1, 0]])  # 1/16 covered: left out


def test_position_deep_sad_loss_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.01, 3.0, (3, 4, 4))
    anomalous = (rng.uniform(size=d.shape) < 0.2).astype(np.float64)
    normal = (1 - anomalous) * (rng.uniform(size=d.shape) < 0.9)
    want = (d * normal).sum() / normal.sum() + 2.0 * (anomalous / (d + 1e-6)).sum() / anomalous.sum()
    got = losses.position_deep_sad_loss(jnp.asarray(d, jnp.float32), jnp.asarray(anomalous), jnp.asarray(normal), 2.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_position_loss_teaches_the_metric_where_defects_differ():
    # Deviation maps whose defect positions differ from the rest in one channel direction,
    # at the same norm: only a detector trained per position can single them out.
    det = detector.make_detector(["scale2"], make_tiny_config(**{"stage2.detector": "metric"}).stage2)
    rng = np.random.default_rng(0)
    deviations = rng.normal(size=(8, 4, 4, 6)).astype(np.float32)
    masks = np.zeros((8, 8, 8), np.float32)
    masks[4:, 2:4, 4:8] = 1.0  # rows 4-7: a defect over positions (1, 2) and (1, 3)
    deviations[4:, 1, 2:4] = 0.0
    deviations[4:, 1, 2:4, 0] = np.linalg.norm(rng.normal(size=(4, 2, 6)), axis=-1)
    deviations = {"scale2": jnp.asarray(deviations)}
    params = det.init(jax.random.key(0), deviations)
    tx = optax.adam(3e-2)
    opt = tx.init(params)
    grad = jax.jit(jax.grad(lambda p: stage2.position_loss_and_metrics(p, det, deviations, jnp.asarray(masks), 1.0)[0]))

    def contrast(p):
        _, m = stage2.position_loss_and_metrics(p, det, deviations, jnp.asarray(masks), 1.0)
        return float(m["scale2/anomalous_distance"] / m["scale2/normal_distance"])

    before = contrast(params)
    for _ in range(100):
        updates, opt = tx.update(grad(params), opt)
        params = optax.apply_updates(params, updates)
    assert contrast(params) > 3 * before, (before, contrast(params))


def test_position_labels_change_what_stage_2_learns(tiny_config, random_images, tmp_path):
    images = random_images(16, size=16)
    mesh = parallel.make_mesh(jax.devices()[:1])
    trained = {}
    for per_position in (False, True):
        config = tiny_config(**{"image_size": 16, "stage2.epochs": 4, "stage2.learning_rate": 1e-2,
                                "stage2.detector": "metric", "stage2.position_labels": per_position,
                                "stage2.synthetic_anomalies": ("cutpaste",)})
        det, model, frozen, _, state, _, _ = _train_and_score(config, images, np.zeros(16, bool), mesh,
                                                              str(tmp_path / str(per_position)))
        trained[per_position] = state.params
    batch, _, masks = anomalies.append_synthetic_anomalies(jax.random.key(7), input_pipeline.to_float(images),
                                                           jnp.zeros(16, bool), ("cutpaste",))
    deviations = anomem.deviation_maps(jax.jit(anomem.frozen_outputs, static_argnums=0)(model, frozen, batch),
                                       det.scale_names)
    loss = {k: float(stage2.position_loss_and_metrics(p, det, deviations, masks, 1.0)[0]) for k, p in trained.items()}
    assert loss[True] < loss[False], loss  # trained on the per-position loss, it is lower there


def test_synthetic_anomalies_train_the_detector_to_separate_them(tiny_config, random_images, tmp_path):
    config = tiny_config(**{"stage2.epochs": 6, "stage2.learning_rate": 1e-3,
                            "stage2.synthetic_anomalies": ("rotation",)})
    images = random_images(16)
    labelled = np.zeros(16, bool)
    mesh = parallel.make_mesh(jax.devices()[:2])
    det, model, frozen, _, trained, _, after = _train_and_score(config, images, labelled, mesh, str(tmp_path))
    score_fn = parallel.jit_over_batch(scoring.raw_score_function(model, det, "mean"), mesh, 3)
    _, batch = next(input_pipeline.eval_batches({"image": np.rot90(images, 1, axes=(1, 2)).copy()}, 16, mesh))
    rotated = parallel.fetch(score_fn(frozen, trained.params, trained.centers, batch["image"]))
    total = lambda s: sum(s[f"detector/{n}"] for n in det.scale_names)  # noqa: E731
    assert total(rotated).mean() > total(after).mean()  # rotated images end farther from the centres


def test_knn_vectors_are_pooled_or_flattened_feature_maps(tiny_config, random_images):
    config = tiny_config()
    images = random_images(4)
    model, frozen = untrained_stage1(config, images, parallel.make_mesh(jax.devices()[:1]))
    features = jax.jit(anomem.frozen_outputs, static_argnums=0)(model, frozen, input_pipeline.to_float(images))
    for how, expect in (("mean", lambda f: f.mean(axis=(1, 2))), ("flatten", lambda f: f.reshape(len(f), -1))):
        out = jax.jit(scoring.raw_score_function(model, None, how))(frozen, {}, {}, images)
        for n in anomem.scale_names(config.model.scales):
            np.testing.assert_allclose(out[f"feature/{n}"], expect(np.asarray(features[n]["features"])),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{how} {n}")
