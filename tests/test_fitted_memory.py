"""The fitted memory (stage2.memory_fit), the metric detector and the memory's maths
against float64 NumPy references written with explicit loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscad_jax import parallel, stage2
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem, detector, fitted_memory, memory
from conftest import init_variables, untrained_stage1


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / max(np.linalg.norm(v), 1e-12)


def ref_attention(query, slots, beta):
    """softmax over slots of beta * cos(query, slot), one query."""
    logits = np.array([beta * np.dot(_unit(query), _unit(m)) for m in slots])
    e = np.exp(logits - logits.max())
    return e / e.sum()


def ref_deviation(f, r, kind):
    return _unit(f) - _unit(r) if kind == "normalized" else np.asarray(f, np.float64) - np.asarray(r, np.float64)


def test_memory_attention_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    queries, slots = rng.normal(size=(5, 6)), rng.normal(size=(7, 6))
    got = np.asarray(memory.cosine_attention(jnp.asarray(queries, jnp.float32), jnp.asarray(slots, jnp.float32), 10.0))
    want = np.stack([ref_attention(q, slots, 10.0) for q in queries])
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("kind", anomem.DEVIATIONS)
def test_deviation_map_matches_a_float64_reference(kind):
    rng = np.random.default_rng(1)
    f, r = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
    got = np.asarray(anomem.deviation_map(jnp.asarray(f, jnp.float32), jnp.asarray(r, jnp.float32), kind))
    want = np.array([[[ref_deviation(f[b, h, w], r[b, h, w], kind) for w in range(3)] for h in range(3)]
                     for b in range(2)])
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_fitted_retrieval_attends_to_the_slots_of_its_own_position_only():
    rng = np.random.default_rng(2)
    features, slots = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(2, 2, 5, 4))
    retrieved, attention = fitted_memory.retrieve(jnp.asarray(features, jnp.float32),
                                                  jnp.asarray(slots, jnp.float32), jnp.float32(7.0))
    for b in range(3):
        for h in range(2):
            for w in range(2):
                a = ref_attention(features[b, h, w], slots[h, w], 7.0)
                np.testing.assert_allclose(np.asarray(attention)[b, h, w], a, atol=2e-6)
                np.testing.assert_allclose(np.asarray(retrieved)[b, h, w], a @ slots[h, w], atol=1e-5)


def test_kmeans_recovers_the_clusters_at_every_position():
    """Two well separated directions per position (a different pair at each position):
    the two fitted slots are those directions."""
    rng = np.random.default_rng(3)
    n, h, w, c = 64, 2, 3, 6
    centres = rng.normal(size=(h, w, 2, c))
    pick = rng.integers(0, 2, size=(n, h, w))
    features = np.take_along_axis(centres[None], pick[..., None, None], axis=3)[:, :, :, 0]
    features = features + 0.01 * rng.normal(size=features.shape)
    slots = fitted_memory.fit_slots(features.astype(np.float32), 2, seed=0)
    assert slots.shape == (h, w, 2, c)
    for i in range(h):
        for j in range(w):
            cos = np.array([[np.dot(_unit(s), _unit(t)) for t in centres[i, j]] for s in slots[i, j]])
            assert sorted(cos.max(axis=0)) == pytest.approx([1.0, 1.0], abs=1e-3)


def test_kmeans_refuses_fewer_images_than_slots():
    with pytest.raises(ValueError, match="memory_fit_slots=8"):
        fitted_memory.fit_slots(np.zeros((4, 2, 2, 3), np.float32), 8, seed=0)


def test_the_fitted_memory_replaces_the_retrieval_and_the_deviation(tiny_config, random_images):
    config = tiny_config(**{"stage2.memory_fit": "kmeans", "stage2.memory_fit_slots": 3})
    images = random_images(12)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    fitted = stage2.fit_memory(config, model, frozen, images, mesh)
    assert set(fitted) == {"params", "batch_stats", fitted_memory.KEY}
    outputs = jax.jit(anomem.frozen_outputs, static_argnums=0)
    before = outputs(model, frozen, input_pipeline.to_float(images))
    after = outputs(model, fitted, input_pipeline.to_float(images))
    for name in anomem.scale_names(model.scales):
        slots = np.asarray(fitted[fitted_memory.KEY]["slots"][name])
        f = np.asarray(after[name]["features"])
        np.testing.assert_array_equal(f, np.asarray(before[name]["features"]))
        assert slots.shape == f.shape[1:3] + (3, f.shape[-1])
        b, h, w = 1, 0, f.shape[2] - 1
        a = ref_attention(f[b, h, w], slots[h, w], config.stage2.memory_fit_beta)
        want = ref_deviation(f[b, h, w], a @ slots[h, w], config.model.deviation)
        np.testing.assert_allclose(np.asarray(after[name]["deviation"])[b, h, w], want, atol=1e-4)
    # A memory fitted to these very images reconstructs them better than stage 1's shared slots.
    energy = lambda out: float(np.mean([np.mean(np.sum(np.asarray(out[n]["deviation"]) ** 2, -1))  # noqa: E731
                                        for n in anomem.scale_names(model.scales)]))
    assert energy(after) < energy(before)


def test_no_memory_fit_leaves_the_frozen_variables_alone(tiny_config, random_images):
    config = tiny_config()
    images = random_images(4)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    assert stage2.fit_memory(config, model, frozen, images, mesh) is frozen


def test_metric_detector_starts_as_the_memory_energy():
    """Identity at initialisation and centre 0: the distance is mean_hw ||D[h, w]||^2 (A0)."""
    rng = np.random.default_rng(4)
    deviations = {"scale2": jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32),
                  "scale3": jnp.asarray(rng.normal(size=(3, 2, 2, 6)), jnp.float32)}
    det = detector.MultiScaleDetector(("scale2", "scale3"), kind="metric")
    assert det.zero_centre
    params = init_variables(det, jax.random.key(0), deviations)
    embeddings = det.apply(params, deviations)
    for name, d in deviations.items():
        d = np.asarray(d, np.float64)
        want = [np.mean([[np.dot(d[b, h, w], d[b, h, w]) for w in range(d.shape[2])] for h in range(d.shape[1])])
                for b in range(3)]
        np.testing.assert_allclose(np.sum(np.asarray(embeddings[name], np.float64) ** 2, -1), want, rtol=1e-5)
    # Bias-free: a deviation-free image sits on the centre 0.
    zero = det.apply(params, {k: jnp.zeros_like(v) for k, v in deviations.items()})
    assert all(float(jnp.max(jnp.abs(v))) == 0.0 for v in zero.values())


def test_metric_detector_has_zero_centres_and_learns(tiny_config, random_images, tmp_path):
    config = tiny_config(**{"stage2.detector": "metric", "stage2.synthetic_anomalies": ("cutpaste",),
                            "stage2.epochs": 2, "stage2.learning_rate": 1e-2})
    images = random_images(16)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    from clu import metric_writers
    det, state = stage2.train(config, model, frozen, images, np.zeros(16, bool), str(tmp_path), mesh,
                              metric_writers.LoggingWriter())
    for name in det.scale_names:
        assert not np.any(np.asarray(state.centers[name]))
        kernel = np.asarray(state.params["params"][f"detector_{name}"]["metric"]["kernel"])[0, 0]
        assert not np.allclose(kernel, np.eye(kernel.shape[0]))  # trained away from the identity


def test_metric_detector_per_position_distances_match_a_float64_reference(tiny_config, random_images):
    """With a trained-like (random) W: the per-position distance ||W D[h, w]||^2, the
    detector score pooled by mean or max over positions, and the map of `detector`."""
    from mscad_jax.data.input_pipeline import to_float
    from mscad_jax.scoring import function as scoring

    config = tiny_config(**{"stage2.detector": "metric"})
    images = random_images(3)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    names = anomem.scale_names(model.scales)
    deviations = anomem.deviation_maps(anomem.frozen_outputs(model, frozen, to_float(jnp.asarray(images))), names)
    det = detector.make_detector(names, config.stage2)
    params = init_variables(det, jax.random.key(0), deviations)
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda k: jnp.asarray(rng.normal(size=k.shape), jnp.float32), params)
    centers = {n: jnp.zeros(()) for n in names}
    out = {how: jax.jit(scoring.raw_score_function(model, det, "mean", "detector", how))(frozen, params, centers,
                                                                                          images)
           for how in ("mean", "max")}
    memory_map = jax.jit(scoring.raw_score_function(model, det, "mean"))(frozen, params, centers, images)
    for n in names:
        d = np.asarray(deviations[n], np.float64)
        w = np.asarray(params["params"][f"detector_{n}"]["metric"]["kernel"], np.float64)[0, 0]  # [C_in, C_out]
        want = np.array([[[np.sum((d[b, h, x] @ w) ** 2) for x in range(d.shape[2])] for h in range(d.shape[1])]
                         for b in range(len(images))])
        np.testing.assert_allclose(np.asarray(detector.metric_position_distances(
            det.apply(params, deviations)[n], d.shape)), want, rtol=1e-4)
        np.testing.assert_allclose(out["mean"][f"detector/{n}"], want.mean(axis=(1, 2)), rtol=1e-4)
        np.testing.assert_allclose(out["max"][f"detector/{n}"], want.max(axis=(1, 2)), rtol=1e-4)
        np.testing.assert_allclose(out["mean"][f"map_level/{n}"], want.mean(axis=(1, 2)), rtol=1e-4)
        # The memory's map is the deviation energy, whatever W is.
        np.testing.assert_allclose(memory_map[f"map_level/{n}"], np.sum(d ** 2, -1).mean(axis=(1, 2)), rtol=1e-4)
        assert out["mean"][f"map/{n}"].shape == images.shape[:3]


def test_the_abstract_fitted_memory_has_the_fitted_shapes(tiny_config, random_images):
    """What ahead-of-time compilation plans for is what fitting builds."""
    config = tiny_config(**{"stage2.memory_fit": "kmeans", "stage2.memory_fit_slots": 2})
    images = random_images(4)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    fitted = stage2.fit_memory(config, model, frozen, images, mesh)[fitted_memory.KEY]
    abstract = stage2.abstract_fitted_memory(config, model, frozen, images.shape[1:], mesh)[fitted_memory.KEY]
    for name, slots in fitted["slots"].items():
        assert slots.shape == abstract["slots"][name].shape and slots.shape[2] == 2


def ref_map_retrieval(query, maps, k, penalty):
    """float64, one query map: the ridge reconstruction out of its k nearest maps (cosine
    on the flattened maps), written with explicit loops."""
    q = np.asarray(query, np.float64).ravel()
    flat = [np.asarray(m, np.float64).ravel() for m in maps]
    cos = np.array([np.dot(_unit(q), _unit(m)) for m in flat])
    nearest = np.argsort(-cos, kind="stable")[:k]
    basis = np.stack([flat[i] for i in nearest])
    gram = np.array([[np.dot(a, b) for b in basis] for a in basis]) + penalty * np.eye(k)
    coef = np.linalg.solve(gram, np.array([np.dot(a, q) for a in basis]))
    return sum(c * a for c, a in zip(coef, basis)).reshape(np.shape(query)), dict(zip(nearest, coef))


def ref_window_mean(x, w):
    """[H, W, C] mean over the w x w positions around each (zeros beyond the border, an
    even w one more position before than after)."""
    h, wd, _ = x.shape
    lo = w // 2
    out = np.zeros(x.shape, np.float64)
    for i in range(h):
        for j in range(wd):
            for di in range(w):
                for dj in range(w):
                    a, b = i - lo + di, j - lo + dj
                    if 0 <= a < h and 0 <= b < wd:
                        out[i, j] += x[a, b] / w ** 2
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_map_retrieval_matches_a_float64_ridge_reference(k):
    rng = np.random.default_rng(5)
    features, maps = rng.normal(size=(4, 3, 2, 5)), rng.normal(size=(6, 3, 2, 5))
    penalty = np.full((k,), 0.5, np.float32)
    retrieved, coefficients = fitted_memory.retrieve_maps(jnp.asarray(features, jnp.float32),
                                                          jnp.asarray(maps, jnp.float32), jnp.asarray(penalty))
    for b in range(4):
        want, coef = ref_map_retrieval(features[b], maps, k, 0.5)
        np.testing.assert_allclose(np.asarray(retrieved)[b], want, atol=1e-4)
        dense = np.array([coef.get(i, 0.0) for i in range(6)])
        np.testing.assert_allclose(np.asarray(coefficients)[b], dense, atol=1e-5)


def test_a_stored_map_is_retrieved_almost_exactly():
    """A query that is one of the stored maps comes back up to the ridge's shrinkage,
    and a stored map's neighbours hold it: the deviation of normal maps is small."""
    rng = np.random.default_rng(6)
    maps = rng.normal(size=(8, 4, 4, 3)).astype(np.float32)
    retrieved, _ = fitted_memory.retrieve_maps(jnp.asarray(maps), jnp.asarray(maps), jnp.full((3,), 1e-3))
    np.testing.assert_allclose(np.asarray(retrieved), maps, atol=1e-3)


