"""One-vs-rest sweep over the classes (and seeds) of a config; writes a markdown table.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/sweep_classes.py \
      --config=configs/fashion_mnist.py:cpu=True --workdir=runs/fmnist_one_class
  ... --config=configs/fashion_mnist.py:cpu=True,protocol=unbalanced,anomaly_ratio=0.05 \
      --known_per_class=3 --workdir=runs/fmnist_unbalanced_0.05
  ... --classes=0,6 --seeds=0,1,2 --workdir=runs/fmnist_seeds

`--config` and `--config.field=value` work as for `mscad_jax.main`. Each run (class,
seed and, with `--known_per_class`, known anomaly class) is a full job in its own
sub-directory; a run whose results.json exists is read, not re-run, so an interrupted
sweep resumes where it stopped. Every row shows the run's own raw-pixel 5-NN floor
(`auroc_pixel_knn_floor`, computed on the same split) beside the detector's scorers.
`--known_per_class=N` runs the unbalanced protocol as Deep SAD does: labelled anomalies
from ONE known class, for N classes per normal class (a seeded draw), averaged.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mscad_jax import config as config_lib
from mscad_jax import cli, files, logs, report, train
from mscad_jax.scoring import spec as scoring_spec

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory; one sub-directory per run.")
_CLASSES = flags.DEFINE_list("classes", [str(k) for k in range(10)], "Normal classes to run.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds to run for every class; >1 seed reports mean and std.")
_KNOWN_PER_CLASS = flags.DEFINE_integer("known_per_class", 0, "unbalanced: run N seeded single known anomaly "
                                        "classes per normal class and average them (Deep SAD's protocol); 0 = the "
                                        "config's own known_anomaly_classes.")
_OUT = flags.DEFINE_string("out", None, "Also write the table here (e.g. experiments/results/x.md).")
_STAGE1_FROM = flags.DEFINE_string("stage1_from", None, "unbalanced with stage1.labelled_anomalies=False: start each "
                                   "run from the finished stage 1 of the one-class sweep in this directory (its "
                                   "stage 1 is the same computation), instead of training it again.")
flags.mark_flags_as_required(["config", "workdir"])

# DESIGN.md section 3, one-vs-rest mean AUROC (%).
REFERENCES = {
    "fashion_mnist": "GEOM 93.5, GOAD 94.1 (recalled), ARNet 93.9, raw-pixel OC-SVM 92.8; unbalanced: Deep SAD "
                     "(5% labelled anomalies from one known class) 90.5",
    "cifar10": "CSI 94.3, Rot+Trans 89.8, GEOM 86.0, GOAD 85.1, Deep SAD (5%) 77.9",
    "cifar100": "CSI 89.6, Rot+Trans 79.8, GEOM 78.7, GOAD 74.5",
}
COLUMNS = {"AUROC": "auroc", "detector": "auroc_detector", "A0": "auroc_a0", "kNN": "auroc_knn",
           "rotation": "auroc_rotation", "pixel 5-NN floor": "auroc_pixel_knn_floor",
           # The same on the validation split (validation.fraction > 0), where every choice is made.
           "val AUROC": "validation.auroc", "val detector": "validation.auroc_detector",
           "val A0": "validation.auroc_a0", "val kNN": "validation.auroc_knn",
           "val rotation": "validation.auroc_rotation", "val floor": "validation.auroc_pixel_knn_floor"}
# What the model costs, beside its quality: the saved scorer's size and the scoring speed.
COSTS = {"model MB": "model_megabytes", "scoring img/s": "scoring_images_per_s"}


def known_classes(normal: int, num_classes: int, per_class: int, seed: int) -> list[int]:
    """A fixed seeded draw of `per_class` known anomaly classes for `normal`."""
    others = [k for k in range(num_classes) if k != normal]
    return sorted(np.random.default_rng([seed, 77, normal]).choice(others, per_class, replace=False).tolist())


def reuse_stage1(config, workdir: str, source: str) -> None:
    """Copies a one-class run's stage-1 checkpoints into `workdir`, after checking that
    its config would train the same stage 1."""
    with open(os.path.join(source, "config.json")) as f:  # fields added since take their defaults
        theirs = json.loads(config_lib.from_json(json.load(f)).to_json_best_effort())
    mine = json.loads(config.to_json_best_effort())
    for c in (theirs, mine):  # the one setting allowed to differ: it does not change a one-class run
        c["stage1"].pop("labelled_anomalies", None)
    for field in ("model", "stage1", "seed", "normal_class", "dataset", "image_size", "max_train_examples",
                  "validation"):
        if theirs[field] != mine[field]:
            raise ValueError(f"--stage1_from: {source} was trained with a different {field}")
    if config.stage1.labelled_anomalies:
        raise ValueError("--stage1_from needs stage1.labelled_anomalies=False (stage 1 on normal images only)")
    shutil.copytree(os.path.join(source, "checkpoints", "stage1"), os.path.join(workdir, "checkpoints", "stage1"))


def run(config, workdir: str, stage1_source: str | None = None) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        config_lib.validate(config)
        if stage1_source and not os.path.exists(os.path.join(workdir, "checkpoints", "stage1")):
            reuse_stage1(config, workdir, stage1_source)
        logging.info("running %s", workdir)
        train.train_and_evaluate(config, workdir)
    with open(path) as f:
        return report.current_keys(json.load(f))


def runs_of_class(base, k: int, seed: int) -> list[tuple[str, object]]:
    """(sub-directory, config) of every run that makes up one class's row for one seed."""
    config = base.copy_and_resolve_references()
    config.normal_class = k
    config.seed = seed
    name = f"class{k}" if seed == 0 else f"class{k}_seed{seed}"
    if not _KNOWN_PER_CLASS.value:
        return [(name, config)]
    out = []
    for known in known_classes(k, config_lib.num_classes(config), _KNOWN_PER_CLASS.value, seed):
        c = config.copy_and_resolve_references()
        c.known_anomaly_classes = (known,)
        out.append((f"{name}_known{known}", c))
    return out


