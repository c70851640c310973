"""What stage 1 buys: A0 and kNN AUROC with the trained encoder and memory, with the
trained encoder and the initial random slots, and with the untrained encoder.

Reads a finished run's workdir (e.g. one class of the Fashion-MNIST sweep):
  TFDS_DATA_DIR=../shared/tensorflow_datasets python experiments/stage1_memory_a0.py \
      --workdir=runs/fmnist_one_class/class0 --config=configs/fashion_mnist.py:cpu=True,normal_class=0 \
      --out=experiments/results/stage1_fmnist_class0.md

Reports the stage-1 loss curve and memory usage (from the run's TensorBoard events), the
train-step throughput, and A0 and kNN AUROC per scale and combined, for (a) the trained
encoder with its trained memories, (b) the same encoder with each memory reset to the
initial random slots of the same seed, and (c) the untrained encoder and slots.
"""

from __future__ import annotations

import glob
import os
import sys

import jax
import numpy as np
from absl import app, flags
from clu import metric_writers
from ml_collections import config_flags

from mscad_jax import config as config_lib
from mscad_jax import cli, evaluate, files, logs, metrics, parallel, stage1
from mscad_jax.data import protocols
from mscad_jax.models import anomem
from mscad_jax.scoring import function as scoring
from mscad_jax.scoring import spec as scoring_spec
from mscad_jax.scoring import state as scoring_state

import helpers  # experiments/helpers.py, beside this script

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config (configs/<name>.py[:args]).",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Markdown report path.", required=True)
flags.mark_flags_as_required(["config"])


def _events(workdir: str) -> dict[str, list[tuple[int, float]]]:
    import tensorflow as tf

    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                series.setdefault(value.tag, []).append((event.step, number))
    return series


def _aurocs(config, data, model, frozen, names, mesh) -> dict[str, dict[str, float]]:
    """{'a0' | 'knn': {scale or 'combined': AUROC}} for one set of stage-1 variables,
    scored by the project's scoring function (mscad_jax.scoring) without a stage 2."""
    spec = scoring_spec.ScorerSpec(tuple(names), (1.0,) * len(names), ("a0", "knn"), knn_k=config.eval.knn_k)
    variables = scoring_state.with_defaults({"frozen": frozen})
    normal = data.train_images[~data.train_labelled_anomaly]
    raw_jit = parallel.jit_over_batch(scoring.raw_score_function(model, None, spec.knn_pooling), mesh, 3)
    train = evaluate.score_images(raw_jit, (frozen, {}, {}), normal, config.eval.batch_size, mesh, keep_maps=False)
    state, spec = scoring.fit(train, variables, spec)
    test = evaluate.score_images(parallel.jit_over_batch(scoring.make_scorer(model, None, spec), mesh, 1), (state,),
                                 data.test_images, config.eval.batch_size, mesh, keep_maps=False)
    out = {}
    for kind in ("a0", "knn"):
        out[kind] = metrics.per_scale_auroc({n: test[f"{kind}/{n}"] for n in names}, data.test_labels)
        out[kind]["combined"] = metrics.image_metrics(test[f"score/{kind}"], data.test_labels)["auroc"]
    return out


def main(argv):
    del argv
    logs.setup_console()
    config = _CONFIG.value
    config_lib.validate(config)
    mesh = parallel.make_mesh()
    data = protocols.build_protocol(config)
    writer = metric_writers.create_default_writer(None, just_logging=True)
    model, state = stage1.train(config, data.train_images, data.train_labelled_anomaly, _WORKDIR.value, mesh,
                                writer, restore_only=True)
    names = anomem.scale_names(config.model.scales)
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    per_epoch = len(data.train_images) // config.stage1.batch_size
    initial = stage1.create_state(model, stage1.make_optimizer(config, per_epoch), config.seed,
                                  data.train_images.shape[1:], mesh)
    params = dict(state.params)
    for n in names:
        params[f"memory_{n}"] = initial.params[f"memory_{n}"]
    random_memory = {"params": params, "batch_stats": state.batch_stats}
    variants = {"trained encoder and memory": _aurocs(config, data, model, trained, names, mesh),
                "trained encoder, initial random slots": _aurocs(config, data, model, random_memory, names, mesh),
                "untrained (initial) encoder and slots": _aurocs(
                    config, data, model, {"params": initial.params, "batch_stats": initial.batch_stats}, names,
                    mesh)}

    series = _events(_WORKDIR.value)
    loss = series.get("stage1/loss", [])
    steps_per_sec = [v for _, v in series.get("stage1/steps_per_second", [])][: max(1, len(loss))]
    curve = {k: v for k, v in series.items() if k == "stage1/loss" or k.endswith("/contrastive")}
    plot_path = os.path.splitext(_OUT.value)[0] + "_loss.png"
    helpers.plot_loss_curves({k: v for k, v in curve.items() if k.startswith("stage1/")}, plot_path)
    flag_text = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
    lines = [f"# Stage 1, `{flag_text}`", "",
             f"Run `{os.path.basename(os.path.normpath(_WORKDIR.value))}`, {len(data.train_images)} training images, "
             f"{config.stage1.epochs} epochs of batch {config.stage1.batch_size}, ResNet-{config.model.depth} "
             f"width {config.model.width}, {config.model.num_slots} slots per memory, "
             f"{jax.device_count()} {jax.devices()[0].platform} device(s).", "",
             "## Stage-1 loss (mean over each logging interval)", "", "| step | loss |", "|---|---|"]
    stride = max(1, len(loss) // 10)
    shown = loss[::stride] + ([loss[-1]] if loss and (len(loss) - 1) % stride else [])
    lines += [f"| {s} | {v:.4f} |" for s, v in shown]
    lines += ["", f"Loss curve: `{os.path.basename(plot_path)}`.", "", "## Memory usage at the end of training", "",
              "| scale | slots with >1% of the attention | entropy of mean attention (nats) | variance hinge |",
              "|---|---|---|---|"]
    for n in names:
        last = lambda key: series.get(f"stage1/{n}/{key}", [(0, float("nan"))])[-1][1]  # noqa: E731
        lines.append(f"| {n} | {last('slots_used'):.1f} / {config.model.num_slots} | {last('usage_entropy'):.3f} "
                     f"(max {np.log(config.model.num_slots):.3f}) | {last('variance'):.4f} |")
    if steps_per_sec:
        rate = np.median(steps_per_sec[1:] or steps_per_sec) * config.stage1.batch_size
        lines += ["", f"Train-step throughput during the run: {rate:.0f} images/s (median of its progress "
                  f"reports; each image enters as two augmented views{' of four rotations' if config.stage1.rotations else ''}; "
                  "other jobs on the machine lower it)."]
    for kind, title in (("a0", "Training-free A0 AUROC (%)"),
                        ("knn", f"kNN AUROC (%): cosine distance of pooled features to the {config.eval.knn_k} "
                                "nearest normal training images")):
        lines += ["", f"## {title}", "", "| stage-1 variables | " + " | ".join(names) + " | combined |",
                  "|---|" + "---|" * (len(names) + 1)]
        for label, r in variants.items():
            lines.append(f"| {label} | " + " | ".join(f"{100 * r[kind][n]:.2f}" for n in names)
                         + f" | {100 * r[kind]['combined']:.2f} |")
    text = "\n".join(lines) + "\n"
    with files.atomic_write(_OUT.value) as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
