"""Protocol splits (DESIGN section 2) on real and mocked sources.

Fashion-MNIST comes from the shared prepared TFDS copy (loaded once per module);
digits from scikit-learn; CIFAR-10/100 and SVHN from `tfds.testing.mock_data`. Image
folders are tested in test_image_folders.py.
"""

import os

import numpy as np
import pytest

from mscad_jax import config as config_lib
from mscad_jax.data import sources

from protocol_checks import REPO, build, check_common, get_config, row_hashes


# ---- Fashion-MNIST (shared prepared copy) -------------------------------------------


def _fashion_mnist_dir():
    candidates = [os.environ.get("TFDS_DATA_DIR"), str(REPO.parent / "shared" / "tensorflow_datasets")]
    for path in candidates:
        if path and os.path.isdir(os.path.join(path, "fashion_mnist")):
            return path
    return None


FMNIST_DIR = _fashion_mnist_dir()


@pytest.fixture(scope="module")
def fmnist():
    """Both Fashion-MNIST splits at 28x28, loaded once through the real source."""
    if FMNIST_DIR is None:
        pytest.skip("the prepared Fashion-MNIST TFDS copy was found neither in $TFDS_DATA_DIR "
                    f"nor in {REPO.parent / 'shared' / 'tensorflow_datasets'}")
    return {split: sources.load_split("fashion_mnist", split, 28, 1, data_dir=FMNIST_DIR)
            for split in ("train", "test")}


@pytest.fixture
def fmnist_build(fmnist, monkeypatch):
    """build_protocol for Fashion-MNIST with the splits served from the module's copy.

    Only a request with exactly the fixture's arguments is served from memory, and every
    request is recorded, so the protocol code is exercised as it is.
    """
    real = sources.load_split
    calls = []

    def load_split(dataset, split, image_size, channels, *, data_dir=None, coarse_label=False,
                   image_folder_dir=None):
        calls.append((dataset, split, image_size, channels, data_dir, coarse_label))
        if (dataset, image_size, channels, data_dir, coarse_label) == ("fashion_mnist", 28, 1, FMNIST_DIR, False):
            return fmnist[split]
        return real(dataset, split, image_size, channels, data_dir=data_dir, coarse_label=coarse_label,
                    image_folder_dir=image_folder_dir)

    monkeypatch.setattr(sources, "load_split", load_split)

    def run(arg):
        config = get_config("fashion_mnist", arg)
        config.image_size = 28
        config.data_dir = FMNIST_DIR
        data = build(config)
        assert {c[1] for c in calls} == {"train", "test"}
        assert all(c[:6] == ("fashion_mnist", c[1], 28, 1, FMNIST_DIR, False) for c in calls), calls
        return data

    return run


def test_fashion_mnist_source(fmnist):
    train, test = fmnist["train"], fmnist["test"]
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    assert train.images.max() == 255 and train.images.min() == 0


def test_fashion_mnist_one_class(fmnist, fmnist_build):
    train, test = fmnist["train"], fmnist["test"]
    data = fmnist_build("normal_class=0")
    check_common(data, 28, 1)
    assert len(data.train_images) == 6000
    np.testing.assert_array_equal(data.train_images, train.images[train.labels == 0])
    assert not data.train_labelled_anomaly.any()
    assert len(data.test_images) == 10000
    assert int(data.test_labels.sum()) == 9000
    np.testing.assert_array_equal(data.test_labels, (data.test_classes != 0).astype(np.int32))
    np.testing.assert_array_equal(data.test_classes, test.labels)
    np.testing.assert_array_equal(data.test_images, test.images)
    assert data.test_masks is None


def test_fashion_mnist_one_class_other_class(fmnist, fmnist_build):
    train = fmnist["train"]
    data = fmnist_build("normal_class=7")
    np.testing.assert_array_equal(data.train_images, train.images[train.labels == 7])
    assert int(data.test_labels.sum()) == 9000
    assert (data.test_labels == 0).sum() == (data.test_classes == 7).sum() == 1000


