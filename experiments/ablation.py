"""What each part of the method buys: the chosen config against one change at a time.

  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/ablation.py \
      --config=configs/fashion_mnist.py:cpu=True --classes=0,2,4,6,8 --workdir=runs/ablation \
      --out=experiments/results/fashion_mnist_ablation.md

Takes the flags of sweep_classes.py (`--config`, `--classes`, `--seeds`, `--workdir`,
`--out`) plus `--variants`. Every (variant, class) is a full job in
WORKDIR/<variant>/class<k> (seed s > 0: class<k>_seed<s>), resumable. The scorer
comparison (detector vs A0 vs rotation) needs no extra runs: every results.json reports
all of them, on validation and test. The `chosen` variant is the one-class sweep itself:
link WORKDIR/chosen to that sweep's directory to reuse its runs.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import sweep_classes  # the same flags and the same resumable run
from ablation_variants import VARIANTS, variant_row
from mscad_jax import config as config_lib
from mscad_jax import cli, files, logs, report


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
        runs = {}  # (class, seed) -> results
        for k in classes:
            for seed in seeds:
                config = config_lib.apply_overrides(base.copy_and_resolve_references(),
                                                    {**overrides, "normal_class": k, "seed": seed})
                sub = f"class{k}" if seed == 0 else f"class{k}_seed{seed}"
                runs[(k, seed)] = sweep_classes.run(config, os.path.join(sweep_classes._WORKDIR.value, name, sub))
        rows.append(variant_row(name, overrides, runs, classes, seeds))
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    text = (f"# Ablation, `{flag_text}`, seeds {','.join(map(str, seeds))}\n\n"
            f"{report.results_table(rows, mean_row=False)}\n"
            "Per class: the configured score on test, mean over seeds. 'val'/'test' <column>: the ten-class "
            "(listed-class) mean of the configured score (AUROC) and of each scorer alone (detector: stage-2 "
            "distances; A0: training-free deviation energy; rotation: the rotation head), mean over seeds; "
            "'std': the sample std over seeds of the listed-class mean (one seed: -); model MB and scoring img/s: "
            "the exported artifact's size and the job's scoring speed, mean over runs.\n")
    for path in filter(None, (os.path.join(sweep_classes._WORKDIR.value, "ablation.md"), sweep_classes._OUT.value)):
        with files.atomic_write(path) as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
