"""The stage runner shared by both stages: restore, resume, steps, logging, progress,
checkpoints. `stage1.py` and `stage2.py` describe only what differs (a `Stage`).

Metrics stay on device between logging steps (no host sync per step); at each log
step they are fetched together, checked for non-finite losses (the error names the
step), written as means over the interval to TensorBoard and the log file, and the
console's progress line is updated.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers

from mscad_jax import checkpoint, logs, parallel
from mscad_jax.data import input_pipeline


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite."""


StepFn = Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """What differs between stage 1 and stage 2; `run_stage` does everything else.

    Attributes:
      name: 'stage1' or 'stage2': the checkpoint directory and the metrics' prefix.
      num_steps: the stage's last step.
      abstract_state: () -> the state's structure (eval_shape), the restore target.
      create_state: () -> the initial state, when there is no checkpoint.
      make_step: () -> the jitted `(state, batch) -> (state, metrics)`; built only when
        there are steps left to run.
      arrays: host arrays batched by input_pipeline.train_batches.
      batch_size: the global batch.
      data_seed: seeds the batch order.
    """

    name: str
    num_steps: int
    abstract_state: Callable[[], Any]
    create_state: Callable[[], Any]
    make_step: Callable[[], StepFn]
    arrays: dict[str, np.ndarray]
    batch_size: int
    data_seed: int


def run_stage(stage: Stage, config, workdir: str, mesh: jax.sharding.Mesh, writer: metric_writers.MetricWriter, *,
              restore_only: bool = False) -> Any:
    """Restores `stage` from `workdir/checkpoints/<name>` and trains it to its last step.

    The two stages' precedence, stated once: stage 2 trains on the frozen result of a
    finished stage 1 (train.train_and_evaluate calls this for stage 1, then stage 2), and
    `--mode=evaluate` (restore_only) needs both finished: an unfinished stage is refused
    with FileNotFoundError naming it. A resumed stage continues the same batch order and
    augmentation keys (both are functions of the step), so it ends where an uninterrupted
    run would.
    """
    ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints", stage.name), config.max_checkpoints_to_keep)
    try:
        state = checkpoint.restore_latest(ckpt, stage.abstract_state())
        start = 0 if state is None else int(parallel.fetch(state.step))
        if restore_only and start < stage.num_steps:
            number = stage.name.removeprefix("stage")
            raise FileNotFoundError(f"{workdir} holds no finished stage-{number} checkpoint (found step {start} of "
                                    f"{stage.num_steps}); run with --mode=train first")
        if state is None:
            state = stage.create_state()
        if start < stage.num_steps:
            batches = input_pipeline.train_batches(stage.arrays, stage.batch_size, stage.data_seed, start,
                                                   stage.num_steps, mesh)
            state = run(stage.make_step(), state, batches, num_steps=stage.num_steps, writer=writer, ckpt=ckpt,
                        log_every=config.log_every_steps, checkpoint_every=config.checkpoint_every_steps,
                        prefix=stage.name, start_step=start)
    finally:
        ckpt.close()
    return state


def run(step_fn: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]], state: Any,
        batches: Iterable[tuple[int, Any]], *, num_steps: int, writer: metric_writers.MetricWriter,
        ckpt: ocp.CheckpointManager, log_every: int, checkpoint_every: int, prefix: str,
        start_step: int = 0) -> Any:
    """Runs `state, metrics = step_fn(state, batch)` over `batches` (step-numbered)."""
    progress = logs.ProgressLine(prefix, num_steps, start=start_step) if jax.process_index() == 0 else None
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_time, last_step = time.perf_counter(), start_step
    try:
        for step, batch in batches:
            state, metrics = step_fn(state, batch)
            pending.append((step, metrics))
            done = step + 1
            if done % log_every == 0 or done == num_steps:
                summary = _flush(pending, prefix)
                now = time.perf_counter()
                summary[f"{prefix}/steps_per_second"] = (done - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                writer.write_scalars(done, summary)
                if progress:
                    progress.update(done, summary[f"{prefix}/loss"])
                pending = []
            if done % checkpoint_every == 0 or done == num_steps:
                checkpoint.save(ckpt, done, state)
    finally:
        # Also on an interruption: a checkpoint already being written is completed.
        ckpt.wait_until_finished()
        writer.flush()
    return state


def _flush(pending: list[tuple[int, dict[str, jax.Array]]], prefix: str) -> dict[str, float]:
    fetched = parallel.fetch([m for _, m in pending])
    for (step, _), metrics in zip(pending, fetched):
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise NonFiniteLossError(f"{prefix}: loss is {loss} at step {step + 1}; lower the learning rate "
                                     "or check the inputs")
    keys = fetched[0].keys()
    summary = {f"{prefix}/{k}": float(np.mean([m[k] for m in fetched])) for k in keys}
    logging.info("%s step %d: %s", prefix, pending[-1][0] + 1,
                 ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in summary.items()))
    return summary
