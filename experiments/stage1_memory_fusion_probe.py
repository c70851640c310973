"""Would stage 1's own memory, beside the fitted one, help the job's score?

For a finished job of the default (fitted per-position memory, metric detector, score
detector + rotation), scores the normal training images, the validation split and the test
split by stage 1's position-blind memory's energy A0 (mean_hw ||D_s||^2 against stage 1's
slots; scales standardised on the normal training images and summed, as the job fuses a
per-scale scorer), then sums it with the job's own scorer columns (validation_scores.csv,
scores.csv), each standardised as the job standardises it (results.json `scorer_stats`).
No model is retrained. `s1a0` names stage 1's memory's A0 in `--combos`. Table: experiments/results/fashion_mnist_memory_fit.md, part E.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/stage1_memory_fusion_probe.py \
      --workdir=runs/ep6/class5 --combos=detector+rotation,s1a0,detector+rotation+s1a0
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from absl import app

import helpers  # experiments/helpers.py: the finished job's loading and batched scoring
import score_combinations  # its --workdir and --combos flags, a run's score columns and the job's scorer statistics
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem
from mscad_jax.scoring import fusion

_CSV = {"val": "validation_scores.csv", "test": "scores.csv"}


def main(argv):
    del argv
    workdir = score_combinations._WORKDIR.value
    config, data, model, frozen, mesh = helpers.load_finished_job(workdir)
    names = anomem.scale_names(model.scales)

    def energies(f, x):
        out = anomem.frozen_outputs(model, f, input_pipeline.to_float(x))
        return {n: jnp.mean(jnp.sum(out[n]["deviation"] ** 2, -1), (1, 2)) for n in names}

    energies_of = helpers.over_images(energies, mesh)
    train = energies_of(frozen, data.train_images[~data.train_labelled_anomaly])
    splits = {"val": (data.validation.images, data.validation.labels), "test": (data.test_images, data.test_labels)}

    def fused(e: dict[str, np.ndarray]) -> np.ndarray:  # the job's fusion of a per-scale scorer, unit weights
        return np.asarray(fusion.combine_scores(e, fusion.normal_statistics(train), {n: 1.0 for n in names}))

    train_fused = fused(train)
    with open(os.path.join(workdir, "results.json")) as f:
        stats = score_combinations.run_statistics(workdir, json.load(f))
    stats["s1a0"] = {"mean": float(train_fused.mean()), "std": float(train_fused.std())}
    combos = [c.split("+") for c in score_combinations._COMBOS.value]
    cells = []
    for split, (images, labels) in splits.items():
        columns = helpers.read_score_columns(os.path.join(workdir, _CSV[split]))
        if not np.array_equal(columns["is_anomaly"].astype(bool), labels.astype(bool)):
            raise SystemExit(f"{_CSV[split]} is not in the order of the job's {split} split")
        columns["s1a0"] = fused(energies_of(frozen, images))
        cells += [f"{100 * score_combinations.combination_auroc(columns, stats, c):.2f}" for c in combos]
    print(f"| {workdir} | " + " | ".join(cells) + " |", flush=True)
    print("columns: " + ", ".join(f"{s} {'+'.join(c)}" for s in splits for c in combos))


if __name__ == "__main__":
    app.run(main)
