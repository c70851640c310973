"""Does a Mahalanobis metric on the deviation maps beat the memory's energy A0?

For a finished job (stage 1 done), fits the job's memory as the job fits it
(`stage2.fit_memory`: the default per-position k-means memory) to the normal training
images' frozen features, then scores validation and test by A0 (mean_hw ||D_s||^2) and by
whitened energies mean_hw ||C^-1/2 D_s||^2, C the normal deviations' second moment
shrunk towards its mean eigenvalue (C + s tr(C)/c I): one C per scale (what the metric
detector's 1x1 map could start from instead of the identity), or one per position
(PaDiM's form). Scales are standardised on 2,000 training normals and summed, as the job
sums them. No detector is trained. Table: experiments/results/fashion_mnist_deviation_whitening.md.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/deviation_whitening_probe.py \
      --workdir=runs/ep6/class6 --shrinkage=0.01,0.1,1
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from sklearn.metrics import roc_auc_score

import helpers  # experiments/helpers.py: the finished job's loading and batched scoring
import memory_fit_lab  # its --workdir flag
from mscad_jax import stage2
from mscad_jax.data import input_pipeline
from mscad_jax.models import anomem

_SHRINKAGE = flags.DEFINE_list("shrinkage", ["0.01", "0.1", "1"], "Shrinkage s of C + s tr(C)/c I.")


def inverse_sqrt(c: np.ndarray, shrinkage: float) -> np.ndarray:
    """(C + s tr(C)/c I)^-1/2 of symmetric [..., c, c] matrices."""
    d = c.shape[-1]
    c = c + shrinkage * np.trace(c, axis1=-2, axis2=-1)[..., None, None] / d * np.eye(d)
    w, v = np.linalg.eigh(c)
    return (v * (1 / np.sqrt(w))[..., None, :]) @ np.swapaxes(v, -1, -2)


def energy(d: np.ndarray, whitening: np.ndarray | None) -> np.ndarray:
    if whitening is not None:
        d = d @ whitening if whitening.ndim == 2 else np.einsum("nhwc,hwcd->nhwd", d, whitening)
    return np.mean(np.sum(d ** 2, -1), (1, 2))


def main(argv):
    del argv
    workdir = memory_fit_lab._WORKDIR.value
    config, data, model, frozen, mesh = helpers.load_finished_job(workdir)
    normal = ~data.train_labelled_anomaly
    names = anomem.scale_names(model.scales)
    fitted = stage2.fit_memory(config, model, frozen, data.train_images[normal], mesh)

    def deviation_maps(f, x):
        return anomem.deviation_maps(anomem.frozen_outputs(model, f, input_pipeline.to_float(x)), names)

    maps_of = helpers.over_images(deviation_maps, mesh)
    d_train_all = maps_of(fitted, data.train_images[normal])
    splits = {"val": (maps_of(fitted, data.validation.images), data.validation.labels),
              "test": (maps_of(fitted, data.test_images), data.test_labels)}
    scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for n in names:
        d_train = d_train_all[n].astype(np.float64)
        d_split = {k: v[0][n].astype(np.float64) for k, v in splits.items()}
        shared = np.einsum("nhwc,nhwd->cd", d_train, d_train) / np.prod(d_train.shape[:3])
        per_position = np.einsum("nhwc,nhwd->hwcd", d_train, d_train) / d_train.shape[0]
        variants: dict[str, np.ndarray | None] = {"A0 (identity)": None}
        for s in map(float, _SHRINKAGE.value):
            variants[f"one C per scale, s={s:g}"] = inverse_sqrt(shared, s)
            variants[f"one C per position, s={s:g}"] = inverse_sqrt(per_position, s)
        for variant, whitening in variants.items():
            reference = energy(d_train[:2000], whitening)
            for k in splits:
                scores.setdefault((variant, k), {})[n] = (energy(d_split[k], whitening) - reference.mean()) / reference.std()
    print(f"{workdir}\n\n| energy | " + " | ".join(f"val {n}" for n in names) + " | val fused | "
          + " | ".join(f"test {n}" for n in names) + " | test fused |")
    print("|---" * (2 * len(names) + 3) + "|")
    for variant in dict.fromkeys(v for v, _ in scores):
        cells = []
        for k in ("val", "test"):
            labels = splits[k][1]
            cells += [f"{100 * roc_auc_score(labels, scores[(variant, k)][n]):.2f}" for n in names]
            cells.append(f"{100 * roc_auc_score(labels, sum(scores[(variant, k)].values())):.2f}")
        print(f"| {variant} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
