"""Scores image files with an exported model.

  python -m mscad_jax.score --model=PATH --output=scores.csv [--heatmaps=DIR] PATH...

Inputs are files or folders (searched recursively, hidden files ignored). PNG, JPEG,
BMP, GIF and TIFF files are read, resized and converted to the model's channels as
training reads image folders (sources.read_image_file); anything else, and any file
that does not decode, is skipped with one warning line and counted in the summary.
The CSV has one row per image: path, score, is_anomaly (score above the artifact's
threshold), each scorer's score and the per-scale scores, and where the defect is: the
share of the map above the artifact's pixel threshold and the bounding boxes of its
connected regions ("x0 y0 x1 y1" in the file's own pixels, ";"-separated). `--heatmaps` writes an
overlay PNG per image, coloured by one range for the whole run (the artifact's
heatmap_range, from normal statistics), never per image, and the binary defect mask at
the file's size (`<name>_mask.png`). Outputs are written
atomically; with no image to score the command ends with status 2 and writes nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import numpy as np
from absl import app, flags

from mscad_jax import cli, exported, files, logs

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs (the module is also a library)."""
    flags.DEFINE_string("model", None, "An exported model directory (python -m mscad_jax.export).")
    flags.DEFINE_string("output", None, "The CSV to write.")
    flags.DEFINE_string("heatmaps", None, "Also write an overlay PNG per image into this directory.")
    flags.DEFINE_integer("batch_size", None, "Images scored per call (default: the model's evaluation batch, "
                         "whose scores match the training code's exactly).")
    flags.DEFINE_float("threshold_fpr", None, "Flag images above the threshold that flags this share of held-out "
                       "normal images (default: the artifact's own threshold and rate).")
    flags.mark_flags_as_required(["model", "output"])


def find_files(inputs: list[str]) -> list[str]:
    """Every file named or under a named folder, in a stable (sorted) order."""
    found = []
    for path in inputs:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def _read(paths: list[str], image_size: int, channels: int) -> Iterator[tuple[str, np.ndarray | None, str]]:
    from mscad_jax.data import sources

    for path in paths:
        if not path.lower().endswith(sources.IMAGE_SUFFIXES):
            yield path, None, f"{path}: not an image file (reads {', '.join(sources.IMAGE_SUFFIXES)})"
            continue
        try:
            yield path, sources.read_image_file(path, image_size, channels), ""
        except ValueError as e:
            yield path, None, str(e)
        except OSError as e:  # a read error outside the decoders (Pillow's TIFF path)
            yield path, None, f"{path}: not readable ({e})"