@pytest.mark.parametrize("w", [1, 2, 3])
def test_window_mean_matches_a_float64_reference(w):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 4, 3))
    window = np.full((w, w), 1.0 / w ** 2, np.float32)
    got = np.asarray(fitted_memory.window_mean(jnp.asarray(x, jnp.float32), jnp.asarray(window)))
    for b in range(2):
        np.testing.assert_allclose(got[b], ref_window_mean(x[b], w), atol=1e-5)


def test_map_kmeans_recovers_whole_map_clusters():
    """Maps drawn around two whole-map patterns: the two fitted maps are those patterns
    (every position at once, not position by position)."""
    rng = np.random.default_rng(8)
    patterns = rng.normal(size=(2, 3, 3, 4))
    pick = rng.integers(0, 2, size=48)
    features = (patterns[pick] + 0.01 * rng.normal(size=(48, 3, 3, 4))).astype(np.float32)
    maps = fitted_memory.fit_maps(features, 2, seed=0)
    assert maps.shape == (2, 3, 3, 4)
    cos = np.array([[np.dot(_unit(m.ravel()), _unit(p.ravel())) for p in patterns] for m in maps])
    assert sorted(cos.max(axis=0)) == pytest.approx([1.0, 1.0], abs=1e-3)
    with pytest.raises(ValueError, match="memory_fit_slots=64"):
        fitted_memory.fit_maps(features, 64, seed=0)


