"""train_and_evaluate: stage 1 -> stage 2 -> evaluation, resuming from the workdir.

Each stage restores its newest checkpoint and trains only the steps it still lacks,
so re-running the same command after a crash or pre-emption carries on. With
mode='evaluate' both stages must be finished and only the evaluation runs again.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from mscad_jax import config as config_lib
from mscad_jax import evaluate, files, logs, parallel, report, stage1, stage2
from mscad_jax.data import input_pipeline, protocols


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = "train") -> dict[str, Any]:
    """Runs the whole job; returns the results written to workdir/results.json."""
    start = time.time()
    config_lib.validate(config, num_devices=jax.device_count())  # scripts calling this get main's refusals
    mesh = parallel.make_mesh()
    data = protocols.build_protocol(config)
    logging.info("data: %s", data.summary())
    # Without stage1.labelled_anomalies, stage 1 learns from the normal images alone (and is
    # then the one-class stage 1 of the same normal class, seed and config).
    stage1_rows = np.ones(len(data.train_images), bool) if config.stage1.labelled_anomalies \
        else ~data.train_labelled_anomaly
    stage1_steps = config.stage1.epochs * input_pipeline.steps_per_epoch(int(stage1_rows.sum()),
                                                                         config.stage1.batch_size)
    stage2_steps = config.stage2.epochs * input_pipeline.steps_per_epoch(len(data.train_images),
                                                                         config.stage2.batch_size)
    if jax.process_index() == 0 and mode == "train":  # the job's size before the first progress line (and ETA)
        validation = 0 if data.validation is None else len(data.validation.images)
        logs.console(f"job: {len(data.train_images)} training images; stage 1 {stage1_steps} steps, stage 2 "
                     f"{stage2_steps} steps, then scoring {len(data.test_labels)} test and {validation} "
                     "validation images (finished steps are skipped on resume)")

    # Only now, with the config and data known to work, does anything go to the workdir.
    files.makedirs(workdir)
    if jax.process_index() == 0:
        files.write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    restore_only = mode == "evaluate"
    with logs.LogFile(os.path.join(workdir, "log.txt"), enabled=jax.process_index() == 0):
        writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
        try:
            model, s1 = stage1.train(config, data.train_images[stage1_rows], data.train_labelled_anomaly[stage1_rows],
                                     workdir, mesh, writer, restore_only=restore_only)
            frozen = {"params": s1.params, "batch_stats": s1.batch_stats}
            # Fitted from the finished stage 1 each time (deterministic), so resuming needs no checkpoint of it.
            frozen = stage2.fit_memory(config, model, frozen, data.train_images[~data.train_labelled_anomaly], mesh)
            det, s2 = stage2.train(config, model, frozen, data.train_images, data.train_labelled_anomaly, workdir,
                                   mesh, writer, restore_only=restore_only)
            variables = {"frozen": frozen, "detector": s2.params, "centers": s2.centers}
            results = evaluate.evaluate(config, data, model, det, variables, workdir, mesh, writer,
                                        pooled_fn=stage2.make_pooled_fn(model, mesh))
        finally:
            writer.close()
    results["wall_time_s"] = time.time() - start
    if jax.process_index() == 0:
        files.write_json_atomic(os.path.join(workdir, "results.json"), results)
        print(report.format_summary(results))
    return results
