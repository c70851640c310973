"""Seeded epoch order, global sharded batches, padded eval batches, host helpers."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mscad_jax import parallel
from mscad_jax.data import input_pipeline

N, B = 24, 8  # 3 steps per epoch


@pytest.fixture(scope="module")
def mesh4():
    assert len(jax.devices()) >= 4, "tests/conftest.py should provide 4 CPU devices"
    return parallel.make_mesh(jax.devices()[:4])


@pytest.fixture(scope="module")
def mesh1():
    return parallel.make_mesh(jax.devices()[:1])


def make_arrays(n=N):
    rng = np.random.default_rng(123)
    return {
        "image": rng.integers(0, 256, (n, 3, 3, 1), dtype=np.uint8),
        "index": np.arange(n, dtype=np.int32),
        "flag": rng.random(n) < 0.3,
    }


def collect(arrays, mesh, seed=0, start_step=0, num_steps=9, batch_size=B):
    out = {}
    for step, batch in input_pipeline.train_batches(arrays, batch_size, seed, start_step, num_steps, mesh):
        out[step] = parallel.fetch(batch)
    return out


def test_train_batches_are_global_sharded_arrays(mesh4):
    arrays = make_arrays()
    steps = list(input_pipeline.train_batches(arrays, B, 0, 0, 4, mesh4))
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    for step, batch in steps:
        assert set(batch) == set(arrays)
        for key, x in batch.items():
            assert isinstance(x, jax.Array)
            assert x.shape == (B,) + arrays[key].shape[1:]
            assert x.dtype == arrays[key].dtype
            assert isinstance(x.sharding, NamedSharding)
            assert x.sharding.spec == P(parallel.DATA_AXIS)
            assert not x.sharding.is_fully_replicated
            shards = x.addressable_shards
            assert len(shards) == 4
            assert {s.device for s in shards} == set(jax.devices()[:4])
            for s in shards:
                assert s.data.shape == (B // 4,) + arrays[key].shape[1:]
            # Shard i holds rows [2i, 2i + 2) of the global batch.
            rows = sorted((s.index[0].start, s.index[0].stop) for s in shards)
            assert rows == [(0, 2), (2, 4), (4, 6), (6, 8)]

        # Content: the rows of the seeded permutation of this step's epoch.
        epoch, position = divmod(step, N // B)
        order = input_pipeline.epoch_order(0, epoch, N)
        index = order[position * B:(position + 1) * B]
        host = parallel.fetch(batch)
        for key in arrays:
            np.testing.assert_array_equal(host[key], arrays[key][index])
        for s in batch["index"].addressable_shards:
            np.testing.assert_array_equal(np.asarray(s.data), index[s.index[0]])


def test_epoch_order_is_a_seeded_permutation():
    a = input_pipeline.epoch_order(0, 0, 100)
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    np.testing.assert_array_equal(a, input_pipeline.epoch_order(0, 0, 100))
    assert not np.array_equal(a, np.arange(100))
    assert not np.array_equal(a, input_pipeline.epoch_order(0, 1, 100))
    assert not np.array_equal(a, input_pipeline.epoch_order(1, 0, 100))


def test_each_epoch_is_a_permutation(mesh4):
    batches = collect(make_arrays(), mesh4, num_steps=9)
    assert sorted(batches) == list(range(9))
    per_epoch = N // B
    epochs = []
    for epoch in range(3):
        seen = np.concatenate([batches[epoch * per_epoch + i]["index"] for i in range(per_epoch)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(N))
        epochs.append(seen)
    # Every epoch reshuffles.
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_remainder_is_dropped_and_rows_are_distinct(mesh4):
    n = 27  # 3 full batches of 8, 3 rows left over each epoch
    arrays = make_arrays(n)
    batches = collect(arrays, mesh4, num_steps=6)
    assert input_pipeline.steps_per_epoch(n, B) == 3
    for epoch in range(2):
        seen = np.concatenate([batches[epoch * 3 + i]["index"] for i in range(3)])
        assert len(seen) == 24 and len(np.unique(seen)) == 24
        np.testing.assert_array_equal(seen, input_pipeline.epoch_order(0, epoch, n)[:24])


@pytest.mark.parametrize("start_step", [1, 3, 4, 8])
def test_resume_gives_the_same_batches(mesh4, start_step):
    arrays = make_arrays()
    full = collect(arrays, mesh4, num_steps=9)
    resumed = collect(arrays, mesh4, start_step=start_step, num_steps=9)
    assert sorted(resumed) == list(range(start_step, 9))
    for step, batch in resumed.items():
        for key in arrays:
            np.testing.assert_array_equal(batch[key], full[step][key])


def test_order_depends_on_seed(mesh4):
    arrays = make_arrays()
    a = collect(arrays, mesh4, seed=0, num_steps=3)
    b = collect(arrays, mesh4, seed=1, num_steps=3)
    again = collect(arrays, mesh4, seed=0, num_steps=3)
    assert any(not np.array_equal(a[s]["index"], b[s]["index"]) for s in range(3))
    for s in range(3):
        np.testing.assert_array_equal(a[s]["index"], again[s]["index"])


def test_batches_independent_of_device_count(mesh1, mesh4):
    arrays = make_arrays()
    one = list(input_pipeline.train_batches(arrays, B, 5, 0, 6, mesh1))
    four = collect(arrays, mesh4, seed=5, num_steps=6)
    mesh2 = parallel.make_mesh(jax.devices()[:2])
    two = collect(arrays, mesh2, seed=5, num_steps=6)
    for step, batch in one:
        assert len(batch["image"].addressable_shards) == 1
        assert batch["image"].addressable_shards[0].data.shape == (B, 3, 3, 1)
        host = parallel.fetch(batch)
        for key in arrays:
            np.testing.assert_array_equal(host[key], four[step][key])
            np.testing.assert_array_equal(host[key], two[step][key])


def test_train_batches_with_too_large_batch(mesh4):
    with pytest.raises(ValueError, match="32"):
        next(input_pipeline.train_batches(make_arrays(), 32, 0, 0, 1, mesh4))


def test_steps_per_epoch():
    assert input_pipeline.steps_per_epoch(24, 8) == 3
    assert input_pipeline.steps_per_epoch(31, 8) == 3
    assert input_pipeline.steps_per_epoch(8, 8) == 1
    with pytest.raises(ValueError) as e:
        input_pipeline.steps_per_epoch(5, 64)
    assert "64" in str(e.value) and "batch" in str(e.value)


@pytest.mark.parametrize("n", [10, 12, 3])
def test_eval_batches_pad_and_recover(mesh4, n):
    arrays = make_arrays(n)
    batches = list(input_pipeline.eval_batches(arrays, 4, mesh4))
    assert len(batches) == -(-n // 4)
    valid_counts = [v for v, _ in batches]
    assert valid_counts == [min(4, n - 4 * i) for i in range(len(batches))]
    recovered = {k: [] for k in arrays}
    for valid, batch in batches:
        for key, x in batch.items():
            assert isinstance(x, jax.Array) and x.shape == (4,) + arrays[key].shape[1:]
            assert len(x.addressable_shards) == 4
            host = parallel.fetch(x)
            assert host.dtype == arrays[key].dtype
            # Padding rows are zeros.
            assert not host[valid:].any()
            recovered[key].append(host[:valid])
    for key in arrays:
        np.testing.assert_array_equal(np.concatenate(recovered[key]), arrays[key])


def test_to_float():
    x = np.array([[0, 51, 255]], np.uint8)
    y = input_pipeline.to_float(jax.numpy.asarray(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.asarray(y), [[0.0, 0.2, 1.0]], rtol=1e-6)


# ---- parallel helpers ---------------------------------------------------------------


def test_make_mesh(mesh4):
    assert mesh4.axis_names == (parallel.DATA_AXIS,)
    assert mesh4.devices.shape == (4,)
    assert parallel.make_mesh().devices.size == jax.device_count()


@pytest.mark.parametrize("batch", [4, 8, 64])
def test_process_rows_single_process(mesh1, mesh4, batch):
    assert jax.process_count() == 1
    assert parallel.process_rows(mesh4, batch) == slice(0, batch)
    assert parallel.process_rows(mesh1, batch) == slice(0, batch)


def test_to_global_and_fetch_round_trip(mesh4):
    tree = {"a": np.arange(32, dtype=np.float32).reshape(8, 4), "b": [np.arange(8, dtype=np.int32), np.ones((4, 2), np.int8)]}
    placed = parallel.to_global(tree, mesh4)
    assert placed["a"].sharding == parallel.batch_sharded(mesh4)
    fetched = parallel.fetch(placed)
    assert jax.tree.structure(fetched) == jax.tree.structure(tree)
    for got, want in zip(jax.tree.leaves(fetched), jax.tree.leaves(tree)):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_replicate_and_fetch(mesh4):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(2.5)}
    placed = parallel.replicate(tree, mesh4)
    assert placed["w"].sharding.is_fully_replicated
    assert len(placed["w"].addressable_shards) == 4
    for shard in placed["w"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), tree["w"])
    fetched = parallel.fetch(placed)
    assert isinstance(fetched["w"], np.ndarray)
    np.testing.assert_array_equal(fetched["w"], tree["w"])
    assert float(fetched["s"]) == 2.5


def test_fetch_plain_and_computed_arrays(mesh4):
    x = parallel.to_global(np.arange(16, dtype=np.float32).reshape(8, 2), mesh4)
    doubled = jax.jit(lambda v: v * 2)(x)
    out = parallel.fetch({"doubled": doubled, "host": np.arange(3)})
    assert isinstance(out["doubled"], np.ndarray) and isinstance(out["host"], np.ndarray)
    np.testing.assert_array_equal(out["doubled"], np.arange(16, dtype=np.float32).reshape(8, 2) * 2)
    np.testing.assert_array_equal(out["host"], np.arange(3))


def test_maybe_initialize_distributed_is_a_no_op_without_a_cluster(monkeypatch):
    for name in parallel._CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    assert parallel.maybe_initialize_distributed() is False
