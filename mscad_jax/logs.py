"""What a person at the terminal sees, and what goes to the workdir's log file.

The console gets one progress line per stage, updated in place (step/total, rate, ETA,
loss), warnings, and the final summary table. Every metric goes to TensorBoard and to
`WORKDIR/log.txt`. Library chatter (TensorFlow, oneDNN, orbax, JAX internals) stays out
of the console unless `verbose`.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys
import time
from typing import TextIO

from absl import logging

_NOISY_PATHS = ("/orbax/", "/jax/_src/", "/clu/", "/tensorflow_datasets/", "/etils/")


class _QuietLibraries(pylogging.Filter):
    """Drops INFO records of orbax, JAX internals, TFDS and clu."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or not any(p in record.pathname for p in _NOISY_PATHS)


def setup_console(verbose: bool = False) -> None:
    """Console: warnings and errors only (plus progress lines and results), unless verbose."""
    if not verbose:
        # TensorFlow's C++ logs (oneDNN notices) are read when TF first loads.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.get_absl_handler().setLevel(pylogging.WARNING)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.set_verbosity(logging.INFO)  # records still reach the log file


class LogFile:
    """Copies INFO and above (our own records, not library chatter) to a file while open;
    `enabled=False` (processes other than the first) makes it a no-op. For a bucket URL
    the records go to a local temporary file, uploaded when the block ends (also on an
    error), as object stores cannot append."""

    def __init__(self, path: str, enabled: bool = True):
        from mscad_jax import files

        self.handler = None
        self.path, self.local = path, path
        if enabled:
            if files.is_url(path):
                import tempfile

                fd, self.local = tempfile.mkstemp(suffix=".log.txt")
                os.close(fd)
                self._append_existing()
            self.handler = pylogging.FileHandler(self.local, encoding="utf-8")
            self.handler.setFormatter(pylogging.Formatter("%(asctime)s %(levelname)s %(module)s: %(message)s"))
            self.handler.addFilter(_QuietLibraries())

    def _append_existing(self) -> None:
        """A resumed run continues the bucket's log, as it does a local one."""
        import tensorflow as tf

        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path, "rb") as src, open(self.local, "wb") as dst:
                dst.write(src.read())

    def __enter__(self) -> "LogFile":
        if self.handler:
            logging.get_absl_logger().addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.handler:
            logging.get_absl_logger().removeHandler(self.handler)
            self.handler.close()
            if self.local != self.path:
                from mscad_jax import files

                with open(self.local, "rb") as src, files.atomic_write(self.path, "wb") as dst:
                    dst.write(src.read())
                os.remove(self.local)


def console(text: str, stream: TextIO | None = None) -> None:
    """One line for the person at the terminal (and, as INFO, for the log file)."""
    logging.info("%s", text)
    print(text, file=stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLine:
    """`stage1  120/279  1.0 step/s  ETA 2m38s  loss 31.54`, rewritten in place on a
    terminal; on a file or pipe each update is its own line."""

    def __init__(self, name: str, total: int, start: int = 0, stream: TextIO | None = None, unit: str = "step"):
        self.name, self.total, self.start, self.unit = name, total, start, unit
        self.stream = stream or sys.stderr
        self.began = time.perf_counter()
        self.in_place = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, step: int, loss: float | None = None) -> str:
        elapsed = time.perf_counter() - self.began
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        text = (f"{self.name}  {step:>{len(str(self.total))}}/{self.total}  {rate:.2f} {self.unit}/s  "
                f"ETA {_duration(eta) if eta == eta else '?'}")
        if loss is not None:
            text += f"  loss {loss:.4g}"
        end = "" if self.in_place and step < self.total else "\n"
        self.stream.write(("\r\x1b[K" if self.in_place else "") + text + end)
        self.stream.flush()
        return text
