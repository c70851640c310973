"""Does a Mahalanobis metric on the deviation maps beat the memory's energy A0?

For a finished job (stage 1 done), fits the default per-position memory
(`stage2.memory_fit=kmeans`, the job's slots, beta and seeds) to the normal training
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

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.metrics import roc_auc_score

import memory_fit_lab  # its --workdir flag, the finished job's loading and feature extraction
from mscad_jax.models import anomem, fitted_memory

_SHRINKAGE = flags.DEFINE_list("shrinkage", ["0.01", "0.1", "1"], "Shrinkage s of C + s tr(C)/c I.")


def deviations(feats: np.ndarray, slots: np.ndarray, beta: float, kind: str) -> np.ndarray:
    fn = jax.jit(lambda f: anomem.deviation_map(f, fitted_memory.retrieve(f, slots, jnp.float32(beta))[0], kind))
    return np.concatenate([np.asarray(fn(jnp.asarray(feats[i:i + 500]))) for i in range(0, len(feats), 500)])


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
    config, data, model, frozen, mesh = memory_fit_lab.load_finished_job(workdir)
    normal = ~data.train_labelled_anomaly
    names = anomem.scale_names(model.scales)
    train = memory_fit_lab.features(model, frozen, data.train_images[normal], mesh)
    splits = {"val": (memory_fit_lab.features(model, frozen, data.validation.images, mesh), data.validation.labels),
              "test": (memory_fit_lab.features(model, frozen, data.test_images, mesh), data.test_labels)}
    s2 = config.stage2
    scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for i, n in enumerate(names):
        slots = fitted_memory.fit_slots(train[n], s2.memory_fit_slots, config.seed + i)
        d_train = deviations(train[n], slots, s2.memory_fit_beta, config.model.deviation).astype(np.float64)
        d_split = {k: deviations(v[0][n], slots, s2.memory_fit_beta, config.model.deviation).astype(np.float64)
                   for k, v in splits.items()}
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