def main(argv):
    del argv
    logs.setup_console()
    base = _CONFIG.value
    seeds = [int(s) for s in _SEEDS.value]
    rows = []
    for k in map(int, _CLASSES.value):
        per_seed = []
        for seed in seeds:
            source = None
            if _STAGE1_FROM.value:
                source = os.path.join(_STAGE1_FROM.value, f"class{k}" if seed == 0 else f"class{k}_seed{seed}")
            results = [run(c, os.path.join(_WORKDIR.value, name), source) for name, c in runs_of_class(base, k, seed)]
            per_seed.append({col: np.mean([report.lookup(r, key) for r in results])
                             if report.lookup(results[0], key) is not None else None
                             for col, key in (COLUMNS | COSTS).items()}
                            | {"minutes": np.mean([r["wall_time_s"] for r in results]) / 60})
        row = {"class": str(k)}
        for col in list(COLUMNS) + list(COSTS) + ["minutes"]:
            values = [s[col] for s in per_seed if s[col] is not None]
            scale = 100 if col in COLUMNS else 1
            row[col] = scale * float(np.mean(values)) if values else None
            if len(values) > 1 and col in COLUMNS:
                row[f"{col} std"] = scale * float(np.std(values, ddof=1))  # sample std over seeds
        row["AUROC - floor"] = row["AUROC"] - row["pixel 5-NN floor"] if row["pixel 5-NN floor"] else None
        rows.append(row)
    keys = ["class"] + [c for col in COLUMNS for c in (col, f"{col} std")
                        if any(r.get(c) is not None for r in rows)]
    keys += ["AUROC - floor"] + [c for c in COSTS if any(r.get(c) is not None for r in rows)] + ["minutes"]
    dataset = base.dataset
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    known = (f"; labelled anomalies from one known class, {_KNOWN_PER_CLASS.value} seeded classes per normal "
             "class, averaged" if _KNOWN_PER_CLASS.value else "")
    text = (f"# One-vs-rest, `{flag_text}`, seeds {','.join(map(str, seeds))}{known}\n\n"
            f"{report.results_table(rows, keys)}\n"
            f"AUROC is the configured scorer (`eval.scorer={'+'.join(scoring_spec.scorer_names(base.eval.scorer))}`); detector, A0, kNN and "
            f"rotation are each scorer alone; the floor is raw-pixel 5-NN on the same split; `val` columns are "
            f"the validation split (held-out normal training images against other classes' training images).\n"
            f"References (mean AUROC %): {REFERENCES.get(dataset, 'see DESIGN.md section 3')}.\n")
    for path in filter(None, (os.path.join(_WORKDIR.value, "results.md"), _OUT.value)):
        with files.atomic_write(path) as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
