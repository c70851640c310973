"""Protocol splits (DESIGN section 2): which images train, which test, which are anomalies.

`build_protocol(config)` returns a `ProtocolData`; every test example carries an
anomaly label (1 = anomaly) and every training example a "labelled anomaly" flag
(only ever True in the unbalanced protocol). All draws use `config.seed`.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mscad_jax.errors import ConfigError
from mscad_jax.data import sources


@dataclasses.dataclass(frozen=True)
class Validation:
    """Validation data carved from the dataset's train split only: held-out normal
    training images and anomalies that are not in the test split (other classes'
    training images, or anomalies synthesised on held-out normal images)."""

    images: np.ndarray  # uint8 [V, S, S, C]: the held-out normals first, then the anomalies
    labels: np.ndarray  # int32 [V], 1 = anomaly
    classes: np.ndarray  # int64 [V], source class
    masks: np.ndarray | None  # float32 [V, S, S] anomalous pixels, for synthesised local anomalies
    source: str  # where the anomalies come from: 'other classes' | 'synthesised <kind>' | '<ood dataset>'

    @property
    def normal_images(self) -> np.ndarray:
        return self.images[self.labels == 0]


@dataclasses.dataclass(frozen=True)
class ProtocolData:
    """Training and test arrays for one experiment."""

    train_images: np.ndarray  # uint8 [N, S, S, C]
    train_labelled_anomaly: np.ndarray  # bool [N]
    test_images: np.ndarray  # uint8 [M, S, S, C]
    test_labels: np.ndarray  # int32 [M], 1 = anomaly
    test_classes: np.ndarray  # int64 [M], source class (-1 for out-of-distribution sets)
    test_masks: np.ndarray | None  # float32 [M, S, S] anomalous pixels, when known
    # eval.linear_eval: (train, test) of the whole dataset with class labels (train capped
    # at eval.linear_eval_max_examples, a seeded subset), for the linear probe.
    probe: tuple[sources.Split, sources.Split] | None = None
    test_paths: np.ndarray | None = None  # str [M], the files of image-folder datasets
    class_names: tuple[str, ...] | None = None  # the dataset's class names, by label
    # validation.fraction > 0: held-out normal training images (never trained on) and
    # validation anomalies from the TRAIN split (`Validation`), for every choice.
    validation: "Validation | None" = None

    @property
    def num_train_normal(self) -> int:
        return int((~self.train_labelled_anomaly).sum())

    def summary(self) -> dict[str, int]:
        return {
            "num_train": len(self.train_images),
            "num_train_normal": self.num_train_normal,
            "num_train_labelled_anomalies": int(self.train_labelled_anomaly.sum()),
            "num_test": len(self.test_labels),
            "num_anomalies": int(self.test_labels.sum()),
        }


def build_protocol(config: ml_collections.ConfigDict) -> ProtocolData:
    """Loads the sources the config names and applies its protocol and anomaly type."""
    channels = _channels(config)
    load = lambda name, split: sources.load_split(  # noqa: E731
        name, split, config.image_size, channels, data_dir=config.data_dir,
        coarse_label=config.coarse_label and name == config.dataset,
        image_folder_dir=config.image_folder_dir)
    train, test = load(config.dataset, "train"), load(config.dataset, "test")
    data = dataclasses.replace(_select(config, train, test, load), class_names=train.class_names)
    if config.eval.linear_eval:
        if len(train) > config.eval.linear_eval_max_examples:
            pick = np.random.default_rng([config.seed, 8]).choice(len(train), config.eval.linear_eval_max_examples,
                                                                   replace=False)
            train = train.take(np.sort(pick))
        data = dataclasses.replace(data, probe=(train, test))
    return data


def _select(config: ml_collections.ConfigDict, train: sources.Split, test: sources.Split, load) -> ProtocolData:
    """The protocol's training and test sets, from the dataset's train and test splits."""
    rng = np.random.default_rng([config.seed, 1])

    if config.protocol == "ood":
        ood = [load(name, "test") for name in config.ood_datasets]
        train, held = _hold_out(config, train)
        validation = None
        if held is not None:
            # Out-of-distribution validation anomalies: the OOD datasets' TRAIN splits.
            ood_train = [load(name, "train") for name in config.ood_datasets]
            pool = np.concatenate([s.images for s in ood_train])
            pick = np.sort(_rng(config, 12).choice(len(pool), min(len(pool), _anomaly_count(config, len(held))),
                                                   replace=False))
            validation = _validation(held.images, pool[pick], np.full(len(pick), -1), held.labels, None,
                                     "+".join(config.ood_datasets) + " train")
        train_images, flags = train.images, np.zeros(len(train), bool)
        test_images = np.concatenate([test.images] + [s.images for s in ood])
        test_labels = np.concatenate([np.zeros(len(test), np.int32)] + [np.ones(len(s), np.int32) for s in ood])
        test_classes = np.concatenate([test.labels] + [np.full(len(s), -1) for s in ood])
        data = ProtocolData(train_images, flags, test_images, test_labels, test_classes, None, validation=validation)
        return _cap(data, config, rng)

    normal = _normal_index(config, train)
    normal_train = train.take(train.labels == normal)
    if len(normal_train) == 0:
        raise ConfigError(f"config.normal_class={normal} has no training images in {config.dataset}")
    normal_train, held = _hold_out(config, normal_train)
    train_images = normal_train.images
    flags = np.zeros(len(normal_train), bool)
    num_labelled = int(round(config.anomaly_ratio * len(normal_train))) if config.protocol == "unbalanced" else 0

    if config.anomaly_type == "object":
        if num_labelled:
            allowed = config.known_anomaly_classes or [k for k in np.unique(train.labels) if k != normal]
            pool = np.flatnonzero(np.isin(train.labels, allowed))
            if num_labelled > len(pool):
                raise ConfigError(
                    f"config.anomaly_ratio={config.anomaly_ratio} asks for {num_labelled} labelled anomalies "
                    f"but classes {list(allowed)} hold only {len(pool)} training images")
            chosen = np.sort(rng.choice(pool, num_labelled, replace=False))
            train_images = np.concatenate([train_images, train.images[chosen]])
            flags = np.concatenate([flags, np.ones(num_labelled, bool)])
        else:
            chosen = np.zeros(0, np.int64)
        masks = None
        if config.dataset == "image_folder":
            masks = sources.load_masks(test.paths, config.image_folder_dir, config.image_size)
        validation = None
        if held is not None:
            # Other classes' training images, never the labelled anomalies stage 1 and 2 see.
            others = np.setdiff1d(np.flatnonzero(train.labels != normal), chosen)
            if len(others):
                pick = np.sort(_rng(config, 12).choice(others, min(len(others), _anomaly_count(config, len(held))),
                                                       replace=False))
                validation = _validation(held.images, train.images[pick], train.labels[pick], normal, None,
                                         "other classes")
            else:  # an image folder whose train/ holds the normal class only: synthesise
                corrupted, local_masks = _corrupt(config, held.images, seed=4, anomaly_type="local")
                validation = _validation(held.images, corrupted, np.full(len(held), normal), normal, local_masks,
                                         f"synthesised {config.local_kind}")
        data = ProtocolData(train_images, flags, test.images, (test.labels != normal).astype(np.int32),
                            test.labels, masks, test_paths=test.paths, validation=validation)
        return _cap(data, config, rng)

    # style / local: anomalies are corrupted copies of the normal class's images.
    normal_test = test.take(test.labels == normal)
    if config.anomaly_type == "style" and config.dataset == "cifar10":
        corrupted, masks = _cifar10_corrupted(config, normal), None
    else:
        corrupted, masks = _corrupt(config, normal_test.images, seed=2)
    if num_labelled:
        chosen = np.sort(rng.choice(len(normal_train), num_labelled, replace=False))
        labelled, _ = _corrupt(config, normal_train.images[chosen], seed=3)
        train_images = np.concatenate([train_images, labelled])
        flags = np.concatenate([flags, np.ones(num_labelled, bool)])
    test_images = np.concatenate([normal_test.images, corrupted])
    test_labels = np.concatenate([np.zeros(len(normal_test), np.int32), np.ones(len(corrupted), np.int32)])
    test_classes = np.full(len(test_labels), normal)
    test_masks = None
    if masks is not None:
        test_masks = np.concatenate([np.zeros(masks.shape, np.float32), masks])
    validation = None
    if held is not None:
        # The same kind of anomaly, synthesised on the held-out normals with another seed.
        corrupted, held_masks = _corrupt(config, held.images, seed=4)
        validation = _validation(held.images, corrupted, np.full(len(held), normal), normal, held_masks,
                                 f"synthesised {config.local_kind if config.anomaly_type == 'local' else config.style_corruption}")
    return _cap(ProtocolData(train_images, flags, test_images, test_labels, test_classes, test_masks,
                             validation=validation), config, rng)


def _rng(config: ml_collections.ConfigDict, stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream])


def _hold_out(config: ml_collections.ConfigDict, normal_train: sources.Split) -> tuple[sources.Split, sources.Split | None]:
    """(the normal training images that train, the held-out validation normals or None)."""
    fraction = config.validation.fraction
    if not fraction:
        return normal_train, None
    count = max(1, int(round(fraction * len(normal_train))))  # a small folder still gets one
    if count >= len(normal_train):
        raise ConfigError(f"config.validation.fraction={fraction} holds out {count} of the {len(normal_train)} normal "
                          "training images: it must leave at least one on each side")
    held = np.zeros(len(normal_train), bool)
    held[_rng(config, 11).choice(len(normal_train), count, replace=False)] = True
    return normal_train.take(~held), normal_train.take(held)


def _anomaly_count(config: ml_collections.ConfigDict, normals: int) -> int:
    return max(1, int(round(config.validation.anomalies_per_normal * normals)))


def _validation(normals: np.ndarray, anomalies: np.ndarray, anomaly_classes: np.ndarray, normal_classes,
                anomaly_masks: np.ndarray | None, source: str) -> Validation:
    """`normal_classes`: the normal class, or each held-out image's class (ood)."""
    labels = np.concatenate([np.zeros(len(normals), np.int32), np.ones(len(anomalies), np.int32)])
    classes = np.concatenate([np.broadcast_to(normal_classes, (len(normals),)), anomaly_classes]).astype(np.int64)
    masks = None
    if anomaly_masks is not None:
        masks = np.concatenate([np.zeros((len(normals),) + anomaly_masks.shape[1:], np.float32), anomaly_masks])
    return Validation(np.concatenate([normals, anomalies]), labels, classes, masks, source)


