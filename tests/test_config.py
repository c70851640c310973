"""Config fields, `key=value` arguments, validation errors and the command line."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from mscad_jax import config as config_lib
from mscad_jax.config import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))


def load_config_module(name):
    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_test_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(name, arg=None):
    return load_config_module(name).get_config(arg)


def set_field(config, field, value):
    *parents, leaf = field.split(".")
    target = config
    for part in parents:
        target = target[part]
    target[leaf] = value
    return config


# ---- valid configs ------------------------------------------------------------------


def test_there_are_config_files():
    names = {p.stem for p in CONFIG_FILES}
    assert {"default", "fashion_mnist", "cifar10", "cifar100"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if p.stem != "folder"], ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "normal_class=3,protocol=unbalanced"])
def test_config_files_validate(path, arg):
    config = get_config(path.stem, arg)
    config_lib.validate(config)
    config_lib.validate(config, num_devices=4)
    config_lib.validate(config, num_devices=1)
    if arg:
        assert config.normal_class == 3
        assert config.protocol == "unbalanced"


def test_the_folder_preset_needs_its_folder(tmp_path):
    with pytest.raises(ConfigError, match="image_folder_dir"):
        config_lib.validate(get_config("folder"))
    config = get_config("folder", f"image_folder_dir={tmp_path}")
    config_lib.validate(config, num_devices=4)
    assert config.normal_class_name == "good" and config.anomaly_type == "object"  # the folder's own defects


def test_base_config_validates():
    config_lib.validate(config_lib.base_config(), num_devices=4)


def test_fashion_mnist_cpu_arg_reaches_config():
    full = get_config("fashion_mnist")
    cpu = get_config("fashion_mnist", "cpu=True,normal_class=4")
    assert cpu.normal_class == 4
    assert full.normal_class == 0
    assert cpu.model.depth == 10 and cpu.model.width == 16 and cpu.image_size == 28
    assert full.model.depth == 18 and full.model.width == 64 and full.image_size == 32
    assert cpu.stage1.batch_size < full.stage1.batch_size
    assert cpu.stage1.epochs < full.stage1.epochs
    assert "cpu" not in cpu  # consumed by the config file, not a config field
    config_lib.validate(cpu, num_devices=4)


def test_cifar100_config_uses_coarse_labels():
    config = get_config("cifar100")
    assert config.dataset == "cifar100" and config.coarse_label
    assert config_lib.num_classes(config) == 20


# ---- validation errors --------------------------------------------------------------


def _ood(c):
    c.protocol = "ood"
    return c


# (config file, field, bad value); each alone makes a valid config invalid.
INVALID = [
    ("default", "dataset", "nope"),
    ("default", "protocol", "two_class"),
    ("default", "anomaly_type", "weird"),
    ("fashion_mnist", "normal_class", 10),
    ("fashion_mnist", "normal_class", -1),
    ("default", "normal_class", 12),
    ("default", "stage2.memory_fit", "coreset"),
    ("default", "stage2.memory_fit_scales", (2, 5)),
    ("default", "stage2.memory_fit_scales", (2, 2)),
    ("default", "stage2.memory_fit_window", 0),
    ("default", "stage2.memory_fit_neighbours", 0),
    ("default", "stage2.memory_fit_dtype", "int8"),
    ("cifar100", "normal_class", 20),  # coarse: 20 super-classes
    ("cifar10", "normal_class", 10),
    ("default", "model.scales", ()),
    ("default", "model.scales", (0, 2)),
    ("default", "model.scales", (2, 5)),
    ("default", "model.scales", (2, 2, 3)),
    ("default", "stage1.batch_size", 0),
    ("default", "stage1.batch_size", -64),
    ("default", "stage1.epochs", 0),
    ("default", "stage1.epochs", -1),
    ("default", "stage1.base_learning_rate", 0.0),
    ("default", "stage1.base_learning_rate", -1.0),
    ("default", "stage2.learning_rate", 0.0),
    ("default", "stage2.learning_rate", -1e-3),
    ("default", "stage2.batch_size", 0),
    ("default", "eval.batch_size", 0),
    ("default", "data_dir", "/nonexistent/tensorflow_datasets_for_test"),
    ("default", "known_anomaly_classes", (0,)),  # the normal class itself
    ("default", "known_anomaly_classes", (10,)),
    ("default", "style_severity", 6),
    ("default", "style_corruption", "foo"),
    ("default", "normal_class_name", "good"),  # digits has no named classes
    ("default", "model.deviation", "ratio"),
    ("default", "local_kind", "hole"),
    ("default", "model.depth", 20),
    ("default", "image_size", 4),
    ("default", "stage1.scale_weights", (1.0, 1.0)),  # 3 scales configured
    ("default", "stage1.instance_weight", -1.0),
    ("default", "stage1.reconstruction_weight", -0.5),
    ("default", "stage1.memory_weight", -1.0),
    ("default", "stage1.augment.blur_prob", 1.5),
    ("default", "stage1.augment.jitter_prob", -0.1),
    ("default", "stage1.augment.noise_std", -0.1),
    ("default", "stage1.augment.blur_sigma", (2.0, 1.0)),
    ("default", "stage1.synthetic_anomalies", ("hole",)),
    ("default", "stage1.synthetic_anomalies", ("scar", "scar")),
    ("default", "stage1.rotations", False),  # the default config's rotation head needs rotated copies
    ("default", "eval.scorer", ("knn", "nearest")),
    ("default", "eval.scorer", ()),
    ("default", "eval.knn_k", 0),
    ("default", "eval.detector_weights", (1.0, 0.0)),  # one weight per scale
    ("default", "eval.scorer", ("local",)),  # retired
    ("default", "eval.scorer", ("patch_memory",)),  # retired
    ("default", "eval.batch_size", 0),
    ("default", "stage1.scale_weights", (1.0, 0.0)),  # one weight per scale
    ("default", "stage2.pooling", "max"),
    ("default", "eval.knn_pooling", "max"),
    ("default", "eval.knn_metric", "manhattan"),
    ("default", "eval.map_source", "pixels"),
    ("default", "eval.detector_pooling", "median"),
    ("default", "stage2.synthetic_anomalies", ("rotation", "blur")),
]


@pytest.mark.parametrize("name,field,bad", INVALID, ids=[f"{f}={v!r}" for _, f, v in INVALID])
def test_validation_error_names_field_and_value(name, field, bad):
    config = get_config(name)
    config_lib.validate(config)  # valid before the change
    set_field(config, field, bad)
    with pytest.raises(ConfigError) as e:
        config_lib.validate(config)
    message = str(e.value)
    assert f"config.{field}=" in message
    assert repr(bad) in message


@pytest.mark.parametrize("field,value", [("eval.map_source", "detector"), ("eval.detector_pooling", "max")])
def test_the_spatial_detector_options_need_the_metric_detector(field, value):
    config = get_config("default")
    set_field(config, field, value)
    config_lib.validate(config)  # the default's metric detector has a distance per position
    config.stage2.detector = "conv"
    with pytest.raises(ConfigError, match=rf"config.{field}='{value}'.*needs stage2.detector=metric"):
        config_lib.validate(config)


def test_position_labels_need_the_metric_detector():
    config = get_config("default")
    config.stage2.position_labels = True
    config_lib.validate(config)
    config.stage2.detector = "conv"
    with pytest.raises(ConfigError, match=r"config.stage2.position_labels=True.*stage2.detector='metric'"):
        config_lib.validate(config)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_anomaly_ratio_out_of_range_for_unbalanced(bad):
    config = get_config("default", "protocol=unbalanced")
    config.anomaly_ratio = bad
    with pytest.raises(ConfigError) as e:
        config_lib.validate(config)
    assert "config.anomaly_ratio=" in str(e.value) and repr(bad) in str(e.value)


def test_anomaly_ratio_bounds_allowed():
    config = get_config("default", "protocol=unbalanced")
    for ok in (0.01, 0.2, 1.0):
        config.anomaly_ratio = ok
        config_lib.validate(config)


def test_batch_not_divisible_by_devices():
    config = get_config("default")
    assert config.stage1.batch_size == 64
    config_lib.validate(config, num_devices=4)
    with pytest.raises(ConfigError) as e:
        config_lib.validate(config, num_devices=3)
    message = str(e.value)
    assert "config.stage1.batch_size=64" in message
    assert "3" in message.split("is invalid", 1)[1]


def test_stage2_batch_not_divisible_by_devices():
    config = get_config("default")
    config.stage2.batch_size = 66
    config_lib.validate(config, num_devices=2)
    with pytest.raises(ConfigError, match=r"config\.stage2\.batch_size=66"):
        config_lib.validate(config, num_devices=4)


def test_cifar100_class_ranges():
    coarse = get_config("cifar100", "normal_class=19")
    config_lib.validate(coarse)
    fine = get_config("cifar100", "coarse_label=False,normal_class=99")
    config_lib.validate(fine)
    fine.normal_class = 100
    with pytest.raises(ConfigError, match=r"config\.normal_class=100"):
        config_lib.validate(fine)


def test_coarse_label_needs_a_dataset_with_coarse_labels():
    config = get_config("cifar10", "coarse_label=True")
    with pytest.raises(ConfigError, match=r"config\.coarse_label=True"):
        config_lib.validate(config)


def test_ood_protocol_checks():
    config = _ood(get_config("cifar10"))
    config_lib.validate(config)
    config.anomaly_type = "style"
    with pytest.raises(ConfigError, match=r"config\.anomaly_type='style'"):
        config_lib.validate(config)
    config = _ood(get_config("cifar10"))
    config.ood_datasets = ("svhn_cropped", "nope")
    with pytest.raises(ConfigError, match=r"config\.ood_datasets=\('svhn_cropped', 'nope'\)"):
        config_lib.validate(config)
    config.ood_datasets = ()
    with pytest.raises(ConfigError, match=r"config\.ood_datasets=\(\)"):
        config_lib.validate(config)


def test_image_folder_needs_an_existing_directory(tmp_path):
    config = get_config("default", "dataset=image_folder")
    with pytest.raises(ConfigError, match=r"config\.image_folder_dir=None"):
        config_lib.validate(config)
    config.image_folder_dir = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="image_folder_dir"):
        config_lib.validate(config)
    config.image_folder_dir = str(tmp_path)
    config_lib.validate(config)


def test_existing_data_dir_passes(tmp_path):
    config = get_config("fashion_mnist")
    config.data_dir = str(tmp_path)
    config_lib.validate(config)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ---- parse_arg / apply_overrides ----------------------------------------------------


def test_parse_arg_types():
    parsed = config_lib.parse_arg(
        "a=1,b=2.5,c=true,d=False,e=None,f=x+y,g=3+4,h=hello,i=-2,j=1e-3, k = spaced ")
    assert parsed == {"a": 1, "b": 2.5, "c": True, "d": False, "e": None, "f": ("x", "y"),
                      "g": (3, 4), "h": "hello", "i": -2, "j": 1e-3, "k": "spaced"}
    assert type(parsed["a"]) is int and type(parsed["b"]) is float and type(parsed["c"]) is bool


def test_parse_arg_empty_and_malformed():
    assert config_lib.parse_arg(None) == {}
    assert config_lib.parse_arg("") == {}
    with pytest.raises(ConfigError, match="normal_class"):
        config_lib.parse_arg("normal_class")
    # The value may itself hold '='.
    assert config_lib.parse_arg("data_dir=/a=b") == {"data_dir": "/a=b"}


def test_apply_overrides_sets_fields():
    config = config_lib.base_config()
    config_lib.apply_arg(config, "stage1.epochs=3,normal_class=7,stage2.learning_rate=0.5,"
                                 "model.scales=3+4,known_anomaly_classes=2,ood_datasets=mnist+svhn_cropped,"
                                 "stage1.augment.flip=False,data_dir=/tmp,model.beta=2")
    assert config.stage1.epochs == 3
    assert config.normal_class == 7
    assert config.stage2.learning_rate == 0.5
    assert config.model.scales == (3, 4)
    assert config.known_anomaly_classes == (2,)  # a single value for a tuple field
    assert config.ood_datasets == ("mnist", "svhn_cropped")
    assert config.stage1.augment.flip is False
    assert config.data_dir == "/tmp"
    assert config.model.beta == 2.0 and isinstance(config.model.beta, float)
    # Others untouched.
    assert config.stage2.epochs == config_lib.base_config().stage2.epochs


@pytest.mark.parametrize("key", ["nope", "stage1.nope", "nope.epochs", "seed.x", "stage1.augment.nope"])
def test_apply_overrides_unknown_field(key):
    with pytest.raises(ConfigError) as e:
        config_lib.apply_overrides(config_lib.base_config(), {key: 1})
    assert repr(key) in str(e.value)


def test_apply_overrides_wrong_type_is_config_error():
    with pytest.raises(ConfigError, match="stage1.epochs"):
        config_lib.apply_arg(config_lib.base_config(), "stage1.epochs=abc")


def test_config_file_args_unknown_field():
    with pytest.raises(ConfigError, match="'nope'"):
        get_config("default", "nope=1")
    with pytest.raises(ConfigError, match="'nope'"):
        get_config("fashion_mnist", "cpu=True,nope=1")


# ---- command line -------------------------------------------------------------------


def _run_main(tmp_path, *args, **env_vars):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **env_vars)
    workdir = tmp_path / "wd"
    proc = subprocess.run([sys.executable, "-m", "mscad_jax.main", *args, f"--workdir={workdir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc, workdir


@pytest.mark.parametrize("args,expected", [
    (("--config=configs/default.py", "--config.dataset=nope"), "config.dataset="),
    (("--config=configs/default.py:normal_class=12",), "config.normal_class="),
    (("--config=configs/default.py", "--config.stage1.batch_size=0"), "config.stage1.batch_size="),
    (("--config=configs/default.py:no_such_field=1",), "no field 'no_such_field'"),
    (("--config=configs/default.py", "--config.stage1.batchsize=4"),
     "no field 'stage1.batchsize'; did you mean stage1.batch_size"),
    (("--config=configs/default.py:anomaly_type=style,style_corruption=foo",), "config.style_corruption='foo'"),
    (("--config=configs/no_such_file.py",), "configs/no_such_file.py"),
], ids=["dataset", "normal_class", "batch_size", "unknown_arg_field", "unknown_override_field",
        "style_corruption", "missing_file"])
def test_command_line_rejects_bad_config(tmp_path, args, expected):
    proc, workdir = _run_main(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines, proc.stderr
    assert expected in error_lines[0]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_command_line_refuses_a_dataset_that_is_not_prepared(tmp_path):
    """No network and no prepared copy: one line saying where it looked and how to prepare it."""
    empty = tmp_path / "tfds"
    empty.mkdir()
    proc, workdir = _run_main(tmp_path, "--config=configs/cifar100.py", TFDS_DATA_DIR=str(empty))
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines and "'cifar100' is not prepared" in error_lines[0] and str(empty) in error_lines[0]
    assert "tfds build cifar100" in error_lines[0]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("name", ["default", "fashion_mnist"])
def test_config_json_rebuilds_the_config(name):
    """WORKDIR/config.json -> the same config (what export rebuilds the model from)."""
    import json

    config = get_config(name)
    saved = json.loads(config.to_json_best_effort())
    rebuilt = config_lib.from_json(saved)
    assert json.loads(rebuilt.to_json_best_effort()) == saved
    assert rebuilt.model.scales == config.model.scales and isinstance(rebuilt.eval.scorer, tuple)
    with pytest.raises(config_lib.ConfigError, match="no field 'model.widht'"):
        config_lib.from_json({"model": {"widht": 4}})


def test_fashion_mnist_cpu_local_preset_changes_crops_epochs_and_the_score_only():
    """Stage 1 without crops and with 3 epochs; a memory of 1024 whole maps at scale 2; the
    scale-2 detector alone, max-pooled."""
    one_class = get_config("fashion_mnist", "cpu=True")
    local = get_config("fashion_mnist", "cpu=True,anomaly_type=local,local_kind=scar")
    assert one_class.stage1.augment.crop_scale_min == 0.8 and local.stage1.augment.crop_scale_min == 1.0
    # The local preset keeps the 3-epoch stage 1 (6 gain nothing there); the one-class preset trains 6.
    assert (one_class.stage1.epochs, local.stage1.epochs) == (6, 3)
    assert local.eval.scorer == ("detector",) and local.eval.detector_pooling == "max"
    assert (local.stage2.memory_fit, tuple(local.stage2.memory_fit_scales), local.stage2.memory_fit_slots,
            local.stage2.memory_fit_neighbours, local.stage2.memory_fit_window,
            local.stage2.memory_fit_dtype) == ("maps", (2,), 1024, 50, 2, "float16")
    assert tuple(local.eval.detector_weights) == (1.0, 0.0, 0.0) and tuple(local.model.scales) == (2, 3, 4)
    # Stage 2 learns per position from the other local kind than the test's.
    assert local.stage2.synthetic_anomalies == ("cutpaste",) and local.stage2.position_labels
    assert get_config("fashion_mnist", "cpu=True,anomaly_type=local").stage2.synthetic_anomalies == ("scar",)
    assert local.eval.map_source == "detector"
    local.stage1.augment.crop_scale_min, local.stage1.epochs = 0.8, one_class.stage1.epochs
    local.eval.scorer, local.eval.detector_pooling = one_class.eval.scorer, one_class.eval.detector_pooling
    for field in ("memory_fit", "memory_fit_scales", "memory_fit_slots", "memory_fit_neighbours", "memory_fit_window",
                  "memory_fit_dtype"):
        local.stage2[field] = one_class.stage2[field]
    local.eval.detector_weights = one_class.eval.detector_weights
    local.stage2.synthetic_anomalies, local.stage2.position_labels = one_class.stage2.synthetic_anomalies, False
    local.eval.map_source = one_class.eval.map_source
    local.anomaly_type, local.local_kind = one_class.anomaly_type, one_class.local_kind
    assert local.to_json_best_effort() == one_class.to_json_best_effort()
    config_lib.validate(local)


def test_fashion_mnist_cpu_unbalanced_preset_changes_the_labels_use_only():
    one_class = get_config("fashion_mnist", "cpu=True,anomaly_ratio=0.05")
    unbalanced = get_config("fashion_mnist", "cpu=True,protocol=unbalanced,anomaly_ratio=0.05")
    assert one_class.stage2.synthetic_anomalies == ("rotation",) and unbalanced.stage2.synthetic_anomalies == ()
    assert not unbalanced.stage1.labelled_anomalies and unbalanced.stage2.epochs > one_class.stage2.epochs
    for field in ("stage1.labelled_anomalies", "stage2.synthetic_anomalies", "stage2.epochs", "protocol"):
        section, name = field.split(".") if "." in field else (None, field)
        source = one_class[section] if section else one_class
        (unbalanced[section] if section else unbalanced)[name] = source[name]
    assert unbalanced.to_json_best_effort() == one_class.to_json_best_effort()


def test_an_old_config_json_with_retired_fields_loads_with_one_warning_line(capsys):
    """A workdir written before fields were retired still evaluates and exports."""
    import json

    saved = json.loads(get_config("default").to_json_best_effort())
    saved["model"]["local_head"] = False
    saved["eval"] |= {"knn_flip": False, "patch_knn": True, "patch_knn_window": 2}
    saved["stage2"]["augment"] = {"crop_scale_min": 1.0, "flip": False}  # a retired section
    rebuilt = config_lib.from_json(saved)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and ("eval.knn_flip, eval.patch_knn, eval.patch_knn_window, model.local_head, "
                                "stage2.augment") in lines[0]
    assert rebuilt.to_json_best_effort() == get_config("default").to_json_best_effort()
    assert set(config_lib.RETIRED_FIELDS).isdisjoint(config_lib.field_names(config_lib.base_config()))
