"""Every field of the base config carries a comment where it is defined."""

import inspect
import re

from mscad_jax import config as config_lib


def _leaf_paths(cfg, prefix=""):
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _leaf_paths(value, path + ".")
        else:
            yield path


def test_every_base_config_field_is_documented():
    source = inspect.getsource(config_lib.base_config)
    documented = set(re.findall(r"^\s*c\.([\w.]+)\s*=.*#\s*\S", source, flags=re.M))
    missing = [p for p in _leaf_paths(config_lib.base_config()) if p not in documented]
    assert not missing, f"fields without a comment in base_config(): {missing}"
