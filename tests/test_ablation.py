"""experiments/ablation_variants.py (the ablation's): its variants are valid configs and the paper's form undoes
every lever of the chosen method."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
import ablation_variants as ablation  # noqa: E402  (no flags: other experiment scripts' tests define theirs)
from mscad_jax import config as config_lib  # noqa: E402

CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.py")


def test_the_paper_form_sets_back_every_field_the_chosen_method_sets():
    chosen = ablation.flatten(config_lib.load_config_file(CONFIG, "cpu=True"))
    paper = ablation.flatten(config_lib.apply_overrides(config_lib.load_config_file(CONFIG, "cpu=True"),
                                                        ablation.VARIANTS["paper_form"]))
    base = ablation.flatten(config_lib.base_config())
    changed = {k for k in chosen if chosen[k] != paper[k]}
    assert {"stage1.rotations", "model.rotation_head", "stage2.detector", "stage2.memory_fit",
            "eval.scorer"} <= changed
    for key in changed:
        assert paper[key] == base[key], key
    assert paper["eval.scorer"] == ("detector",) and paper["stage2.memory_fit"] == "none"


@pytest.mark.parametrize("name", sorted(ablation.VARIANTS))
def test_every_variant_is_a_valid_config(name):
    config = config_lib.apply_overrides(config_lib.load_config_file(CONFIG, "cpu=True"), ablation.VARIANTS[name])
    config_lib.validate(config)