def test_the_map_memory_replaces_the_retrieval_and_the_deviation(tiny_config, random_images):
    config = tiny_config(**{"stage2.memory_fit": "maps", "stage2.memory_fit_slots": 6,
                            "stage2.memory_fit_neighbours": 3, "stage2.memory_fit_window": 2})
    images = random_images(12)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    fitted = stage2.fit_memory(config, model, frozen, images, mesh)
    memory_entry = fitted[fitted_memory.KEY]
    abstract = stage2.abstract_fitted_memory(config, model, frozen, images.shape[1:], mesh)[fitted_memory.KEY]
    assert jax.tree.map(lambda x: x.shape, abstract) == jax.tree.map(np.shape, memory_entry)
    after = jax.jit(anomem.frozen_outputs, static_argnums=0)(model, fitted, input_pipeline.to_float(images))
    for name in anomem.scale_names(model.scales):
        maps = np.asarray(memory_entry["maps"][name])
        f = np.asarray(after[name]["features"])
        assert maps.shape == (6,) + f.shape[1:]
        want_r, _ = ref_map_retrieval(f[2], maps, 3, fitted_memory.MAP_RIDGE_PENALTY)
        np.testing.assert_allclose(np.asarray(after[name]["retrieved"])[2], want_r, atol=1e-3)
        d = np.array([[ref_deviation(f[2, h, w], want_r[h, w], config.model.deviation)
                       for w in range(f.shape[2])] for h in range(f.shape[1])])
        np.testing.assert_allclose(np.asarray(after[name]["deviation"])[2], ref_window_mean(d, 2), atol=1e-3)