def test_fashion_mnist_unbalanced(fmnist, fmnist_build):
    train = fmnist["train"]
    hashes = np.array(row_hashes(train.images), dtype=object)
    class0 = set(hashes[train.labels == 0])
    others = set(hashes[train.labels != 0])
    assert not class0 & others  # so membership tells the class

    data = fmnist_build("normal_class=0,protocol=unbalanced,anomaly_ratio=0.05")
    check_common(data, 28, 1)
    flags = data.train_labelled_anomaly
    assert int(flags.sum()) == 300 and data.num_train_normal == 6000
    np.testing.assert_array_equal(data.train_images[~flags], train.images[train.labels == 0])
    labelled = row_hashes(data.train_images[flags])
    assert len(set(labelled)) == 300  # drawn without replacement
    assert not set(labelled) & class0
    assert set(labelled) <= others
    # Drawn from more than one of the other classes.
    label_of = {h: y for h, y in zip(hashes, train.labels)}
    assert len({label_of[h] for h in labelled}) > 3
    # Test split as in one_class.
    assert int(data.test_labels.sum()) == 9000

    again = fmnist_build("normal_class=0,protocol=unbalanced,anomaly_ratio=0.05")
    np.testing.assert_array_equal(again.train_images, data.train_images)
    np.testing.assert_array_equal(again.train_labelled_anomaly, flags)

    other_seed = fmnist_build("normal_class=0,protocol=unbalanced,anomaly_ratio=0.05,seed=1")
    assert int(other_seed.train_labelled_anomaly.sum()) == 300
    other_labelled = set(row_hashes(other_seed.train_images[other_seed.train_labelled_anomaly]))
    assert other_labelled != set(labelled)
    assert other_labelled <= others


def test_fashion_mnist_unbalanced_known_classes(fmnist, fmnist_build):
    train = fmnist["train"]
    hashes = np.array(row_hashes(train.images), dtype=object)
    class3 = set(hashes[train.labels == 3])
    data = fmnist_build("normal_class=0,protocol=unbalanced,anomaly_ratio=0.1,known_anomaly_classes=3")
    flags = data.train_labelled_anomaly
    assert int(flags.sum()) == 600
    labelled = set(row_hashes(data.train_images[flags]))
    assert len(labelled) == 600 and labelled <= class3

    two = fmnist_build("normal_class=0,protocol=unbalanced,anomaly_ratio=0.1,known_anomaly_classes=3+5")
    two_labelled = set(row_hashes(two.train_images[two.train_labelled_anomaly]))
    class35 = class3 | set(hashes[train.labels == 5])
    assert len(two_labelled) == 600 and two_labelled <= class35
    assert two_labelled & class3 and two_labelled - class3


# ---- digits (scikit-learn, offline) -------------------------------------------------


@pytest.fixture(scope="module")
def digits_counts():
    from sklearn.datasets import load_digits

    return np.bincount(load_digits().target)


@pytest.mark.parametrize("normal_class", [0, 7])
def test_digits_one_class_counts(digits_counts, normal_class):
    config = get_config("default", f"normal_class={normal_class}")
    data = build(config)
    check_common(data, 16, 1)
    n_total = int(digits_counts.sum())
    assert len(data.test_images) == int(np.ceil(0.3 * n_total))  # 540 of 1797
    test_counts = np.bincount(data.test_classes, minlength=10)
    # A stratified 70/30 split: each class contributes ~30% of itself to the test split.
    assert np.all(np.abs(test_counts - 0.3 * digits_counts) <= 1)
    n_normal_test = int(test_counts[normal_class])
    assert len(data.train_images) + n_normal_test == digits_counts[normal_class]
    assert not data.train_labelled_anomaly.any()
    np.testing.assert_array_equal(data.test_labels, (data.test_classes != normal_class).astype(np.int32))
    assert int(data.test_labels.sum()) == len(data.test_images) - n_normal_test
    assert data.test_masks is None


