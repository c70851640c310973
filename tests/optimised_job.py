"""A tiny whole job run as users run it: XLA optimisations on (no conftest settings),
one CPU device. Trains, evaluates, exports, scores the test split with the exported
artifact and prints, as JSON, the largest difference from the evaluation's scores.csv.

  python tests/optimised_job.py WORKDIR
"""

import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import make_tiny_config  # noqa: E402

from mscad_jax import config as config_lib  # noqa: E402
from mscad_jax import export, exported, train  # noqa: E402
from mscad_jax.data import protocols  # noqa: E402


def main(root: str) -> None:
    import jax

    assert not jax.config.read("jax_disable_most_optimizations")
    config = config_lib.chosen_method(make_tiny_config(dataset="digits", normal_class=0))
    config.eval.scorer = ("knn", "rotation", "detector", "pixel_knn")
    config.eval.knn_metric = "euclidean"
    config.eval.plots = False
    workdir, artifact = os.path.join(root, "run"), os.path.join(root, "model")
    results = train.train_and_evaluate(config, workdir)
    export.export(workdir, artifact, ["cpu"])
    out = exported.load(artifact).score(protocols.build_protocol(config).test_images)
    with open(os.path.join(workdir, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    columns = {"score": "score", "knn": "score/knn", "rotation": "score/rotation", "detector": "score/detector",
               "pixel_knn": "score/pixel_knn", "detector/scale3": "detector/scale3", "a0/scale2": "a0/scale2"}
    worst = {c: float(np.max(np.abs(out[k] - np.array([float(r[c]) for r in rows])) / (1.0 + np.abs(out[k]))))
             for c, k in columns.items()}
    print(json.dumps({"rows": len(rows), "auroc": results["auroc"], "relative_difference": worst}))


if __name__ == "__main__":
    main(sys.argv[1])
