"""Which scorers to sum, chosen on validation over seeds: every combination named in
`--combos`, recomputed offline from the runs of a sweep (no model is re-run).

  python experiments/score_combinations.py --workdir=runs/fm10 \
      --combos=detector+rotation,detector+a0+rotation,detector --out=experiments/results/x.md

Each run directory of the sweep (`class<k>` or `class<k>_seed<s>`, with `_known<j>` for the unbalanced
sweep's known classes, averaged per class and seed) holds results.json
(with `scorer_stats`, each scorer's standardisation), scores.csv and
validation_scores.csv (one column per scorer); a combination's score is the sum the job's
`fusion.final_score` takes over those columns (each standardised as the job does), so the combination a config names gives the
same AUROC as its job. A term may carry a weight (`detector+0.5*rotation`: the standardised
rotation score weighed half) and may be one scale of a scorer (`detector/scale2`, standardised
with that scale's statistics from the run's scorer/arrays.npz): a sum of one scorer's scales
alone, `detector/scale2+detector/scale3`, ranks as the job's detector with those
`eval.detector_weights`. The table shows, per combination, the ten-class mean on
validation and on test (mean over seeds, and the sample std over seeds of that
ten-class mean), the worst class and how many classes sit below their floor.

A lever measured as a second sweep on the same classes and seeds (one config field changed) is read
paired with the baseline sweep: `--paired_with=runs/baseline` keeps the runs both hold and adds each run's
difference and their mean with its sample std.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
from absl import app, flags

from mscad_jax import files, metrics, report
from mscad_jax.scoring import fusion

import helpers  # experiments/helpers.py, beside this script

_WORKDIR = flags.DEFINE_string("workdir", None, "A sweep_classes.py workdir.", required=True)
_COMBOS = flags.DEFINE_list("combos", ["detector+rotation", "detector+a0+rotation", "detector", "rotation"],
                            "Scorer sums to compare, e.g. detector+rotation.")
_OUT = flags.DEFINE_string("out", None, "Also write the table here.")
_CLASSES = flags.DEFINE_list("classes", None, "Only these classes (default: every finished run's).")
_PAIRED_WITH = flags.DEFINE_string(
    "paired_with", None, "A baseline sweep workdir (one lever changed): keep the (class, seed) runs both hold and add "
    "the paired differences, this workdir minus the baseline, per run and as a mean with its sample std.")

RUN_NAME = re.compile(r"^class(\d+)(?:_seed(\d+))?(?:_known(\d+))?$")
SPLITS = {"val": ("validation_scores.csv", "validation.auroc_pixel_knn_floor"),
          "test": ("scores.csv", "auroc_pixel_knn_floor")}


def weighted_term(term: str) -> tuple[float, str]:
    """'0.5*rotation' -> (0.5, 'rotation'); 'rotation' -> (1.0, 'rotation')."""
    weight, _, name = term.rpartition("*")
    return (float(weight) if weight else 1.0), name


def combination_auroc(columns: dict[str, np.ndarray], scorer_stats: dict[str, dict[str, float]],
                      combo: list[str]) -> float:
    """AUROC of the job's final score had it summed the (weighted) scorers in `combo`."""
    terms = [weighted_term(t) for t in combo]
    missing = [s for _, s in terms if s not in columns or s not in scorer_stats]
    if missing:
        raise ValueError(f"scorers {missing} are not in this run's scores (it has {sorted(scorer_stats)})")
    score = sum(w * np.asarray(fusion.standardize(columns[s], scorer_stats[s]["mean"], scorer_stats[s]["std"]))
                for w, s in terms)
    return metrics.image_metrics(score, columns["is_anomaly"])["auroc"]


def run_statistics(run: str, results: dict) -> dict[str, dict[str, float]]:
    """The job's per-scorer statistics (results.json), and each scale's (scorer/arrays.npz) where the run kept them."""
    stats = dict(results["scorer_stats"])
    arrays = os.path.join(run, "scorer", "arrays.npz")
    if os.path.exists(arrays):
        with np.load(arrays) as saved:
            stats |= {k[len("stats."):]: {"mean": float(saved[k][0]), "std": float(saved[k][1])}
                      for k in saved.files if k.startswith("stats.")}
    return stats