def test_linear_probe_splits_come_with_the_protocol(digits_counts):
    """eval.linear_eval: the whole dataset with class labels, training part capped (seeded)."""
    assert build(get_config("default")).probe is None
    config = get_config("default", "normal_class=3")
    config.eval.linear_eval = True
    config.eval.linear_eval_max_examples = 500
    train, test = build(config).probe
    again, _ = build(config).probe
    assert len(train) == 500 and len(test) == 540
    assert set(np.unique(train.labels)) == set(range(10)) and set(np.unique(test.labels)) == set(range(10))
    np.testing.assert_array_equal(train.images, again.images)


def test_digits_one_class_training_images_are_the_normal_class():
    split = sources.load_split("digits", "train", 16, 1)
    data = build(get_config("default", "normal_class=4"))
    np.testing.assert_array_equal(data.train_images, split.images[split.labels == 4])
    # Train and test are disjoint.
    assert not set(row_hashes(data.train_images)) & set(row_hashes(data.test_images[data.test_classes == 4]))


def test_digits_style():
    reference = build(get_config("default", "normal_class=2"))
    normal_test = reference.test_images[reference.test_classes == 2]
    m = len(normal_test)

    data = build(get_config("default", "normal_class=2,anomaly_type=style"))
    check_common(data, 16, 1)
    assert len(data.test_images) == 2 * m
    np.testing.assert_array_equal(data.test_labels, np.r_[np.zeros(m), np.ones(m)].astype(np.int32))
    np.testing.assert_array_equal(data.test_images[:m], normal_test)
    corrupted = data.test_images[m:]
    assert (corrupted != normal_test).any(axis=(1, 2, 3)).all()
    assert np.all(data.test_classes == 2)
    assert data.test_masks is None
    np.testing.assert_array_equal(data.train_images, reference.train_images)

    other = build(get_config("default", "normal_class=2,anomaly_type=style,style_corruption=contrast"))
    assert not np.array_equal(other.test_images[m:], corrupted)
    np.testing.assert_array_equal(build(get_config("default", "normal_class=2,anomaly_type=style")).test_images,
                                  data.test_images)


@pytest.mark.parametrize("kind", ["cutpaste", "scar"])
def test_digits_local_masks(kind):
    reference = build(get_config("default", "normal_class=5"))
    normal_test = reference.test_images[reference.test_classes == 5]
    m = len(normal_test)

    data = build(get_config("default", f"normal_class=5,anomaly_type=local,local_kind={kind}"))
    check_common(data, 16, 1)
    assert len(data.test_images) == 2 * m
    np.testing.assert_array_equal(data.test_labels, np.r_[np.zeros(m), np.ones(m)].astype(np.int32))
    masks = data.test_masks
    assert masks is not None and masks.shape == (2 * m, 16, 16) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert not masks[:m].any()
    assert (masks[m:].sum(axis=(1, 2)) > 0).all()
    assert (masks[m:].sum(axis=(1, 2)) < 16 * 16).all()
    np.testing.assert_array_equal(data.test_images[:m], normal_test)
    # Pixels outside the mask are the normal image's.
    corrupted, outside = data.test_images[m:, ..., 0], masks[m:] == 0
    np.testing.assert_array_equal(corrupted[outside], normal_test[..., 0][outside])


def test_digits_unbalanced_style_labelled_anomalies():
    reference = build(get_config("default", "normal_class=1"))
    data = build(get_config("default", "normal_class=1,protocol=unbalanced,anomaly_ratio=0.2,anomaly_type=style"))
    n = len(reference.train_images)
    flags = data.train_labelled_anomaly
    assert int(flags.sum()) == int(round(0.2 * n)) and data.num_train_normal == n
    np.testing.assert_array_equal(data.train_images[~flags], reference.train_images)
    # Corrupted copies, not the normal images themselves.
    assert not set(row_hashes(data.train_images[flags])) & set(row_hashes(reference.train_images))


