"""Image folders as users have them: class folders of any image sizes, the MVTec-AD
layout with ground-truth masks and a normal class named by folder, and the single-file
reader of the scoring command, which must read pixels exactly as the folder pipeline."""

import numpy as np
import pytest
from PIL import Image

from mscad_jax import config as config_lib
from mscad_jax.data import protocols, sources

from protocol_checks import build, check_common, get_config


def _write_png(path, color, size):
    import tensorflow as tf

    image = np.zeros(size + (len(color),), np.uint8) + np.asarray(color, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


def test_image_folder_one_class(tmp_path):
    root = tmp_path / "images"
    red, blue = (255, 0, 0), (0, 0, 255)
    counts = {"train": {"apple": 3, "berry": 2}, "test": {"apple": 2, "berry": 3}}
    for split, per_class in counts.items():
        for name, count in per_class.items():
            for i in range(count):
                size = (12, 10) if i % 2 else (9, 9)  # sizes vary; the source resizes
                _write_png(root / split / name / f"{i}.png", red if name == "apple" else blue, size)
    # A grayscale image in a colour folder is read as RGB.
    _write_png(root / "test" / "berry" / "gray.png", (128,), (8, 8))

    config = get_config("default", f"dataset=image_folder,image_folder_dir={root},image_size=8,normal_class=0")
    data = build(config)
    check_common(data, 8, 3)
    # Class indices follow the sorted folder names: apple = 0.
    assert len(data.train_images) == 3
    assert np.all(data.train_images == np.asarray(red, np.uint8))
    assert len(data.test_images) == 6
    np.testing.assert_array_equal(np.sort(data.test_classes), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(data.test_labels, (data.test_classes != 0).astype(np.int32))
    is_red = np.all(data.test_images == np.asarray(red, np.uint8), axis=(1, 2, 3))
    np.testing.assert_array_equal(is_red, data.test_labels == 0)
    gray = np.all(data.test_images == 128, axis=(1, 2, 3))
    assert gray.sum() == 1 and data.test_labels[gray][0] == 1

    config.normal_class = 1
    berry = build(config)
    assert len(berry.train_images) == 2 and np.all(berry.train_images == np.asarray(blue, np.uint8))
    assert int(berry.test_labels.sum()) == 2


def test_mvtec_layout_with_a_named_normal_class_and_masks(tmp_path):
    """train/good, test/<good|defect>, ground_truth/<defect>/<name>_mask.png, as MVTec-AD."""
    import tensorflow as tf

    root = tmp_path / "bottle"
    for i in range(3):
        _write_png(root / "train" / "good" / f"{i:03d}.png", (200, 200, 200), (12, 12))
    _write_png(root / "test" / "good" / "000.png", (200, 200, 200), (12, 12))
    for defect in ("crack", "hole"):
        for i in range(2):
            _write_png(root / "test" / defect / f"{i:03d}.png", (40, 40, 40), (12, 12))
            mask = np.zeros((12, 12, 1), np.uint8)
            mask[:6, :6] = 255  # the top-left quarter
            (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            (root / "ground_truth" / defect / f"{i:03d}_mask.png").write_bytes(tf.io.encode_png(mask).numpy())

    config = get_config("default", f"dataset=image_folder,image_folder_dir={root},image_size=8,normal_class=good")
    assert config.normal_class_name == "good"
    data = build(config)
    check_common(data, 8, 3)
    assert len(data.train_images) == 3 and np.all(data.train_images == 200)
    names = [p.split("/")[-2] for p in data.test_paths]
    np.testing.assert_array_equal(data.test_labels, [int(n != "good") for n in names])
    assert data.test_masks.shape == (5, 8, 8)
    for label, mask in zip(data.test_labels, data.test_masks):
        expected = np.zeros((8, 8), np.float32)
        if label:
            expected[:4, :4] = 1.0
        np.testing.assert_array_equal(mask, expected)

    config.normal_class_name = "bent"
    with pytest.raises(config_lib.ConfigError, match="normal_class_name='bent'.*good"):
        build(config)


def test_image_folder_missing_split(tmp_path):
    root = tmp_path / "images"
    _write_png(root / "train" / "a" / "0.png", (1, 2, 3), (8, 8))
    _write_png(root / "train" / "b" / "0.png", (4, 5, 6), (8, 8))
    config = get_config("default", f"dataset=image_folder,image_folder_dir={root},image_size=8")
    config_lib.validate(config)
    with pytest.raises(ValueError, match="test"):
        protocols.build_protocol(config)


def test_normal_class_without_training_images(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        _write_png(root / split / "a" / "0.png", (1, 2, 3), (8, 8))
    _write_png(root / "test" / "b" / "0.png", (4, 5, 6), (8, 8))
    config = get_config("default", f"dataset=image_folder,image_folder_dir={root},image_size=8,normal_class=1")
    with pytest.raises(config_lib.ConfigError, match="normal_class=1"):
        build(config)


def test_reading_a_file_matches_reading_the_image_folder(tmp_path):
    """read_image_file (the scoring command's reader) gives the pixels that training reads
    from an image folder, for gray, RGB and RGBA files of other sizes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "train" / "good"
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8), "RGB").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(folder / "c.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), "RGB").save(folder / "d.jpg", quality=90)
    for channels in (1, 3):
        split = sources.load_split("image_folder", "train", 8, channels, image_folder_dir=str(tmp_path / "data"))
        for image, path in zip(split.images, split.paths):
            np.testing.assert_array_equal(sources.read_image_file(path, 8, channels), image, err_msg=path)
