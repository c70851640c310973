"""The training loop shared by both stages: steps, logging, progress, checkpoints.

Metrics stay on device between logging steps (no host sync per step); at each log
step they are fetched together, checked for non-finite losses (the error names the
step), written as means over the interval to TensorBoard and the log file, and the
console's progress line is updated.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers

from mscad_jax import checkpoint, logs, parallel


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite."""


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
