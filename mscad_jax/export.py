"""Exports a trained, evaluated workdir as a self-contained scoring artifact.

  python -m mscad_jax.export --workdir=DIR --output=PATH

PATH becomes a directory that `mscad_jax.exported.load` (and the scoring command
`python -m mscad_jax.score`) reads with jax and numpy alone; its files are described
there. The function exported is the one evaluation scored the test split with
(mscad_jax.scorer), fitted state and all, so the artifact's scores are the training
code's. It is lowered for cpu and, where the installed jax can lower for them, for cuda
and tpu; metadata['platforms'] says which. A workdir without finished stages or
evaluation is refused with one line naming what is missing, and nothing is written.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from mscad_jax import __version__, cli, files, logs
from mscad_jax import config as config_lib
from mscad_jax import exported as exported_lib
from mscad_jax.models import anomem, detector
from mscad_jax.scoring import fusion
from mscad_jax.scoring import function as scoring
from mscad_jax.scoring import spec as scoring_spec
from mscad_jax.scoring import state as scoring_state

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs (the module is also a library)."""
    flags.DEFINE_string("workdir", None, "A workdir whose job finished (both stages and evaluation).")
    flags.DEFINE_string("output", None, "Directory to write the artifact to (replaced if it holds one).")
    flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "Platforms to lower for; cpu is required, the others "
                      "are kept where the installed jax can lower for them.")
    flags.mark_flags_as_required(["workdir", "output"])


PREPROCESSING = ("Decode the file; grayscale is tiled to RGB and an alpha channel dropped; resize to "
                 "image_size x image_size with tf.image.resize (bilinear, antialias) unless already that size; "
                 "round and clip to uint8; convert to `channels` (RGB -> gray as 0.299 R + 0.587 G + 0.114 B, "
                 "rounded). The scorer takes these uint8 images [N, image_size, image_size, channels] "
                 "(mscad_jax.data.sources.read_image_file does exactly this).")
OUTPUTS = {
    "score": "[N] final anomaly score: sum of the chosen scorers, each standardised on normal training data",
    "score/<scorer>": "[N] each scorer's score (per-scale scores standardised and weighted)",
    "<detector|a0|knn>/<scale>": "[N] raw per-scale scores (a0 is the training-free deviation energy A0)",
    "map": "[N, H, W] localisation map: sum_s w_s ||D_s||^2 / mean on normal data (a normal pixel ~ sum w)",
}


def check_workdir(workdir: str) -> None:
    """Raises FileNotFoundError naming the first missing piece of a finished job."""
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"{workdir} has no config.json: not the workdir of a mscad_jax job")
    for stage in ("stage1", "stage2"):
        directory = os.path.join(workdir, "checkpoints", stage)
        if not os.path.isdir(directory) or not any(d.isdigit() for d in os.listdir(directory)):
            raise FileNotFoundError(f"{workdir} holds no {stage} checkpoint: run the job first "
                                    f"(python -m mscad_jax.main --config=... --workdir={workdir})")
    for name in ("arrays.npz", "spec.json"):
        if not os.path.isfile(os.path.join(workdir, "scorer", name)):
            raise FileNotFoundError(f"{workdir} has no fitted scorer (scorer/{name}, written when evaluation "
                                    f"finishes): run python -m mscad_jax.main --mode=evaluate "
                                    f"--config=... --workdir={workdir}")


def _lower(fn, weights: dict[str, Any], image_shape: tuple[int, ...], platforms: list[str]):
    """jax.export of `fn(weights, images)` with a symbolic batch; the platforms it took."""
    (batch,) = jax.export.symbolic_shape("batch")
    specs = (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), weights),
             jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8))
    try:
        return jax.export.export(jax.jit(fn), platforms=platforms)(*specs), platforms, {}
    except Exception:  # noqa: BLE001 -- find which platform could not be lowered
        pass
    kept, skipped = [], {}
    for platform in platforms:
        try:
            jax.export.export(jax.jit(fn), platforms=[platform])(*specs)
            kept.append(platform)
        except Exception as e:  # noqa: BLE001
            skipped[platform] = " ".join(str(e).split())[:300]
    if "cpu" not in kept:
        raise RuntimeError(f"the scorer could not be lowered for cpu: {skipped.get('cpu')}")
    return jax.export.export(jax.jit(fn), platforms=kept)(*specs), kept, skipped


