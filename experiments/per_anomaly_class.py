"""Where a run's scorers lose: AUROC of each scorer column against each anomaly class alone,
beside the raw-pixel floor's for the same class (results.json's
`auroc_pixel_knn_floor_per_anomaly_class`; runs evaluated before it existed show '-').

  python experiments/per_anomaly_class.py --runs=runs/ep6/class6,runs/nocrop/class6 \
      --scorers=score,detector,a0,rotation [--split=val]
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from mscad_jax import evaluate, metrics, report

import helpers  # experiments/helpers.py, beside this script

_RUNS = flags.DEFINE_list("runs", None, "Finished job workdirs.", required=True)
_SCORERS = flags.DEFINE_list("scorers", ["score", "detector", "a0", "rotation"], "scores.csv columns to break down.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val"], "The test split (scores.csv) or validation.")


def percent(auroc: float | None) -> str | None:
    return None if auroc is None else f"{100 * auroc:.2f}"


def rows_of_run(run: str, scorers: list[str], split: str) -> list[dict]:
    """One row per scorer (and the floor): its AUROC overall and against each anomaly class alone, in %."""
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)
    names = results.get("class_names")  # the floor's per-class AUROC is keyed by name where the dataset has names
    if split == "val":
        results = results["validation"] or {}
    columns = helpers.read_score_columns(os.path.join(run, "scores.csv" if split == "test" else "validation_scores.csv"),
                                         ["class", "is_anomaly", *scorers])
    labels, classes = columns["is_anomaly"].astype(int), columns["class"].astype(int)
    rows = []
    for name in scorers:
        per_class = evaluate.per_anomaly_class(columns[name], labels, classes, names)
        rows.append({"run": run, "scorer": name, "all": percent(metrics.image_metrics(columns[name], labels)["auroc"]),
                     **{k: percent(v) for k, v in per_class.items()}})
    floor = results.get("auroc_pixel_knn_floor_per_anomaly_class")
    overall = results.get("auroc_pixel_knn_floor")
    rows.append({"run": run, "scorer": "pixel 5-NN floor", "all": percent(overall),
                 **{k: percent(v) for k, v in (floor or {}).items()}})
    return rows


def main(argv):
    del argv
    rows = [row for run in _RUNS.value for row in rows_of_run(run, _SCORERS.value, _SPLIT.value)]
    classes = list(dict.fromkeys(k for row in rows for k in row if k not in ("run", "scorer", "all")))
    print(report.results_table(rows, keys=["run", "scorer", "all", *classes], mean_row=False))
    print(f"AUROC % of the {_SPLIT.value} split's normal images against all its anomalies and against each anomaly "
          "class alone (columns: the class label).")


if __name__ == "__main__":
    sys.exit(app.run(main))