def _normal_index(config: ml_collections.ConfigDict, train: sources.Split) -> int:
    """The normal class's label index: config.normal_class, or for an image folder the
    index of the folder config.normal_class_name."""
    name = config.normal_class_name
    if name is None:
        return config.normal_class
    names = train.class_names or ()
    if name not in names:
        raise ConfigError(f"config.normal_class_name={name!r} is not a class folder of "
                                     f"{config.image_folder_dir}: allowed: {', '.join(names)}")
    return names.index(name)


def _channels(config: ml_collections.ConfigDict) -> int:
    return sources.DATASETS[config.dataset][2]


def _corrupt(config: ml_collections.ConfigDict, images: np.ndarray, seed: int, anomaly_type: str | None = None):
    """Applies the configured style or local anomaly (or `anomaly_type`'s) to uint8 images
    on the JAX host device."""
    import jax

    from mscad_jax.data import anomalies

    key = jax.random.fold_in(jax.random.key(config.seed), seed)
    floats = images.astype(np.float32) / 255.0
    masks = None
    if (anomaly_type or config.anomaly_type) == "style":
        out = anomalies.style_corrupt_batch(key, floats, config.style_corruption, config.style_severity)
    else:
        out, masks = anomalies.local_anomaly_batch(key, floats, config.local_kind)
        masks = np.asarray(masks, np.float32)
    return np.round(np.asarray(out) * 255.0).clip(0, 255).astype(np.uint8), masks


