"""benchmarks/scratch_recipe.py: configs, params and the table (the runs themselves are the benchmark's)."""

import importlib.util

import pytest
from conftest import ROOT

from flowerpipe.errors import UserError

spec = importlib.util.spec_from_file_location("scratch_recipe", ROOT / "benchmarks" / "scratch_recipe.py")
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)


def test_a_config_is_params_yaml_from_scratch_with_its_keys_and_a_bad_one_is_one_line():
    name, sets = recipe.overrides("crop+ema:train.scratch_crop_area=0.25, train.scratch_ema=0.99")
    assert (name, sets) == ("crop+ema", {"train.scratch_crop_area": 0.25, "train.scratch_ema": 0.99})
    p = recipe.params_for(6, sets)
    assert (p.model.weights, p.model.width, p.train.scratch_minutes, p.train.scratch_ema) == ("none", 0.5, 6, 0.99)
    assert recipe.overrides("base") == ("base", {})
    with pytest.raises(UserError, match="expected NAME:key=value"):
        recipe.overrides("crop:train.scratch_crop_area")
    with pytest.raises(ValueError, match="train.scratch_crop_aera"):
        recipe.params_for(6, {"train.scratch_crop_aera": 0.25})  # a typo is params.yaml's own error


def test_table_pairs_each_choice_with_the_config_it_adds_to_on_the_same_splits():
    rows = [{"config": c, "split": s, "heldout": acc, "train_accuracy": 0.9, "epochs": 10, "images_per_second": 20}
            for c, s, acc in [("base", 1, 0.70), ("base", 2, 0.60), ("crop", 1, 0.75), ("crop", 2, 0.60),
                              ("crop+ema", 1, 0.80), ("crop+ema", 2, 0.70)]]
    for row in rows[4:]:
        row["heldout_flip"] = row["heldout"] + 0.01 * row["split"]  # test-time flips: +0.01 and +0.02
    lines = recipe.table(rows, ["base", "crop", "crop+ema"]).splitlines()
    assert lines[2].startswith("| base | 2 | 0.650 ± 0.071 | 0.700 0.600 |  |")
    assert "+0.025 ± 0.035 vs base" in lines[3]  # +0.05 and 0.00 on the same splits
    assert "+0.075 ± 0.035 vs crop" in lines[4]  # crop+ema against crop, not against base
    assert "| 0.765, +0.015 |" in lines[4] and "vs base |  | 0.90 |" in lines[3]  # flips: mean and change, or none
