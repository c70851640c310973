"""Behaviour check for refactors: the figures of two workdirs (results.json numbers and
every scores.csv column), and optionally two exported artifacts on the same images, side
by side under today's names, with the largest difference of each.

  python experiments/compare_workdirs.py --before=runs/old --after=runs/new \
      [--before_model=old_model --after_model=new_model --images_from=runs/new]

`--images_from` is a workdir whose config.json gives the test split the artifacts score.
Keys present on one side only are listed, not compared.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from absl import app, flags

from mscad_jax import report
from mscad_jax.scoring.state import current_name

_BEFORE = flags.DEFINE_string("before", None, "Workdir evaluated by the old code.", required=True)
_AFTER = flags.DEFINE_string("after", None, "Workdir evaluated by the new code.", required=True)
_BEFORE_MODEL = flags.DEFINE_string("before_model", None, "Artifact exported by the old code.")
_AFTER_MODEL = flags.DEFINE_string("after_model", None, "Artifact exported by the new code.")
_IMAGES_FROM = flags.DEFINE_string("images_from", None, "Workdir whose config.json gives the images to score.")


def _numbers(tree, prefix=""):
    """Flat {dotted key: float} of the numbers in a results dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _columns(path: str) -> dict[str, np.ndarray]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for name in rows[0]:
        try:
            out[current_name(name)] = np.array([float(r[name]) for r in rows])
        except ValueError:
            continue  # paths
    return out


def _compare(title: str, before: dict, after: dict) -> float:
    common = sorted(set(before) & set(after))
    worst = 0.0
    print(f"## {title}: {len(common)} compared")
    for key in common:
        diff = float(np.max(np.abs(np.asarray(before[key]) - np.asarray(after[key]))))
        worst = max(worst, diff)
        if diff > 1e-6:
            print(f"  {key}: max |difference| {diff:.3g}")
    for side, keys in (("before only", set(before) - set(after)), ("after only", set(after) - set(before))):
        if keys:
            print(f"  {side}: {', '.join(sorted(keys))}")
    print(f"  largest difference: {worst:.3g}")
    return worst


def main(argv):
    del argv
    load = lambda d: report.current_keys(json.load(open(os.path.join(d, "results.json"), encoding="utf-8")))  # noqa: E731
    skip = ("wall_time_s",)
    before = {k: v for k, v in _numbers(load(_BEFORE.value)).items() if not k.startswith(skip)}
    after = {k: v for k, v in _numbers(load(_AFTER.value)).items() if not k.startswith(skip)}
    before = {".".join(current_name(p) for p in k.split(".")): v for k, v in before.items()}
    _compare("results.json", before, after)
    _compare("scores.csv", _columns(os.path.join(_BEFORE.value, "scores.csv")),
             _columns(os.path.join(_AFTER.value, "scores.csv")))
    if _BEFORE_MODEL.value and _AFTER_MODEL.value:
        from mscad_jax import config as config_lib
        from mscad_jax import exported
        from mscad_jax.data import protocols

        with open(os.path.join(_IMAGES_FROM.value or _AFTER.value, "config.json"), encoding="utf-8") as f:
            images = protocols.build_protocol(config_lib.from_json(json.load(f))).test_images
        score = lambda path: {current_name(k): v for k, v in exported.load(path).score(images).items()}  # noqa: E731
        _compare("exported scores", score(_BEFORE_MODEL.value), score(_AFTER_MODEL.value))


if __name__ == "__main__":
    app.run(main)
