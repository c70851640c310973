"""How well the scoring command's defect masks and boxes outline an MVTec-layout
folder's ground-truth defects: per defect kind, the share of defect pixels inside the
boxes, the IoU of the binary mask with the ground truth, and the share of the image
the boxes take.

  python -m mscad_jax.score --model=MODEL --output=scores.csv --heatmaps=heat/ ROOT/test
  python experiments/defect_mask_overlap.py --scores=scores.csv --root=ROOT
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image

_SCORES = flags.DEFINE_string("scores", None, "The scoring command's CSV, written with --heatmaps.", required=True)
_ROOT = flags.DEFINE_string("root", None, "The folder (test/<defect>, ground_truth/<defect>).", required=True)


def box_mask(boxes: str, shape: tuple[int, int]) -> np.ndarray:
    """The union of "x0 y0 x1 y1;..." boxes as a boolean [H, W] mask."""
    out = np.zeros(shape, bool)
    for box in filter(None, boxes.split(";")):
        x0, y0, x1, y1 = map(int, box.split())
        out[y0:y1, x0:x1] = True
    return out


def main(argv):
    del argv
    with open(_SCORES.value) as f:
        rows = list(csv.DictReader(f))
    per_kind: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        kind = os.path.basename(os.path.dirname(row["path"]))
        stem = os.path.splitext(os.path.basename(row["path"]))[0]
        truth_path = os.path.join(_ROOT.value, "ground_truth", kind, f"{stem}_mask.png")
        if kind == "good" or not os.path.exists(truth_path):
            continue
        truth = np.asarray(Image.open(truth_path)) > 0
        truth = truth[..., 0] if truth.ndim == 3 else truth
        predicted = np.asarray(Image.open(row["mask"])) > 0
        predicted = predicted[..., 0] if predicted.ndim == 3 else predicted
        boxes = box_mask(row["boxes"], truth.shape)
        iou = (truth & predicted).sum() / max((truth | predicted).sum(), 1)
        per_kind.setdefault(kind, []).append((boxes[truth].mean(), iou, boxes.mean()))
    print("| defect | images | defect pixels inside the boxes | mask IoU | image share of the boxes |")
    print("|---|---|---|---|---|")
    for kind, values in sorted(per_kind.items()):
        inside, iou, share = np.mean(values, axis=0)
        print(f"| {kind} | {len(values)} | {100 * inside:.1f}% | {iou:.3f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    sys.exit(app.run(main))