def export(workdir: str, output: str, platforms: list[str] | None = None) -> dict[str, Any]:
    """Writes the artifact for `workdir` to `output`; returns its metadata."""
    check_workdir(workdir)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = config_lib.from_json(json.load(f))
    results = {}
    if os.path.isfile(os.path.join(workdir, "results.json")):
        with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
    # The spec is the one source of the scoring settings; the config gives the architecture
    # (and, for a spec.json written before a field existed, that field's value).
    state, spec = scoring_state.load(os.path.join(workdir, "scorer"), defaults=scoring_spec.from_config(config))
    model = anomem.AnoMem(**config.model)
    det = detector.make_detector(spec.names, config.stage2)
    score = scoring.make_scorer(model, det, spec)
    weights = scoring_state.flatten(state)
    image_shape = (config.image_size, config.image_size, config_lib.DATASETS[config.dataset][2])
    exp, kept, skipped = _lower(lambda w, images: score(scoring_state.with_defaults(scoring_state.unflatten(w)), images),
                                weights, image_shape, list(platforms or ["cpu", "cuda", "tpu"]))

    metadata: dict[str, Any] = {
        "format": exported_lib.FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_workdir": os.path.abspath(workdir),
        "input": {"dtype": "uint8", "shape": ["N", *image_shape], "image_size": image_shape[0],
                  "channels": image_shape[2]},
        "preprocessing": PREPROCESSING,
        "batch_size": int(config.eval.batch_size),
        "outputs": OUTPUTS,
        "scales": list(spec.names),
        "score_weights": list(spec.weights),
        "detector_weights": list(spec.map_weights),
        "scorers": list(spec.scorers),
        "available_scorers": list(spec.available),
        "knn_k": spec.knn_k,
        "knn_metric": spec.knn_metric,
        "knn_pooling": spec.knn_pooling,
        "normal_statistics": {
            "per_scale": {k: {"mean": float(v[0]), "std": float(v[1])} for k, v in state["stats"].items()},
            "per_scorer": {k: {"mean": float(v[0]), "std": float(v[1])} for k, v in state["scorer_stats"].items()}},
        "threshold": float(state["threshold"]),
        "threshold_rule": f"{spec.threshold_percentile:g}th percentile of the final scores of "
                          f"{results.get('threshold_set_on', 'normal training images')}; score > threshold is "
                          "flagged anomalous",
        # What the threshold promises (the share of normal images it flags) and what it did
        # on the run's test split.
        "threshold_target_fpr": round(1.0 - spec.threshold_percentile / 100.0, 6),
        "threshold_test_fpr": results.get("threshold_test_fpr"),
        "threshold_test_tpr": results.get("threshold_test_tpr"),
        "validation_auroc": (results.get("validation") or {}).get("auroc"),
        "heatmap_range": list(fusion.heatmap_range(spec.map_weights)),
        "pixel_threshold": float(state["pixel_threshold"]) if "pixel_threshold" in state else None,
        "pixel_threshold_rule": f"{spec.pixel_threshold_percentile:g}th percentile of the map pixels of "
                                f"{results.get('threshold_set_on', 'normal training images')}; pixels above it "
                                "form the defect mask, its connected regions the boxes",
        "dataset": config.dataset,
        "image_folder_dir": config.image_folder_dir,
        "protocol": config.protocol,
        "normal_class": config.normal_class_name or config.normal_class,
        "class_names": results.get("class_names"),
        "test_auroc": results.get("auroc"),
        "platforms": kept,
        "platforms_not_lowered": skipped,
        "versions": {"mscad_jax": __version__, "jax": jax.__version__, "jaxlib": _jaxlib_version()},
    }
    _write(output, exp.serialize(), weights, metadata)
    return metadata


def _jaxlib_version() -> str:
    import jaxlib

    return getattr(jaxlib, "__version__", "unknown")


def _write(output: str, serialized: bytes, weights: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Writes the three files into a fresh directory beside `output`, then renames it
    onto `output`: a reader sees the old artifact or the new one, never a mix."""
    output = os.path.abspath(output)
    if os.path.exists(output) and not (os.path.isdir(output) and (
            not os.listdir(output) or os.path.isfile(os.path.join(output, exported_lib.METADATA_FILE)))):
        raise FileExistsError(f"--output={output} exists and is not an exported model; choose another path")
    staging = f"{output}.tmp-{uuid.uuid4().hex}"
    os.makedirs(staging)
    try:
        with open(os.path.join(staging, exported_lib.MODEL_FILE), "wb") as f:
            f.write(serialized)
        with open(os.path.join(staging, exported_lib.WEIGHTS_FILE), "wb") as f:
            np.savez(f, **weights)
        metadata["files"] = {name: exported_lib.sha256(os.path.join(staging, name))
                             for name in (exported_lib.MODEL_FILE, exported_lib.WEIGHTS_FILE)}
        files.write_json_atomic(os.path.join(staging, exported_lib.METADATA_FILE), metadata)
        old = None
        if os.path.exists(output):
            old = f"{output}.old-{uuid.uuid4().hex}"
            os.rename(output, old)
        os.rename(staging, output)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.setup_console()
    try:
        metadata = export(FLAGS.workdir, FLAGS.output, FLAGS.platforms)
    except (FileNotFoundError, FileExistsError, config_lib.ConfigError) as e:
        cli.refuse(str(e))
    logging.info("exported %s", metadata)
    print(f"exported {FLAGS.workdir} -> {FLAGS.output} (platforms: {', '.join(metadata['platforms'])}; "
          f"threshold {metadata['threshold']:.4g}, {metadata['threshold_rule']})")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
