"""Logging setup for command-line runs: library chatter off, our progress lines on."""

from __future__ import annotations

import logging as pylogging

from absl import logging

_NOISY_PATHS = ("/orbax/", "/jax/_src/", "/clu/metric_writers/")


class _QuietLibraries(pylogging.Filter):
    """Drops INFO records of orbax, JAX internals and clu's writer echo."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or not any(p in record.pathname for p in _NOISY_PATHS)


def quiet_library_logs() -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())