def test_config_refuses_more_neighbours_than_stored_maps(tiny_config):
    from mscad_jax import config as config_lib
    from mscad_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="stage2.memory_fit_neighbours"):
        config_lib.validate(tiny_config(**{"stage2.memory_fit": "maps", "stage2.memory_fit_slots": 4,
                                           "stage2.memory_fit_neighbours": 5}))


def test_spd_solve_matches_numpy_on_an_ill_conditioned_gram():
    """Stored maps are much alike, so their gram is ill conditioned: the loop Cholesky
    still solves it as LAPACK does in float64."""
    rng = np.random.default_rng(9)
    base = rng.normal(size=(1, 40))
    rows = base + 0.05 * rng.normal(size=(3, 6, 40))  # [B, K, D], six near copies
    gram = rows @ np.swapaxes(rows, -1, -2) + np.eye(6)
    rhs = rng.normal(size=(3, 6))
    got = np.asarray(fitted_memory.spd_solve(jnp.asarray(gram, jnp.float32), jnp.asarray(rhs, jnp.float32)))
    want = np.linalg.solve(gram, rhs[..., None])[..., 0]
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_memory_fit_scales_fit_only_those_and_leave_the_others_to_stage_1(tiny_config, random_images):
    config = tiny_config(**{"stage2.memory_fit": "maps", "stage2.memory_fit_slots": 4,
                            "stage2.memory_fit_neighbours": 2, "stage2.memory_fit_scales": (3,)})
    images = random_images(8)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = untrained_stage1(config, images, mesh)
    fitted = stage2.fit_memory(config, model, frozen, images, mesh)
    assert set(fitted[fitted_memory.KEY]["maps"]) == {"scale3"}
    abstract = stage2.abstract_fitted_memory(config, model, frozen, images.shape[1:], mesh)[fitted_memory.KEY]
    assert set(abstract["maps"]) == {"scale3"}
    outputs = jax.jit(anomem.frozen_outputs, static_argnums=0)
    before = outputs(model, frozen, input_pipeline.to_float(images))
    after = outputs(model, fitted, input_pipeline.to_float(images))
    for name in anomem.scale_names(model.scales):
        same = np.array_equal(np.asarray(after[name]["deviation"]), np.asarray(before[name]["deviation"]))
        assert same == (name != "scale3"), name


def test_float16_maps_take_half_the_bytes_and_retrieve_as_float32():
    rng = np.random.default_rng(10)
    maps = {"scale2": rng.normal(size=(6, 3, 3, 4)).astype(np.float32)}
    full, half = fitted_memory.map_memory(maps, 3, 1), fitted_memory.map_memory(maps, 3, 1, "float16")
    assert half["maps"]["scale2"].dtype == np.float16
    assert half["maps"]["scale2"].nbytes * 2 == full["maps"]["scale2"].nbytes
    query = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
    got, _ = fitted_memory.retrieve_maps(query, jnp.asarray(half["maps"]["scale2"]), jnp.asarray(half["penalty"]))
    want, _ = fitted_memory.retrieve_maps(query, jnp.asarray(full["maps"]["scale2"]), jnp.asarray(full["penalty"]))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-2)
