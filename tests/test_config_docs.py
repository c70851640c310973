"""Every field of the base config carries a comment where it is defined."""

import inspect
import re

from mscad_jax import config as config_lib


def _documented(function, variable: str) -> set[str]:
    source = inspect.getsource(function)
    return set(re.findall(rf"^\s*{variable}\.([\w.]+)\s*=.*#\s*\S", source, flags=re.M))


def test_every_base_config_field_is_documented():
    documented = _documented(config_lib.base_config, "c")
    section_fields = _documented(config_lib.augment_section, "a")
    missing = []
    for path in config_lib.field_names(config_lib.base_config()):
        section, _, leaf = path.rpartition(".")
        # An augment section's fields are documented once, in augment_section().
        if path in documented or (section in documented and leaf in section_fields):
            continue
        missing.append(path)
    assert not missing, f"fields without a comment in base_config() or augment_section(): {missing}"
