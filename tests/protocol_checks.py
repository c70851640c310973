"""Helpers shared by the protocol tests: loading the repository's configs, building a
protocol after validation, and the checks every ProtocolData must pass."""

import pathlib

import numpy as np

from mscad_jax import config as config_lib
from mscad_jax.data import protocols

REPO = pathlib.Path(__file__).resolve().parent.parent


def get_config(name, arg=None):
    """configs/<name>.py:arg, as --config would load it."""
    return config_lib.load_config_file(str(REPO / "configs" / f"{name}.py"), arg)


def build(config, validation: bool = False):
    """The protocol's split of `config`; without a validation split unless asked (these
    checks count the protocol's own images: the split is tested in test_validation_split)."""
    if not validation:
        config = config_lib.apply_overrides(config.copy_and_resolve_references(), {"validation.fraction": 0.0})
    config_lib.validate(config)
    return protocols.build_protocol(config)


def row_hashes(images):
    return [bytes(x.tobytes()) for x in images]


def check_common(data, image_size, channels):
    """Shapes and dtypes every ProtocolData has."""
    assert data.train_images.dtype == np.uint8 and data.test_images.dtype == np.uint8
    assert data.train_images.shape[1:] == (image_size, image_size, channels)
    assert data.test_images.shape[1:] == (image_size, image_size, channels)
    assert data.train_labelled_anomaly.dtype == bool
    assert data.train_labelled_anomaly.shape == (len(data.train_images),)
    assert data.test_labels.shape == data.test_classes.shape == (len(data.test_images),)
    assert set(np.unique(data.test_labels)) <= {0, 1}
    summary = data.summary()
    assert summary["num_train"] == len(data.train_images)
    assert summary["num_test"] == len(data.test_images)
    assert summary["num_anomalies"] == int(data.test_labels.sum())
    assert summary["num_train_normal"] + summary["num_train_labelled_anomalies"] == summary["num_train"]