def test_digits_unbalanced_object_known_classes():
    split = sources.load_split("digits", "train", 16, 1)
    data = build(get_config("default", "normal_class=0,protocol=unbalanced,anomaly_ratio=0.1,known_anomaly_classes=8"))
    flags = data.train_labelled_anomaly
    assert int(flags.sum()) == int(round(0.1 * (split.labels == 0).sum()))
    assert set(row_hashes(data.train_images[flags])) <= set(row_hashes(split.images[split.labels == 8]))


def test_digits_unbalanced_too_many_anomalies():
    # Class 8 holds fewer training images than class 0: ratio 1 asks for more than exist.
    split = sources.load_split("digits", "train", 16, 1)
    n0, n8 = (split.labels == 0).sum(), (split.labels == 8).sum()
    config = get_config("default", "normal_class=0,protocol=unbalanced,anomaly_ratio=1.0,known_anomaly_classes=8")
    assert n0 > n8  # fixed split: class 0 has more training images than class 8
    with pytest.raises(config_lib.ConfigError, match="anomaly_ratio"):
        build(config)


def test_digits_caps():
    full = build(get_config("default", "normal_class=3"))
    capped = build(get_config("default", "normal_class=3,max_train_examples=50,max_test_examples=100"))
    check_common(capped, 16, 1)
    assert len(capped.train_images) == 50 and len(capped.test_images) == 100
    assert set(row_hashes(capped.train_images)) <= set(row_hashes(full.train_images))
    full_test = {(h, int(y), int(c)) for h, y, c in zip(row_hashes(full.test_images), full.test_labels,
                                                         full.test_classes)}
    capped_test = list(zip(row_hashes(capped.test_images), capped.test_labels.tolist(),
                           capped.test_classes.tolist()))
    assert len(set(capped_test)) == 100 and set(capped_test) <= full_test
    np.testing.assert_array_equal(capped.test_labels, (capped.test_classes != 3).astype(np.int32))

    again = build(get_config("default", "normal_class=3,max_train_examples=50,max_test_examples=100"))
    np.testing.assert_array_equal(again.train_images, capped.train_images)
    np.testing.assert_array_equal(again.test_images, capped.test_images)
    other = build(get_config("default", "normal_class=3,max_train_examples=50,max_test_examples=100,seed=1"))
    assert not np.array_equal(other.test_images, capped.test_images)

    # Caps larger than the data change nothing.
    loose = build(get_config("default", "normal_class=3,max_train_examples=100000,max_test_examples=100000"))
    np.testing.assert_array_equal(loose.train_images, full.train_images)
    np.testing.assert_array_equal(loose.test_images, full.test_images)


def test_digits_local_caps_keep_masks_aligned():
    data = build(get_config("default", "normal_class=6,anomaly_type=local,max_test_examples=30"))
    assert len(data.test_images) == len(data.test_masks) == 30
    np.testing.assert_array_equal(data.test_masks.any(axis=(1, 2)), data.test_labels.astype(bool))


# ---- CIFAR-10 / CIFAR-100 / SVHN (mocked TFDS) --------------------------------------

MOCK_EXAMPLES = 200


@pytest.fixture
def mock_tfds():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield tfds


def _raw_labels(tfds, name, split, key):
    ds = tfds.load(name, split=split, shuffle_files=False)
    return np.array([example[key] for example in tfds.as_numpy(ds)], np.int64)