def _cifar10_corrupted(config: ml_collections.ConfigDict, normal: int) -> np.ndarray:
    """CIFAR-10-C test images of the normal class, the published style anomalies."""
    name = f"cifar10_corrupted/{config.style_corruption}_{config.style_severity}"
    split = sources.load_split(name, "test", config.image_size, 3, data_dir=config.data_dir)
    return split.images[split.labels == normal]


def _cap(data: ProtocolData, config: ml_collections.ConfigDict, rng: np.random.Generator) -> ProtocolData:
    """Applies max_train_examples / max_test_examples with seeded subsets."""
    if config.max_train_examples and len(data.train_images) > config.max_train_examples:
        keep = np.sort(rng.choice(len(data.train_images), config.max_train_examples, replace=False))
        data = dataclasses.replace(data, train_images=data.train_images[keep],
                                   train_labelled_anomaly=data.train_labelled_anomaly[keep])
    if config.max_test_examples and len(data.test_labels) > config.max_test_examples:
        keep = np.sort(rng.choice(len(data.test_labels), config.max_test_examples, replace=False))
        data = dataclasses.replace(
            data, test_images=data.test_images[keep], test_labels=data.test_labels[keep],
            test_classes=data.test_classes[keep],
            test_masks=None if data.test_masks is None else data.test_masks[keep],
            test_paths=None if data.test_paths is None else data.test_paths[keep])
    return data
