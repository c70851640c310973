"""Offline probe behind the map memory (stage2.memory_fit=maps): on a finished local-anomaly
run's stage 1, each map is reconstructed out of its K nearest maps in a bank of normal
training maps (the whole training set, a random subset, or k-means centres of the flattened
maps), and the largest per-position residual norm scores the image. Printed per bank, K,
distance and window: validation cutpaste, validation scar, test cutpaste, test scar AUROC.
No detector: it says which bank the memory should hold before stage 2 is trained on it.
Results: experiments/results/fashion_mnist_local_map_memory.md, part A.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/map_memory_probe.py \
      runs/local_seeds/cutpaste/class0 runs/local_seeds/scar/class0 2
(the two workdirs share stage 1 and differ in local_kind; the last argument lists scales).
"""

import json
import os
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import patch_knn  # noqa: E402

SIZES = (256, 512, 1024)
# The penalty sweep: k-means maps of this size, window 2, K 50 and 100.
PENALTY_BANK, PENALTIES = 512, (0.1, 1.0, 10.0, 100.0)


def main(cutpaste_workdir: str, scar_workdir: str, scales: str) -> None:
    from clu import metric_writers

    from mscad_jax import config as config_lib
    from mscad_jax import evaluate, parallel, stage1
    from mscad_jax.data import protocols
    from mscad_jax.models import anomem, fitted_memory

    configs = [config_lib.from_json(json.load(open(os.path.join(w, "config.json"), encoding="utf-8")))
               for w in (cutpaste_workdir, scar_workdir)]
    mesh = parallel.make_mesh()
    data = [protocols.build_protocol(c) for c in configs]
    writer = metric_writers.create_default_writer(None, just_logging=True)
    model, state = stage1.train(configs[0], data[0].train_images, data[0].train_labelled_anomaly, cutpaste_workdir,
                                mesh, writer, restore_only=True)
    frozen = {"params": state.params, "batch_stats": state.batch_stats}
    names = anomem.scale_names(configs[0].model.scales)
    fn = parallel.jit_over_batch(
        lambda f, x: {n: o["features"] for n, o in anomem.frozen_outputs(model, f, x / 255.0).items() if n in names},
        mesh, 1)
    features = lambda x: evaluate.score_images(fn, (frozen,), x.astype(np.float32), 512, mesh)  # noqa: E731
    train = features(data[0].train_images[~data[0].train_labelled_anomaly])
    sets = [(features(d.validation.images), d.validation.labels) for d in data]
    sets += [(features(d.test_images), d.test_labels) for d in data]
    rng = np.random.default_rng(0)
    print("scale | bank | K | distance | window | val cutpaste | val scar | test cutpaste | test scar")
    for scale in scales.split(","):
        name = f"scale{scale}"
        banks = {"full": train[name]}
        for size in SIZES:
            banks[f"random {size}"] = train[name][rng.choice(len(train[name]), size, replace=False)]
            # The job's own fit (stage2.memory_fit=maps), seeded as the job seeds scale 2.
            banks[f"kmeans {size}"] = fitted_memory.fit_maps(train[name], size, configs[0].seed)
        for bank_name, bank in banks.items():
            for k in (20, 50):
                for distance, window in (("image_ridge", 1), ("image_ridge", 2), ("ridge", 1)):
                    row = [name, bank_name, str(k), distance, str(window)]
                    for feats, labels in sets:
                        q = feats[name]
                        nearest = patch_knn.nearest_rows(bank, q, k)[1]
                        m = patch_knn.aligned_map(distance, bank, q, nearest, penalty=1.0, window=window)
                        row.append(f"{100 * roc_auc_score(labels, m.reshape(len(m), -1).max(1)):.2f}")
                    print(" | ".join(row), flush=True)
        print(f"penalty sweep, {name}, k-means {PENALTY_BANK}, image_ridge, window 2: K | penalty | the four AUROCs")
        for k in (50, 100):
            for penalty in PENALTIES:
                row = [str(k), str(penalty)]
                for feats, labels in sets:
                    q = feats[name]
                    nearest = patch_knn.nearest_rows(banks[f"kmeans {PENALTY_BANK}"], q, k)[1]
                    m = patch_knn.image_ridge_residual(banks[f"kmeans {PENALTY_BANK}"], q, nearest, penalty, 2)
                    row.append(f"{100 * roc_auc_score(labels, m.reshape(len(m), -1).max(1)):.2f}")
                print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