def test_cifar10_one_class_mocked(mock_tfds):
    labels = _raw_labels(mock_tfds, "cifar10", "train", "label")
    normal = int(np.bincount(labels).argmax())
    data = build(get_config("cifar10", f"image_size=16,normal_class={normal}"))
    check_common(data, 16, 3)
    assert len(data.train_images) == int((labels == normal).sum()) > 0
    test_labels = _raw_labels(mock_tfds, "cifar10", "test", "label")
    assert len(data.test_images) == MOCK_EXAMPLES
    np.testing.assert_array_equal(data.test_classes, test_labels)
    np.testing.assert_array_equal(data.test_labels, (test_labels != normal).astype(np.int32))
    split = sources.load_split("cifar10", "train", 16, 3)
    np.testing.assert_array_equal(data.train_images, split.images[split.labels == normal])


def test_cifar100_coarse_labels_mocked(mock_tfds):
    coarse = _raw_labels(mock_tfds, "cifar100", "test", "coarse_label")
    fine = _raw_labels(mock_tfds, "cifar100", "test", "label")
    assert coarse.max() <= 19 and not np.array_equal(coarse, fine)
    train_coarse = _raw_labels(mock_tfds, "cifar100", "train", "coarse_label")
    normal = 19  # the last super-class
    assert (train_coarse == normal).any(), "mock data should hold super-class 19; raise MOCK_EXAMPLES"
    config = get_config("cifar100", f"image_size=16,normal_class={normal}")
    assert config.coarse_label
    data = build(config)
    check_common(data, 16, 3)
    np.testing.assert_array_equal(data.test_classes, coarse)
    np.testing.assert_array_equal(data.test_labels, (coarse != normal).astype(np.int32))
    assert len(data.train_images) == int((train_coarse == normal).sum()) > 0


def test_cifar10_ood_svhn_mocked(mock_tfds):
    config = get_config("cifar10", "image_size=16,protocol=ood")
    assert tuple(config.ood_datasets) == ("svhn_cropped",)
    data = build(config)
    check_common(data, 16, 3)
    n = MOCK_EXAMPLES
    assert len(data.train_images) == n and not data.train_labelled_anomaly.any()
    assert len(data.test_images) == 2 * n
    np.testing.assert_array_equal(data.test_labels, np.r_[np.zeros(n), np.ones(n)].astype(np.int32))
    np.testing.assert_array_equal(data.test_classes[:n], _raw_labels(mock_tfds, "cifar10", "test", "label"))
    assert np.all(data.test_classes[n:] == -1)
    np.testing.assert_array_equal(data.test_images[:n], sources.load_split("cifar10", "test", 16, 3).images)
    np.testing.assert_array_equal(data.test_images[n:], sources.load_split("svhn_cropped", "test", 16, 3).images)


def test_cifar10_style_uses_cifar10_corrupted_mocked(mock_tfds):
    labels = _raw_labels(mock_tfds, "cifar10", "test", "label")
    normal = int(np.bincount(labels).argmax())
    config = get_config("cifar10", f"image_size=16,normal_class={normal},anomaly_type=style,"
                                   "style_corruption=contrast,style_severity=2")
    data = build(config)
    corrupted = sources.load_split("cifar10_corrupted/contrast_2", "test", 16, 3)
    expected = corrupted.images[corrupted.labels == normal]
    m = int((labels == normal).sum())
    np.testing.assert_array_equal(data.test_images[m:], expected)
    np.testing.assert_array_equal(data.test_labels, np.r_[np.zeros(m), np.ones(len(expected))].astype(np.int32))
    assert data.test_masks is None


def test_ood_grayscale_into_rgb_mocked(mock_tfds):
    # An OOD set with another channel count is converted to the in-distribution's.
    config = get_config("cifar10", "image_size=16,protocol=ood,ood_datasets=mnist+svhn_cropped")
    data = build(config)
    check_common(data, 16, 3)
    assert len(data.test_images) == 3 * MOCK_EXAMPLES
    mnist_rows = data.test_images[MOCK_EXAMPLES:2 * MOCK_EXAMPLES]
    assert np.array_equal(mnist_rows[..., 0], mnist_rows[..., 1]) and np.array_equal(mnist_rows[..., 0],
                                                                                    mnist_rows[..., 2])
