"""Image sources: TFDS datasets, scikit-learn's bundled digits, a user's image folders.

Each source returns a whole split in memory as uint8 images [N, S, S, C] resized to
the config's image size, with integer class labels. The benchmarks this project
targets (digits, Fashion-MNIST, CIFAR, SVHN, CUB at 32-64 px) fit in host memory, and
holding them there makes the batch order a pure function of (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

# Dataset name -> (number of classes, number of coarse classes or None, channels).
DATASETS: dict[str, tuple[int, int | None, int]] = {
    "digits": (10, None, 1),
    "fashion_mnist": (10, None, 1),
    "mnist": (10, None, 1),
    "cifar10": (10, None, 3),
    "cifar100": (100, 20, 3),
    "svhn_cropped": (10, None, 3),
    "caltech_birds2011": (200, None, 3),
    "image_folder": (0, None, 3),  # class count comes from the folder itself
}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset: uint8 images [N, S, S, C] and int64 labels [N], the class
    names by label where the source has them, and for image folders each image's file
    path."""

    images: np.ndarray
    labels: np.ndarray
    paths: np.ndarray | None = None  # str [N]
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        return Split(self.images[index], self.labels[index], None if self.paths is None else self.paths[index],
                     self.class_names)


def load_split(dataset: str, split: str, image_size: int, channels: int, *,
               data_dir: str | None = None, coarse_label: bool = False,
               image_folder_dir: str | None = None) -> Split:
    """Loads `split` ('train' or 'test') of `dataset`, resized, with `channels` channels."""
    paths = names = None
    if dataset == "digits":
        images, labels = _digits(split)
        names = tuple(str(k) for k in range(10))
    elif dataset == "image_folder":
        ds, names = _image_folder(image_folder_dir, split)
        images, labels, paths = _tf_dataset_to_numpy(ds, "label", image_size, path_key="image/filename")
    else:
        images, labels, names = _tfds(dataset, split, data_dir, coarse_label, image_size)
    images = _resize(images, image_size)
    return Split(_to_channels(images, channels), labels.astype(np.int64), paths, names)


def load_masks(paths: np.ndarray, root: str, image_size: int) -> np.ndarray | None:
    """Ground-truth masks of an MVTec-AD style folder: for `root/test/<class>/<name>.<ext>`,
    `root/ground_truth/<class>/<name>_mask.png` (any non-zero pixel is anomalous),
    resized to the images. Images without a mask file (the normal ones) get an empty
    mask. None when `root/ground_truth` does not exist."""
    import tensorflow as tf

    truth = os.path.join(root, "ground_truth")
    if not os.path.isdir(truth):
        return None
    masks = np.zeros((len(paths), image_size, image_size), np.float32)
    for i, path in enumerate(paths):
        cls = os.path.basename(os.path.dirname(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(truth, cls, f"{stem}_mask.png")
        if os.path.exists(mask_path):
            mask = tf.io.decode_image(tf.io.read_file(mask_path), channels=1, expand_animations=False)
            mask = tf.image.resize(tf.cast(mask > 0, tf.float32), (image_size, image_size), "nearest")
            masks[i] = mask.numpy()[..., 0]
    return masks


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    # A fixed stratified 70/30 split: part of the dataset's definition, not of the seed.
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=0.3, stratify=digits.target, random_state=0)
    return (train_x, train_y) if split == "train" else (test_x, test_y)


def _tfds(name: str, split: str, data_dir: str | None, coarse_label: bool, image_size: int):
    import tensorflow_datasets as tfds

    try:
        # No download at run time: offline, TFDS would retry for minutes and end in a
        # long traceback; the data is prepared once with `tfds build`.
        ds, info = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False, download=False,
                             with_info=True)
    except AssertionError as e:
        if "could not find data" not in str(e):
            raise
        root = os.path.dirname(os.path.dirname(tfds.builder(name, data_dir=data_dir).data_dir))
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared in {root} (config.data_dir, else TFDS_DATA_DIR, else "
            f"~/tensorflow_datasets); on a machine with network run `tfds build {name} --data_dir=DIR`, copy DIR "
            f"here and pass data_dir=DIR or set TFDS_DATA_DIR=DIR") from None
    label_key = "coarse_label" if coarse_label else "label"
    names = getattr(info.features[label_key], "names", None) if label_key in info.features else None
    return *_tf_dataset_to_numpy(ds, label_key, image_size), None if names is None else tuple(names)


