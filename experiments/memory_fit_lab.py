"""What a fitted memory makes of a finished job's frozen features, on its validation split.

For a workdir whose stage 1 is finished, the memory's training-free score A0 (mean_hw
||D_s||^2 against the memory, per scale and fused over scales) on the validation split,
for: stage 1's own memory; slots shared by every position, fitted by k-means to all
positions' normal features; and per-position slots (`stage2.memory_fit=kmeans`) for
several slot counts and retrieval betas. No detector is trained: this isolates what the
memory contributes (experiments/results/fashion_mnist_memory_fit.md).

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/memory_fit_lab.py \
      --workdir=runs/fmnist/class6 [--slots=8,16,32,64 --betas=20,50,200 --radii=0,1]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.metrics import roc_auc_score

import helpers  # experiments/helpers.py: the finished job's loading and batched scoring
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem, fitted_memory

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished job's workdir (stage 1 checkpoint, config.json).")
_SLOTS = flags.DEFINE_list("slots", ["8", "16", "32", "64"], "Per-position slot counts to fit.")
_BETAS = flags.DEFINE_list("betas", ["20", "50", "200"], "Retrieval inverse temperatures.")
_RADII = flags.DEFINE_list("radii", ["0"], "Per-position slots fitted to the features of every position within this "
                           "many positions (r > 0: a position-tolerant memory of the same size, fitted on 2,000 images).")
_SHARED_SLOTS = flags.DEFINE_integer("shared_slots", 512, "Slots of the shared (position-blind) k-means memory.")
flags.mark_flags_as_required(["workdir"])


def features(model, mesh):
    """(frozen, images) -> frozen stage-1 features and stage 1's own deviation energies, per scale."""
    names = anomem.scale_names(model.scales)

    def fn(f, x):
        out = anomem.frozen_outputs(model, f, input_pipeline.to_float(x))
        return {n: out[n]["features"] for n in names} | {
            f"energy/{n}": jnp.mean(jnp.sum(out[n]["deviation"] ** 2, -1), (1, 2)) for n in names}

    return helpers.over_images(fn, mesh)


def neighbourhood(features: np.ndarray, radius: int) -> np.ndarray:
    """[N, H, W, C] -> [N (2r+1)^2, H, W, C]: each position's features and those of the positions
    within `radius` of it (edges repeated), as more samples of that position."""
    h, w = features.shape[1:3]
    padded = np.pad(features, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    return np.concatenate([padded[:, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
                           for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)])


@functools.partial(jax.jit, static_argnames="deviation")
def _energy(f: jax.Array, slots: jax.Array, beta: jax.Array, deviation: str) -> jax.Array:
    return jnp.mean(jnp.sum(anomem.deviation_map(f, fitted_memory.retrieve(f, slots, beta)[0], deviation) ** 2, -1),
                    (1, 2))


def energy(feats: np.ndarray, slots: np.ndarray, beta: float, deviation: str) -> np.ndarray:
    """A0 of `feats` against per-position `slots`, 500 images at a time (one compiled step per shape)."""
    slots, beta = jnp.asarray(slots), jnp.float32(beta)
    return np.concatenate([np.asarray(_energy(jnp.asarray(feats[i:i + 500]), slots, beta, deviation))
                           for i in range(0, len(feats), 500)])


def fused_auroc(train: dict[str, np.ndarray], val: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Scales standardised with the training normals' statistics, summed."""
    return roc_auc_score(labels, sum((val[n] - train[n].mean()) / train[n].std() for n in val))


def main(argv):
    del argv
    workdir = _WORKDIR.value
    config, data, model, frozen, mesh = helpers.load_finished_job(workdir)
    normal = ~data.train_labelled_anomaly
    names = anomem.scale_names(model.scales)
    features_of = features(model, mesh)
    train = features_of(frozen, data.train_images[normal])
    val = features_of(frozen, data.validation.images)
    labels = data.validation.labels
    rows = []

    def report(variant, train_scores, val_scores):
        per_scale = {n: round(100 * roc_auc_score(labels, val_scores[n]), 2) for n in names}
        rows.append((variant, per_scale, round(100 * fused_auroc(train_scores, val_scores, labels), 2)))
        print(f"| {variant} | " + " | ".join(str(per_scale[n]) for n in names) + f" | {rows[-1][2]} |", flush=True)

    print(f"validation AUROC of A0 (%), {workdir}\n\n| memory | " + " | ".join(names) + " | fused |")
    print("|---" * (len(names) + 2) + "|")
    report(f"stage 1's ({config.model.num_slots} shared slots, beta {config.model.beta:g})",
           {n: train[f"energy/{n}"] for n in names}, {n: val[f"energy/{n}"] for n in names})
    # The training normals' scores (for the statistics) from a subset: the fit saw them.
    sub = slice(0, min(2000, int(normal.sum())))
    shared_train, shared_val = {}, {}
    for i, n in enumerate(names):
        f = train[n]
        pooled = f.reshape(-1, 1, 1, f.shape[-1])
        pick = np.random.default_rng(i).choice(len(pooled), min(len(pooled), 100000), replace=False)
        slots = fitted_memory.fit_slots(pooled[pick], _SHARED_SLOTS.value, seed=i)
        slots = np.broadcast_to(slots, f.shape[1:3] + slots.shape[2:])
        shared_train[n] = energy(f[sub], slots, 50.0, config.model.deviation)
        shared_val[n] = energy(val[n], slots, 50.0, config.model.deviation)
    report(f"k-means, {_SHARED_SLOTS.value} slots shared by all positions, beta 50", shared_train, shared_val)
    for k in map(int, _SLOTS.value):
        for r in map(int, _RADII.value):
            fit = {n: train[n] if r == 0 else neighbourhood(train[n][sub], r) for n in names}
            slots = {n: fitted_memory.fit_slots(fit[n], k, seed=i) for i, n in enumerate(names)}
            for beta in map(float, _BETAS.value):
                report(f"k-means, {k} slots per position" + (f" fitted within radius {r}" if r else "")
                       + f", beta {beta:g}",
                       {n: energy(train[n][sub], slots[n], beta, config.model.deviation) for n in names},
                       {n: energy(val[n], slots[n], beta, config.model.deviation) for n in names})


if __name__ == "__main__":
    app.run(main)
