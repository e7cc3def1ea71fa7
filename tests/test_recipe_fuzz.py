"""Recipe files are untrusted input (issue 20): each hostile value, written as TOML, is a usage error
(exit 2) on one line that names the key and the file, before anything loads; no traceback, no raw
exception name. Booleans must be booleans, lists lists, numbers finite and in range."""

from __future__ import annotations

import re

import pytest

RAW = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback")

VARIANTS = [
    # non-finite numbers
    "lr = inf", "lr = nan", "weight_decay = inf", "temperature = inf", "gamma = inf", "exit_weights = [1.0, inf]",
    "momentum = nan", "kd_lambda = -inf", "warmup_epochs = inf", "label_smoothing = nan", "hint_weight = inf",
    # strings for yes/no fields
    'pretrained = "no"', 'hflip = "false"', 'kd = "no"', 'attention = "false"', 'feature_hint = "off"',
    'streaming = "yes"', "pretrained = 0", "kd = 1",
    # strings and scalars for lists
    'splits = "layer1"', 'milestones = "abc"', "milestones = 30", "exit_weights = 1.0", 'exit_weights = ["a"]',
    "milestones = [1.5]", "milestones = [0]", "splits = [1, 2]", 'splits = [""]',
    # out of range
    "head_width = -5", "head_width = 0", "workers = -2", "seed = -1", "epochs = 0", "batch_size = 0",
    "img_size = 4", "momentum = 1.0", "val_fraction = 1.0", "val_fraction = 0", "kd_ramp = 2", "exit_grad = -0.1",
    "last_weight = 0", "lr = -0.1",
    # wrong types
    "batch_size = true", "epochs = 2.5", 'epochs = "10"', "workers = 1.5", "head_width = true", 'lr = "0.1"',
    "seed = 1.0", "optimizer = 3", 'schedule = "linear"', 'kd_teacher = "first"', "backbone = 18", 'data = ""',
    "description = 5", 'image_column = ""', "label_column = 3", "amp = true", "channels_last = false",
    # not TOML, unknown keys
    "lr = ", "lr 0.1", "learning_rate = 0.1",
]


def key_of(line: str) -> str:
    return re.split(r"[ =]", line, maxsplit=1)[0]


@pytest.mark.parametrize("line", VARIANTS)
def test_a_hostile_recipe_is_one_usage_line_naming_the_key_and_file(run_cli, tmp_path, line):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f'description = "fuzz"\n{line}\n')
    code, out, err = run_cli("fit", "resnet10_cifar", "--recipe", str(recipe), "--print-recipe")
    assert code == 2 and out == "", (line, code, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "mine.toml" in err, (line, err)
    assert key_of(line) in err or "line 2" in err, (line, err)  # the key, or where the TOML breaks
    assert not RAW.search(err), (line, err)


def test_the_suite_is_large_and_a_sound_recipe_passes(run_cli, tmp_path):
    assert len(VARIANTS) >= 40
    recipe = tmp_path / "mine.toml"
    recipe.write_text('description = "fuzz"\nlr = 0.1\nhflip = false\nsplits = ["layer1", "layer2"]\nmilestones = [3]\n')
    code, out, err = run_cli("fit", "resnet10_cifar", "--recipe", str(recipe), "--print-recipe")
    assert code == 0 and '"hflip": false' in out, err


def test_every_recipe_field_has_a_rule():
    from dataclasses import fields

    from scan_cli.training.recipes import RULES, Recipe

    assert {f.name for f in fields(Recipe)} == set(RULES)
