"""AUROC of a local-anomaly run by how visible each anomaly is.

A synthetic scar is painted in a uniform random colour: on a grey garment a grey close to
its own changes almost nothing (on Fashion-MNIST class 0 a quarter of the scars change
their pixels by less than 0.2 on average). Every scorer ranks those near chance, and they
cap the image AUROC of the whole split. This script
measures each test anomaly's contrast (`helpers.local_contrast`: the mean change over
its mask, in [0, 1] units) and reports the AUROC of the normal images against the
anomalies of each contrast band, for any score column of a run's `scores.csv`.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/local_visibility.py \\
      --config=configs/fashion_mnist.py:cpu=True,normal_class=0,anomaly_type=local,local_kind=scar \\
      --config.seed=0 --scores=WORKDIR/scores.csv --columns=score,patch_knn

The config must be the run's (same seed, kind and class): the test split is rebuilt from it.
"""

from __future__ import annotations


import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mscad_jax import metrics
from mscad_jax.data import protocols

import helpers  # experiments/helpers.py, beside this script

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's local-anomaly config (configs/<name>.py[:args]).",
                                          lock_config=True)
_SCORES = flags.DEFINE_string("scores", None, "A scores.csv (mscad_jax.main, or local_pixel_baseline.py --scores_out).")
_COLUMNS = flags.DEFINE_list("columns", ["score"], "Score columns of the CSV to report.")
_EDGES = flags.DEFINE_list("edges", ["0.05", "0.1", "0.2", "0.4"], "Contrast band edges, ascending, in (0, 1).")
flags.mark_flags_as_required(["config", "scores"])


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    if config.anomaly_type != "local" or config.max_test_examples:
        raise ValueError("--config needs anomaly_type=local and max_test_examples=0 (each anomaly is then the "
                         "corrupted copy of the normal test image at the same position)")
    data = protocols.build_protocol(config)
    labels = data.test_labels
    normal, anomalous = labels == 0, labels == 1
    contrast = helpers.local_contrast(data.test_images[normal], data.test_images[anomalous],
                                      data.test_masks[anomalous])
    edges = [0.0, *map(float, _EDGES.value), np.inf]
    band = np.full(len(labels), -1)
    band[anomalous] = np.searchsorted(edges, contrast, side="right") - 1
    columns = helpers.read_score_columns(_SCORES.value, ["is_anomaly", *_COLUMNS.value])
    if not np.array_equal(columns["is_anomaly"], labels):
        raise ValueError(f"{_SCORES.value} is not this config's test split (its labels differ): same seed, class "
                         "and kind?")
    names = [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-1], edges[1:])]
    counts = np.array([(band == i).sum() for i in range(len(names))])
    shares = counts / anomalous.sum()
    per_band = {c: metrics.auroc_per_anomaly_class(columns[c], labels, band) for c in _COLUMNS.value}
    # AUROC is the mean over (anomaly, normal) pairs, so the whole split's AUROC is the
    # share-weighted mean of the bands'. Replacing the bands from row i up by 100 gives
    # the AUROC a detector would reach by finding every anomaly that visible or more.
    band_auroc = {c: np.array([100 * per_band[c][str(i)] if counts[i] else 0.0 for i in range(len(names))])
                  for c in _COLUMNS.value}
    ceiling = {c: [float(shares[:i] @ band_auroc[c][:i] + 100 * shares[i:].sum()) for i in range(len(names))]
               for c in _COLUMNS.value}
    print("| contrast band | anomalies | share | " + " | ".join(
        f"{c} | {c}, all from this band up found" for c in _COLUMNS.value) + " |")
    print("|---" * (3 + 2 * len(_COLUMNS.value)) + "|")
    for i, name in enumerate(names):
        cells = [f"{band_auroc[c][i]:.2f} | {ceiling[c][i]:.2f}" if counts[i] else "- | -" for c in _COLUMNS.value]
        print(f"| {name} | {counts[i]} | {100 * shares[i]:.1f}% | " + " | ".join(cells) + " |")
    total = [f"{100 * metrics.image_metrics(columns[c], labels)['auroc']:.2f} | -" for c in _COLUMNS.value]
    print(f"| all | {int(anomalous.sum())} | 100% | " + " | ".join(total) + " |")


if __name__ == "__main__":
    app.run(main)
