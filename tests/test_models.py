"""ResNet stage maps, the Hopfield memory and the AnoMem / detector modules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscad_jax.models import anomem, detector, memory, resnet
from conftest import init_variables, jitted_apply


@pytest.mark.parametrize("depth", [10, 18, 50])
def test_resnet_returns_every_stage(depth):
    model = resnet.ResNet(depth=depth, width=4)
    x = jnp.ones((2, 16, 16, 3))
    variables = init_variables(model, jax.random.key(0), x, train=False)
    maps = jitted_apply(model, train=False)(variables, x)
    assert len(maps) == 4
    for s, f in enumerate(maps, start=1):
        side = 16 // 2 ** (s - 1)
        assert f.shape == (2, side, side, resnet.stage_channels(depth, 4, s))


def test_resnet_train_mode_updates_batch_stats():
    model = resnet.ResNet(depth=10, width=4)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    variables = init_variables(model, jax.random.key(0), x, train=False)
    _, updated = jitted_apply(model, train=True, mutable=["batch_stats"])(variables, x)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updated["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_cosine_memory_retrieves_convex_combination_of_slots():
    mem = memory.HopfieldMemory(num_slots=5, beta=10.0)
    f = jax.random.normal(jax.random.key(0), (2, 3, 3, 8))
    variables = mem.init(jax.random.key(1), f)
    retrieved, attention = mem.apply(variables, f)
    slots = variables["params"]["slots"]
    assert retrieved.shape == f.shape and attention.shape == (2, 3, 3, 5)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(retrieved, np.einsum("bhwn,nc->bhwc", attention, slots), rtol=1e-5, atol=1e-6)


def test_cosine_memory_retrieves_a_stored_pattern_with_high_beta():
    mem = memory.HopfieldMemory(num_slots=4, beta=1000.0)
    variables = mem.init(jax.random.key(1), jnp.zeros((1, 8)))
    slots = variables["params"]["slots"]
    # Querying with a scaled slot returns that slot: attention is invariant to the query's norm.
    retrieved, attention = mem.apply(variables, 3.0 * slots[2:3])
    np.testing.assert_allclose(retrieved[0], slots[2], rtol=1e-4, atol=1e-4)
    assert int(jnp.argmax(attention[0])) == 2


def test_projected_memory_has_projections_and_keeps_the_channel_count():
    mem = memory.HopfieldMemory(num_slots=6, projected=True, key_dim=4)
    f = jnp.ones((2, 4, 4, 8))
    variables = mem.init(jax.random.key(0), f)
    assert set(variables["params"]) == {"slots", "w_q", "w_k", "w_v"}
    retrieved, attention = mem.apply(variables, f)
    assert retrieved.shape == f.shape and attention.shape == (2, 4, 4, 6)


def test_anomem_outputs_per_configured_scale():
    model = anomem.AnoMem(depth=10, width=4, scales=(1, 3), num_slots=8, proj_dim=6)
    x = jnp.ones((4, 16, 16, 1))
    variables = init_variables(model, jax.random.key(0), x, train=False)
    assert {"memory_scale1", "memory_scale3", "head_scale1", "head_scale3"} <= set(variables["params"])
    out = jitted_apply(model, train=False)(variables, x)
    assert set(out) == {"scale1", "scale3"}
    assert out["scale1"]["features"].shape == (4, 16, 16, 4)
    assert out["scale3"]["retrieved"].shape == (4, 4, 4, 16)
    assert out["scale3"]["attention"].shape == (4, 4, 4, 8)
    assert out["scale1"]["u"].shape == out["scale1"]["v"].shape == (4, 6)
    no_heads = jitted_apply(model, train=False, heads=False)(variables, x)
    assert "u" not in no_heads["scale1"]


def test_detector_is_bias_free_and_maps_zero_to_zero():
    det = detector.MultiScaleDetector(("scale2", "scale3"), hidden=8, embed_dim=5)
    deviations = {"scale2": jnp.ones((2, 8, 8, 4)), "scale3": jnp.ones((2, 4, 4, 8))}
    variables = det.init(jax.random.key(0), deviations)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
    assert names and not any("bias" in n for n in names)
    out = det.apply(variables, {k: jnp.zeros_like(v) for k, v in deviations.items()})
    assert out["scale2"].shape == (2, 5)
    np.testing.assert_array_equal(out["scale3"], 0.0)


def test_flatten_detector_sees_where_a_deviation_is():
    det = detector.MultiScaleDetector(("scale2",), hidden=4, embed_dim=3, pooling="flatten")
    # Two inner positions: each has its whole 3x3 neighbourhood inside the 4x4 map.
    left, right = np.zeros((1, 4, 4, 2), np.float32), np.zeros((1, 4, 4, 2), np.float32)
    left[0, 1, 1], right[0, 2, 2] = 1.0, 1.0
    variables = det.init(jax.random.key(0), {"scale2": jnp.asarray(left)})
    out = lambda x: np.asarray(det.apply(variables, {"scale2": jnp.asarray(x)})["scale2"])  # noqa: E731
    assert not np.allclose(out(left), out(right))  # same deviation, other place: other embedding
    pooled = detector.MultiScaleDetector(("scale2",), hidden=4, embed_dim=3, pooling="mean")
    v = pooled.init(jax.random.key(0), {"scale2": jnp.asarray(left)})
    # Global average pooling cannot tell them apart: every 3x3 tap sees the deviation once.
    np.testing.assert_allclose(pooled.apply(v, {"scale2": jnp.asarray(left)})["scale2"],
                               pooled.apply(v, {"scale2": jnp.asarray(right)})["scale2"], atol=1e-6)


def test_rotation_head_predicts_four_classes_from_the_deepest_scale():
    model = anomem.AnoMem(depth=10, width=4, scales=(2, 3), num_slots=4, proj_dim=4, rotation_head=True)
    x = jnp.asarray(np.random.default_rng(0).random((3, 8, 8, 1)), jnp.float32)
    variables = init_variables(model, jax.random.key(0), x, train=False)
    out = jitted_apply(model, train=False)(variables, x)
    assert out[anomem.ROTATION_LOGITS].shape == (3, anomem.NUM_ROTATIONS)
    assert variables["params"]["rotation_head"]["kernel"].shape == (16, anomem.NUM_ROTATIONS)  # scale 3: 4 * 2**2
    np.testing.assert_array_equal(anomem.rotate(anomem.rotate(x, 1), 3), x)


def test_memory_usage_counts_slots_over_one_percent():
    attention = np.zeros((2, 3, 3, 4), np.float32)
    attention[..., 0] = 0.5
    attention[..., 1] = 0.495
    attention[..., 2] = 0.005
    entropy, used = memory.usage(attention)
    assert int(used) == 2
    assert 0 < float(entropy) < np.log(4)


def test_model_is_built_from_the_config_section_as_is():
    """AnoMem's fields are the config's model fields: `AnoMem(**config.model)`."""
    from mscad_jax import config as config_lib

    model = anomem.AnoMem(**config_lib.base_config().model)
    assert model.depth == 18 and model.dtype == "float32"
    assert set(config_lib.base_config().model) <= {f.name for f in dataclasses.fields(model)}
