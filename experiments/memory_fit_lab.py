"""What a fitted memory makes of a finished job's frozen features, on its validation split.

For a workdir whose stage 1 is finished, the memory's training-free score A0 (mean_hw
||D_s||^2 against the memory, per scale and fused over scales) on the validation split,
for: stage 1's own memory; slots shared by every position, fitted by k-means to all
positions' normal features; and per-position slots (`stage2.memory_fit=kmeans`) for
several slot counts and retrieval betas. No detector is trained: this isolates what the
memory contributes (experiments/results/fashion_mnist_memory_fit.md).

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/memory_fit_lab.py \
      --workdir=runs/fmnist/class6 [--slots=8,16,32,64 --betas=20,50,200]
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from clu import metric_writers
from sklearn.metrics import roc_auc_score

from mscad_jax import config as config_lib
from mscad_jax import parallel, stage1
from mscad_jax.data import input_pipeline, protocols
from mscad_jax.models import anomem, fitted_memory

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished job's workdir (stage 1 checkpoint, config.json).")
_SLOTS = flags.DEFINE_list("slots", ["8", "16", "32", "64"], "Per-position slot counts to fit.")
_BETAS = flags.DEFINE_list("betas", ["20", "50", "200"], "Retrieval inverse temperatures.")
_SHARED_SLOTS = flags.DEFINE_integer("shared_slots", 512, "Slots of the shared (position-blind) k-means memory.")
flags.mark_flags_as_required(["workdir"])


def features(model, frozen, images: np.ndarray, mesh) -> dict[str, np.ndarray]:
    """Frozen stage-1 features and stage 1's own deviation energies, per scale."""
    names = anomem.scale_names(model.scales)

    def fn(f, x):
        out = anomem.frozen_outputs(model, f, input_pipeline.to_float(x))
        return {n: out[n]["features"] for n in names} | {
            f"energy/{n}": jnp.mean(jnp.sum(out[n]["deviation"] ** 2, -1), (1, 2)) for n in names}

    return over_images(fn, frozen, images, mesh)


def over_images(fn, frozen, images: np.ndarray, mesh) -> dict[str, np.ndarray]:
    """`fn(frozen, float images) -> {name: [B, ...]}` over every image, batched and jitted once."""
    jitted = parallel.jit_over_batch(fn, mesh, 1)
    chunks: dict[str, list] = {}
    for valid, batch in input_pipeline.eval_batches({"image": images}, 256, mesh):
        for k, v in parallel.fetch(jitted(frozen, batch["image"])).items():
            chunks.setdefault(k, []).append(v[:valid])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def energy(feats: np.ndarray, slots: np.ndarray, beta: float, deviation: str) -> np.ndarray:
    fn = jax.jit(lambda f: jnp.mean(jnp.sum(anomem.deviation_map(
        f, fitted_memory.retrieve(f, slots, jnp.float32(beta))[0], deviation) ** 2, -1), (1, 2)))
    return np.concatenate([np.asarray(fn(jnp.asarray(feats[i:i + 500]))) for i in range(0, len(feats), 500)])


def fused_auroc(train: dict[str, np.ndarray], val: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Scales standardised with the training normals' statistics, summed."""
    return roc_auc_score(labels, sum((val[n] - train[n].mean()) / train[n].std() for n in val))


def load_finished_job(workdir: str):
    """(config, protocol data, model, frozen stage-1 variables, mesh) of a workdir whose stage 1
    is finished and which has a validation split."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = config_lib.from_json(json.load(f))
    if config.validation.fraction <= 0:
        raise SystemExit(f"{workdir} has no validation split (validation.fraction=0)")
    mesh = parallel.make_mesh()
    data = protocols.build_protocol(config)
    normal = ~data.train_labelled_anomaly
    model, s1 = stage1.train(config, data.train_images[normal], data.train_labelled_anomaly[normal], workdir, mesh,
                             metric_writers.LoggingWriter(), restore_only=True)
    return config, data, model, {"params": s1.params, "batch_stats": s1.batch_stats}, mesh


def main(argv):
    del argv
    workdir = _WORKDIR.value
    config, data, model, frozen, mesh = load_finished_job(workdir)
    normal = ~data.train_labelled_anomaly
    names = anomem.scale_names(model.scales)
    train = features(model, frozen, data.train_images[normal], mesh)
    val = features(model, frozen, data.validation.images, mesh)
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
        slots = {n: fitted_memory.fit_slots(train[n], k, seed=i) for i, n in enumerate(names)}
        for beta in map(float, _BETAS.value):
            report(f"k-means, {k} slots per position, beta {beta:g}",
                   {n: energy(train[n][sub], slots[n], beta, config.model.deviation) for n in names},
                   {n: energy(val[n], slots[n], beta, config.model.deviation) for n in names})


if __name__ == "__main__":
    app.run(main)
