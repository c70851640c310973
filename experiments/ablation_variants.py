"""The ablation's variants (experiments/ablation.py): config overrides relative to the
chosen method, the columns its table reports and the row each variant makes. Kept apart
from the script so that they can be imported without its command-line flags."""

from __future__ import annotations

import numpy as np

from mscad_jax import config as config_lib
from mscad_jax import report


def paper_form_overrides() -> dict:
    """base_config's value of every field chosen_method sets: the paper's form as DESIGN
    specifies it (no rotations, no instance or reconstruction term, stage 1's memory,
    the conv detector without negatives, detector score), derived so that it follows
    chosen_method whenever a lever is added to it."""
    paper = flatten(config_lib.base_config())
    chosen = flatten(config_lib.chosen_method(config_lib.base_config()))
    return {k: paper[k] for k in chosen if chosen[k] != paper[k]}


def flatten(config, prefix: str = "") -> dict:
    """{'section.field': value} of a ConfigDict."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# Variant name -> config overrides relative to the chosen config. Without the rotation
# head, the chosen score's rotation term is gone: those variants score with the detector.
VARIANTS: dict[str, dict] = {
    "chosen": {},
    "paper_form": paper_form_overrides(),
    # The CSI-like parts, each removed alone.
    "no_rotations": {"stage1.rotations": False, "model.rotation_head": False, "eval.scorer": ("detector",)},
    "no_rotation_head": {"model.rotation_head": False, "eval.scorer": ("detector",)},
    "no_instance": {"stage1.instance_weight": 0.0},
    "no_reconstruction": {"stage1.reconstruction_weight": 0.0},
    # The memory.
    "no_memory": {"stage1.memory_weight": 0.0, "stage1.reconstruction_weight": 0.0, "stage1.variance_weight": 0.0},
    "fit_slots_64": {"stage2.memory_fit_slots": 64},
    "one_scale": {"model.scales": (4,)},
    "no_variance": {"stage1.variance_weight": 0.0},
    "beta_2": {"model.beta": 2.0},
    "beta_30": {"model.beta": 30.0},
    "deviation_difference": {"model.deviation": "difference"},
}
# (column, results.json key): the configured score and each scorer alone, on both splits.
COLUMNS = (("AUROC", "auroc"), ("detector", "auroc_detector"), ("A0", "auroc_a0"), ("rotation", "auroc_rotation"))
SPLITS = (("val", "validation."), ("test", ""))


def variant_row(name: str, overrides: dict, runs: dict, classes: list[int], seeds: list[int]) -> dict:
    """One table row: per-class test AUROC, then every column's listed-class mean on
    validation and test (mean over seeds) and the std over seeds of the AUROC's mean."""
    def mean(values, scale=1.0):  # None where a run lacks the key
        return None if None in values else scale * float(np.mean(values))

    def class_mean(k, key):
        return mean([report.lookup(runs[(k, s)], key) for s in seeds], scale=100)

    row = {"variant": name, "changes": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "-"}
    row |= {f"class {k}": class_mean(k, "auroc") for k in classes}
    for split, prefix in SPLITS:
        for column, key in COLUMNS:
            per_class = [class_mean(k, prefix + key) for k in classes]
            row[f"{split} {column}"] = mean(per_class)
            if column == "AUROC":
                per_seed = [np.mean([report.lookup(runs[(k, s)], prefix + key) for k in classes]) for s in seeds]
                row[f"{split} std"] = 100 * float(np.std(per_seed, ddof=1)) if len(seeds) > 1 else None
    # Issue 26 asks for the artifact's size and scoring speed beside every results table.
    for column, key in (("model MB", "model_megabytes"), ("scoring img/s", "scoring_images_per_s")):
        row[column] = mean([report.lookup(runs[(k, s)], key) for k in classes for s in seeds])
    return row
