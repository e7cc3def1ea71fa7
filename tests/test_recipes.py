"""Recipe resolution: defaults that fit the backbone, image size, data and batch size."""

import pytest

from scan_cli.errors import UsageError
from scan_cli.training.recipes import Recipe, describe, load_recipe, loss_settings, resolve


def test_small_images_get_cifar_style_training():
    r = resolve(Recipe(data="some/folder"), img_size=32, mode="joint")
    assert (r.augment, r.weight_decay, r.schedule) == ("pad_crop", 5e-4, "cosine")
    assert r.hflip is True
    assert r.warmup_epochs == pytest.approx(1.0)  # 10 % of 10 epochs


def test_large_images_get_random_resized_crop():
    r = resolve(Recipe(data="some/folder", epochs=90), img_size=224, mode="joint")
    assert (r.augment, r.weight_decay) == ("rrc", 1e-4)
    assert r.warmup_epochs == pytest.approx(5.0)  # capped at 5


@pytest.mark.parametrize("data,flip", [(None, False), ("digits", False), ("mnist", False), ("fashion-mnist", True),
                                       ("cifar10", True)])
def test_flip_except_for_digits(data, flip):
    assert resolve(Recipe(data=data), img_size=16, mode="joint").hflip is flip


def test_learning_rate_scales_with_the_global_batch():
    joint = resolve(Recipe(batch_size=64), img_size=32, mode="joint")
    assert joint.lr == pytest.approx(0.4 * 64 / 256)
    ddp = resolve(Recipe(batch_size=64), img_size=32, mode="joint", world_size=4)
    assert ddp.lr == pytest.approx(4 * joint.lr)
    heads = resolve(Recipe(batch_size=128), img_size=224, mode="heads")
    assert heads.lr == pytest.approx(0.1 * 128 / 256)


def test_values_the_user_set_are_kept():
    r = resolve(Recipe(lr=0.3, weight_decay=0.0, augment="rrc", hflip=False, warmup_epochs=0), img_size=16, mode="joint")
    assert (r.lr, r.weight_decay, r.augment, r.hflip, r.warmup_epochs) == (0.3, 0.0, "rrc", False, 0)


def test_loss_presets_fill_only_what_is_unset():
    paper = loss_settings(Recipe(loss="paper"))
    assert (paper["kd_lambda"], paper["temperature"], paper["kd_ramp"], paper["exit_grad"]) == (0.5, 3.0, 0.0, 1.0)
    assert paper["exit_weights"] == [1.0, 1.0, 1.0]
    mine = loss_settings(Recipe(loss="paper", kd_lambda=0.2, exit_weights=[0.5, 1.0]), num_shallow=2)
    assert mine["kd_lambda"] == 0.2 and mine["exit_weights"] == [0.5, 1.0] and mine["temperature"] == 3.0
    resolved = resolve(Recipe(loss="paper"), img_size=16, mode="joint")
    assert resolved.kd_lambda == 0.5 and resolved.exit_weights == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("key,value", [("lr", -1.0), ("lr", 0.0), ("weight_decay", -0.1), ("warmup_epochs", -1),
                                       ("kd_lambda", 1.5), ("temperature", 0.0), ("exit_grad", 2.0),
                                       ("exit_weights", [1.0, -1.0]), ("augment", "flip"), ("loss", "mine"),
                                       ("epochs", 0), ("img_size", 4), ("lr", float("inf")),
                                       ("gamma", float("nan")), ("pretrained", "no"), ("hflip", "false"),
                                       ("splits", "layer1"), ("milestones", "abc"), ("batch_size", True),
                                       ("workers", -2), ("head_width", -5)])
def test_bad_values_are_usage_errors(key, value):
    with pytest.raises(UsageError, match=key):
        load_recipe(None, {key: value})


def test_describe_names_the_key_values():
    r = resolve(Recipe(data="digits", epochs=12), img_size=16, mode="joint")
    line = describe(r, None)
    for part in ("recipe defaults", "12 epochs", "batch 64", "lr 0.1", "cosine", "pad-and-crop", "16 px", "no flip",
                 "loss scan"):
        assert part in line, (part, line)


def test_paper_recipe_reproduces_the_paper_loss():
    r = load_recipe("cifar100-resnet18-paper")
    assert r.loss == "paper" and r.milestones == [75, 130, 180] and r.warmup_epochs == 0


def test_a_warm_up_longer_than_training_is_shortened():
    r = resolve(Recipe(epochs=2, warmup_epochs=5), img_size=16, mode="joint")
    assert r.warmup_epochs == pytest.approx(0.2)
