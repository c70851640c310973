"""What each part of the method buys: the chosen config against one change at a time.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/ablation.py \
      --config=configs/fashion_mnist.py:cpu=True --classes=0,2,4,6,8 --workdir=runs/ablation \
      --out=experiments/results/fashion_mnist_ablation.md

Takes the flags of sweep_classes.py (`--config`, `--classes`, `--seeds`, `--workdir`,
`--out`) plus `--variants`. Every (variant, class) is a full job in
WORKDIR/<variant>/class<k>, resumable. The scorer comparison (detector vs a0 vs knn vs
rotation) needs no extra runs: every results.json reports all of them. The `chosen`
variant is the one-class sweep itself: link WORKDIR/chosen to that sweep's directory to
reuse its runs.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

import sweep_classes  # the same flags and the same resumable run
from mscad_jax import config as config_lib
from mscad_jax import cli, files, logs, report

# Variant name -> config overrides relative to the chosen config.
VARIANTS: dict[str, dict] = {
    "chosen": {},
    "no_memory": {"stage1.memory_weight": 0.0, "stage1.reconstruction_weight": 0.0, "stage1.variance_weight": 0.0},
    "one_scale": {"model.scales": (4,)},
    "no_variance": {"stage1.variance_weight": 0.0},
    "beta_2": {"model.beta": 2.0},
    "beta_30": {"model.beta": 30.0},
    "deviation_difference": {"model.deviation": "difference"},
    "no_rotations": {"stage1.rotations": False, "model.rotation_head": False, "eval.scorer": ("knn",)},
    "paper_form": {"stage1.instance_weight": 0.0, "stage1.reconstruction_weight": 0.0, "stage1.rotations": False,
                   "model.rotation_head": False, "stage2.synthetic_anomalies": (), "stage2.pooling": "mean",
                   "eval.scorer": ("detector",)},
}
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Variants to run, from: {', '.join(VARIANTS)}.")


def main(argv):
    del argv
    logs.setup_console()
    base = sweep_classes._CONFIG.value
    classes = [int(k) for k in sweep_classes._CLASSES.value]
    seeds = [int(s) for s in sweep_classes._SEEDS.value]
    rows = []
    for name in _VARIANTS.value:
        overrides = VARIANTS[name]
        aurocs, by_scorer = [], {"detector": [], "A0": [], "kNN": [], "rotation": []}
        for k in classes:
            per_seed = []
            for seed in seeds:
                config = config_lib.apply_overrides(base.copy_and_resolve_references(),
                                                    {**overrides, "normal_class": k, "seed": seed})
                sub = f"class{k}" if seed == 0 else f"class{k}_seed{seed}"
                per_seed.append(sweep_classes.run(config, os.path.join(sweep_classes._WORKDIR.value, name, sub)))
            aurocs.append(100 * np.mean([r["auroc"] for r in per_seed]))
            for col, key in (("detector", "auroc_detector"), ("A0", "auroc_a0"), ("kNN", "auroc_knn"),
                             ("rotation", "auroc_rotation")):
                values = [r[key] for r in per_seed if r.get(key) is not None]
                by_scorer[col].append(100 * np.mean(values) if values else None)
        row = {"variant": name, "changes": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "-"}
        row |= {f"class {k}": a for k, a in zip(classes, aurocs)}
        row["mean AUROC"] = float(np.mean(aurocs))
        for col, values in by_scorer.items():
            present = [v for v in values if v is not None]
            row[f"mean {col}"] = float(np.mean(present)) if present else None
        rows.append(row)
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    text = (f"# Ablation, `{flag_text}`, seeds {','.join(map(str, seeds))}\n\n"
            f"{report.results_table(rows, mean_row=False)}\n"
            "AUROC per class is the configured scorer; the 'mean <scorer>' columns are each scorer alone "
            "(detector: stage-2 distances; A0: training-free deviation energy; kNN: cosine kNN on the vectors "
            "eval.knn_pooling names; rotation: the rotation head).\n")
    for path in filter(None, (os.path.join(sweep_classes._WORKDIR.value, "ablation.md"), sweep_classes._OUT.value)):
        with files.atomic_write(path) as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