def collect(workdir: str, combos: list[list[str]]) -> dict[tuple[int, int], dict[str, float]]:
    """(class, seed) -> {'<split> <combo>': AUROC, '<split> floor': floor} for every finished run; the runs of one
    class and seed with different known anomaly classes (`sweep_classes.py --known_per_class`, `..._known<j>`)
    are averaged, as that sweep's table averages them."""
    out: dict[tuple[int, int], list[dict[str, float]]] = {}
    for name in sorted(os.listdir(workdir)):
        match = RUN_NAME.match(name)
        run = os.path.join(workdir, name)
        if not match or not all(os.path.exists(os.path.join(run, f)) for f in ("results.json", SPLITS["val"][0])):
            continue
        with open(os.path.join(run, "results.json")) as f:
            results = json.load(f)
        row = {}
        stats = run_statistics(run, results)
        for split, (csv_name, floor_key) in SPLITS.items():
            columns = helpers.read_score_columns(os.path.join(run, csv_name))
            row[f"{split} floor"] = report.lookup(results, floor_key)
            for combo in combos:
                row[f"{split} {'+'.join(combo)}"] = combination_auroc(columns, stats, combo)
        out.setdefault((int(match.group(1)), int(match.group(2) or 0)), []).append(row)
    return {key: {col: _mean([r[col] for r in rows]) for col in rows[0]} for key, rows in out.items()}


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def summary_rows(runs: dict[tuple[int, int], dict[str, float]], combos: list[list[str]]) -> list[dict]:
    classes = sorted({k for k, _ in runs})
    seeds = sorted({s for _, s in runs})
    complete = [s for s in seeds if all((k, s) in runs for k in classes)]  # a mean needs every class
    rows = []
    for combo in map("+".join, combos):
        row = {"score": combo}
        for split in SPLITS:
            class_means = {k: np.mean([runs[(k, s)][f"{split} {combo}"] for s in seeds if (k, s) in runs])
                           for k in classes}
            floors = {k: np.mean([runs[(k, s)][f"{split} floor"] for s in seeds if (k, s) in runs]) for k in classes}
            per_seed = [np.mean([runs[(k, s)][f"{split} {combo}"] for k in classes]) for s in complete]
            row[f"{split} mean"] = 100 * float(np.mean(list(class_means.values())))
            row[f"{split} std"] = 100 * float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
            worst = min(class_means, key=class_means.get)
            row[f"{split} worst class"] = f"{worst}: {100 * class_means[worst]:.2f}"
            row[f"{split} below floor"] = sum(class_means[k] < floors[k] for k in classes)
        rows.append(row)
    return rows


def paired_rows(runs: dict[tuple[int, int], dict[str, float]], baseline: dict[tuple[int, int], dict[str, float]],
                combos: list[list[str]]) -> tuple[list[dict], list[dict]]:
    """The lever's effect run by run (this sweep minus the baseline, same class and seed: training noise
    shared by the pair cancels) and its mean over pairs with the sample std of the differences."""
    keys = sorted(set(runs) & set(baseline))
    columns = [f"{split} {'+'.join(c)}" for c in combos for split in SPLITS]
    per_pair = [{"class": k, "seed": s, **{c: 100 * (runs[(k, s)][c] - baseline[(k, s)][c]) for c in columns}}
                for k, s in keys]
    summary = []
    for c in columns:
        diffs = np.array([row[c] for row in per_pair])
        summary.append({"score": c, "pairs": len(diffs), "mean difference": float(diffs.mean()),
                        "sample std": float(diffs.std(ddof=1)) if len(diffs) > 1 else None,
                        "pairs better": int((diffs > 0).sum())})
    return summary, per_pair


def main(argv):
    del argv
    combos = [c.split("+") for c in _COMBOS.value]
    runs = collect(_WORKDIR.value, combos)
    if _CLASSES.value:
        runs = {key: row for key, row in runs.items() if str(key[0]) in _CLASSES.value}
    if not runs:
        raise SystemExit(f"no finished run with validation_scores.csv under {_WORKDIR.value}")
    baseline = None
    if _PAIRED_WITH.value:
        baseline = collect(_PAIRED_WITH.value, combos)
        runs = {key: row for key, row in runs.items() if key in baseline}
        if not runs:
            raise SystemExit(f"{_WORKDIR.value} and {_PAIRED_WITH.value} have no finished (class, seed) run in common")
    classes = sorted({k for k, _ in runs})
    seeds = sorted({s for _, s in runs})
    per_run = [{"class": k, "seed": s, **{c: 100 * v for c, v in row.items()}} for (k, s), row in sorted(runs.items())]
    text = (f"# Scorer combinations on `{_WORKDIR.value}`: classes {','.join(map(str, classes))}, seeds "
            f"{','.join(map(str, seeds))}\n\n{report.results_table(summary_rows(runs, combos), mean_row=False)}\n"
            "Means over classes of the per-class mean over seeds; std: sample std over the seeds that finished every "
            "class of their ten-class (or listed-class) mean; worst class and below floor on the per-class mean over "
            "seeds.\n\n## Every run\n\n" + report.results_table(per_run, mean_row=False) + "\n")
    if baseline is not None:
        summary, per_pair = paired_rows(runs, baseline, combos)
        text += (f"\n## Paired with `{_PAIRED_WITH.value}` (this sweep minus it, AUROC points)\n\n"
                 + report.results_table(summary, mean_row=False) + "\n"
                 + report.results_table(per_pair, mean_row=False) + "\n")
    if _OUT.value:
        with files.atomic_write(_OUT.value) as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(app.run(main))
