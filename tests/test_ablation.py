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


def test_a_variant_row_averages_classes_and_seeds_and_reports_size_and_speed():
    # Two classes x two seeds of made-up results.json contents with known means.
    def results(auroc, val_auroc, megabytes, speed):
        scorers = {"auroc_detector": auroc - 0.01, "auroc_a0": auroc - 0.02, "auroc_rotation": auroc - 0.03}
        return {"auroc": auroc, **scorers, "model_megabytes": megabytes, "scoring_images_per_s": speed,
                "validation": {"auroc": val_auroc, **scorers}}
    runs = {(0, 0): results(0.90, 0.80, 2.0, 100.0), (0, 1): results(0.92, 0.84, 2.0, 300.0),
            (3, 0): results(0.70, 0.60, 4.0, 200.0), (3, 1): results(0.80, 0.70, 4.0, 200.0)}
    row = ablation.variant_row("beta_30", {"model.beta": 30.0}, runs, classes=[0, 3], seeds=[0, 1])
    assert row["variant"] == "beta_30" and row["changes"] == "model.beta=30.0"
    assert row["class 0"] == pytest.approx(91.0) and row["class 3"] == pytest.approx(75.0)
    assert row["test AUROC"] == pytest.approx(83.0) and row["val AUROC"] == pytest.approx(73.5)
    assert row["test detector"] == pytest.approx(82.0) and row["test rotation"] == pytest.approx(80.0)
    # Sample std over seeds of the two-class mean: seed means 80 and 86 on test.
    assert row["test std"] == pytest.approx(4.242640687, rel=1e-6)
    assert row["model MB"] == pytest.approx(3.0) and row["scoring img/s"] == pytest.approx(200.0)
    one_seed = ablation.variant_row("chosen", {}, runs, classes=[0, 3], seeds=[0])
    assert one_seed["changes"] == "-" and one_seed["test std"] is None
    del runs[(3, 1)]["scoring_images_per_s"]
    assert ablation.variant_row("x", {}, runs, classes=[0, 3], seeds=[0, 1])["scoring img/s"] is None
