"""Command-line parsing shared by `mscad_jax.main` and the scripts in experiments/.

A mistake in `--config=file.py:key=value` or `--config.section.field=value` (an unknown
field, a bad value) ends with one line on stderr and status 2, not ml_collections'
traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

from mscad_jax import config as config_lib


def refuse(message: str) -> NoReturn:
    """Ends the program as every user error does: one line, status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _override_error(argv: list[str]) -> str | None:
    """The unknown field among `--config.x.y=` overrides, named against the loaded config."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None:
        return None
    file, _, arg = path.partition(":")
    try:
        config = config_lib.load_config_file(file, arg or None)
    except Exception:  # the file's own error is reported by absl's message instead
        return None
    for a in argv:
        if a.startswith("--config."):
            field = a[len("--config."):].split("=", 1)[0]
            if not config_lib.has_field(config, field):
                return str(config_lib.unknown_field(config, field))
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parser with the refusals above; pass as `app.run(main, flags_parser=parse_flags)`."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e).strip()
        if "ConfigError: " in text:
            refuse(text.rsplit("ConfigError: ", 1)[1])
        refuse(_override_error(argv) or text)
    except (AttributeError, KeyError):  # config_flags reaching an override's missing field
        refuse(_override_error(argv) or f"a --config override names an unknown field: {' '.join(argv[1:])}")