def _image_folder(root: str, split: str):
    import tensorflow_datasets as tfds

    builder = tfds.folder_dataset.ImageFolder(root)
    if split not in builder.info.splits:
        raise ValueError(f"image folder {root!r} has no {split!r} sub-folder; found {list(builder.info.splits)}")
    return builder.as_dataset(split=split, shuffle_files=False), tuple(builder.info.features["label"].names)


def _tf_dataset_to_numpy(ds, label_key: str, image_size: int, path_key: str | None = None):
    """(images, labels) of a tf.data dataset, resized; with `path_key` also the paths."""
    import tensorflow as tf

    def prepare(example):
        return _prepare_image(example["image"], image_size), example[label_key], \
            example[path_key] if path_key else tf.constant(b"")

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(4096).prefetch(2)
    images, labels, paths = [], [], []
    for x, y, p in ds.as_numpy_iterator():
        images.append(x)
        labels.append(y)
        paths.append(p)
    if not images:
        raise ValueError("the dataset split is empty")
    if path_key:
        return np.concatenate(images), np.concatenate(labels), np.char.decode(np.concatenate(paths).astype(bytes))
    return np.concatenate(images), np.concatenate(labels)


def _prepare_image(image, image_size: int):
    """One decoded image (a tf.Tensor [H, W, C]) as the model sees it: RGB when its channel
    count is unknown, resized to image_size (antialiased bilinear) unless it has that size,
    uint8."""
    import tensorflow as tf

    if image.shape.rank != 3 or image.shape[-1] is None:
        # Decoded files of unknown channel count (image folders): force RGB.
        image = tf.ensure_shape(image, [None, None, None])
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
        image = tf.ensure_shape(image, [None, None, 3])
    # Images of varying sizes (CUB, image folders) are resized here so they batch.
    # Images already of the requested (static) size skip it: for 28x28 Fashion-MNIST
    # at image_size=28 the identity resize was most of the load time.
    if image.shape[0] != image_size or image.shape[1] != image_size or image.dtype != tf.uint8:
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image


# Suffixes read_image_file decodes (TensorFlow's decoders, Pillow for TIFF).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def read_image_file(path: str, image_size: int, channels: int) -> np.ndarray:
    """One image file as training reads image folders: uint8 [S, S, channels]. PNG, JPEG,
    BMP and GIF go through TensorFlow's decoders (as tfds's ImageFolder), TIFF through
    Pillow; both are then prepared alike. Raises ValueError for a file that does not decode."""
    import tensorflow as tf

    if path.lower().endswith((".tif", ".tiff")):
        from PIL import Image

        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a decodable image ({e})") from None
        image = tf.constant(array)
    else:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        except tf.errors.OpError as e:  # undecodable, missing, or a read error part-way
            reason = e.message.split("}}")[-1].split("[Op:")[0].strip()  # TF's text without its op trace
            raise ValueError(f"{path}: not a decodable image ({reason})") from None
    if image.shape[-1] == 2:  # gray + alpha
        image = image[..., :1]
    # Eagerly the channel count is known, so _prepare_image keeps it; _to_channels then
    # converts as the folder pipeline's RGB step followed by _to_channels would.
    return _to_channels(_prepare_image(image, image_size).numpy(), channels)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    import tensorflow as tf

    out = tf.image.resize(images.astype(np.float32), (size, size), method="bilinear", antialias=True)
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grayscale <-> RGB so that OOD sets match the in-distribution channel count."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have >= 3 and channels == 1:
        gray = images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.round(gray)[..., None].astype(np.uint8)
    return images[..., :channels]