def score_files(model: exported.ExportedModel, paths: list[str], heatmaps: str | None = None,
                threshold: float | None = None) -> tuple[dict[str, list], list[str]]:
    """Scores `paths` in batches; returns the CSV columns and the skipped files' reasons.
    `is_anomaly` compares with `threshold` (default: the artifact's)."""
    threshold = model.threshold if threshold is None else threshold
    from mscad_jax import plots

    size, _, channels = model.image_shape
    columns: dict[str, list] = {}
    skipped: list[str] = []
    progress = logs.ProgressLine("score", len(paths), unit="file")
    pending: list[tuple[str, np.ndarray]] = []
    done = 0
    heat_range = tuple(model.metadata["heatmap_range"])
    pixel_threshold = model.metadata.get("pixel_threshold")  # None in artifacts exported before it existed

    def flush():
        batch = np.stack([image for _, image in pending])
        out = model.score(batch)
        per_image = {k: v for k, v in out.items() if k != "map"}
        order = ["score"] + sorted(k for k in per_image if k != "score")
        for i, (path, image) in enumerate(pending):
            columns.setdefault("path", []).append(path)
            columns.setdefault("score", []).append(float(out["score"][i]))
            columns.setdefault("is_anomaly", []).append(int(out["score"][i] > threshold))
            for key in order[1:]:  # scorers named as in a training run's scores.csv
                columns.setdefault(key.removeprefix("score/"), []).append(float(per_image[key][i]))
            if pixel_threshold is not None:  # where the defect is: the map above the pixel threshold
                defective = out["map"][i] > pixel_threshold
                size = _original_size(path, defective.shape)
                boxes = defect_boxes(defective, size)
                columns.setdefault("defect_share", []).append(float(defective.mean()))
                columns.setdefault("boxes", []).append(";".join(" ".join(map(str, b)) for b in boxes))
            if heatmaps:
                stem = f"{len(columns['path']) - 1:06d}_{os.path.splitext(os.path.basename(path))[0]}"
                target = os.path.join(heatmaps, f"{stem}.png")
                _write_png(target, plots.heatmap_overlay(image, out["map"][i], heat_range))
                columns.setdefault("heatmap", []).append(target)
                if pixel_threshold is not None:
                    mask = os.path.join(heatmaps, f"{stem}_mask.png")
                    _write_mask(mask, defective, size)
                    columns.setdefault("mask", []).append(mask)
        pending.clear()

    for path, image, problem in _read(paths, size, channels):
        done += 1
        if image is None:
            skipped.append(problem)
            print(f"warning: skipped {problem}", file=sys.stderr)
        else:
            pending.append((path, image))
            if len(pending) == model.batch_size:
                flush()
        if done % max(1, model.batch_size // 4) == 0 or done == len(paths):
            progress.update(done)
    if pending:
        flush()
    return columns, skipped


def defect_boxes(defective: np.ndarray, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each connected region (8-connected) of the boolean map
    `defective` [h, w], in the pixels of an image of `size` (width, height) that the map
    was resized from: x1, y1 exclusive, so a box covers every pixel its region touches."""
    from scipy import ndimage

    labels, _ = ndimage.label(defective, structure=np.ones((3, 3)))
    sx, sy = size[0] / defective.shape[1], size[1] / defective.shape[0]
    return [(int(np.floor(x.start * sx)), int(np.floor(y.start * sy)), int(np.ceil(x.stop * sx)),
             int(np.ceil(y.stop * sy))) for y, x in ndimage.find_objects(labels)]


def _original_size(path: str, fallback: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the file as stored, or the map's own size where Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return fallback[1], fallback[0]


def _write_mask(path: str, defective: np.ndarray, size: tuple[int, int]) -> None:
    from PIL import Image

    with files.atomic_write(path, "wb") as f:
        Image.fromarray(defective.astype(np.uint8) * 255).resize(size, Image.NEAREST).save(f, format="PNG")


def _write_png(path: str, rgb: np.ndarray) -> None:
    from PIL import Image

    with files.atomic_write(path, "wb") as f:
        Image.fromarray(rgb).save(f, format="PNG")


def main(argv: list[str]) -> None:
    inputs = argv[1:]
    logs.setup_console()
    if not inputs:
        cli.refuse("name the image files or folders to score")
    start = time.perf_counter()
    try:
        model = exported.load(FLAGS.model, FLAGS.batch_size)
        threshold, rule = model.threshold, _threshold_rule(model.metadata)
        if FLAGS.threshold_fpr is not None:
            threshold = model.threshold_at(FLAGS.threshold_fpr)
            rule = f"flags {100 * FLAGS.threshold_fpr:g}% of the held-out normal images (--threshold_fpr)"
        paths = find_files(inputs)
    except (exported.ArtifactError, FileNotFoundError, ValueError) as e:
        cli.refuse(str(e))
    loaded = time.perf_counter()
    if not paths:
        cli.refuse(f"no files found in {' '.join(inputs)}")
    columns, skipped = score_files(model, paths, FLAGS.heatmaps, threshold)
    if not columns:
        cli.refuse(f"none of the {len(paths)} files is a decodable image; nothing written")
    files.write_csv_columns(FLAGS.output, columns)
    seconds = time.perf_counter() - loaded
    flagged = sum(columns["is_anomaly"])
    count = len(columns["path"])
    print(f"scored {count} images -> {FLAGS.output} in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} images/s, "
          f"reading included; model loaded in {loaded - start:.1f} s); {flagged} above the threshold "
          f"{threshold:.4g} ({rule}); {len(skipped)} files skipped (not decodable images)"
          + (f"; heatmaps in {FLAGS.heatmaps}" if FLAGS.heatmaps else ""))


def _threshold_rule(metadata: dict) -> str:
    """What the artifact's threshold promises, and what it did on its run's test split."""
    target, test = metadata.get("threshold_target_fpr"), metadata.get("threshold_test_fpr")
    if target is None:
        return metadata.get("threshold_rule", "the artifact's threshold")
    text = f"target false-positive rate {100 * target:g}%"
    return text + (f", {100 * test:.1f}% on the run's normal test images" if test is not None else "")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
