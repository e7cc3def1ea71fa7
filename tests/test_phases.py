"""The heads phase after joint training (issue 22): the switch, its optimiser state, exact resume in
either phase, the recipe keys."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_training import make_folder, tiny_recipe

from scan_cli.errors import ScanError, UsageError
from scan_cli.training import phases
from scan_cli.training.loop import FitOptions, fit
from scan_cli.training.recipes import Recipe, describe, load_recipe, resolve
from scan_cli.training.schedule import lr_at


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"), per_class=10)


def _checkpoint(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (safe_open is not a dict)


def _fit_saving_checkpoints(recipe, out, keep):
    """An uninterrupted run that copies its checkpoint after every epoch (on_epoch runs after the save)."""
    def copy(epoch, history):
        shutil.copy(out / "checkpoint.safetensors", keep / f"epoch{epoch}.safetensors")

    keep.mkdir(exist_ok=True)
    return fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=out), on_epoch=copy)


def test_heads_phase_keeps_backbone_and_bn_statistics_and_resets_the_optimiser(folder, tmp_path):
    # one optimiser group (last_lr_scale 1), so the state's indices are model.parameters()'s order
    recipe = tiny_recipe(data=str(folder), epochs=1, heads_epochs=2, heads_last=False, last_lr_scale=1.0)
    summary = _fit_saving_checkpoints(recipe, tmp_path / "run", tmp_path / "ck")
    assert [h["phase"] for h in summary["history"]] == ["joint", "heads", "heads"]
    joint, meta1 = _checkpoint(tmp_path / "ck" / "epoch1.safetensors")
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    backbone = [k for k in final if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone) and any(k.endswith(".weight") for k in backbone)
    for k in backbone:  # weights, the last classifier and BN running statistics: exactly as joint training left them
        assert torch.equal(final[k], joint[f"model.{k}"]), k
    heads = [k for k in final if not k.startswith("backbone.")]
    assert any(not torch.equal(final[k], joint[f"model.{k}"]) for k in heads if k.endswith(".weight"))
    assert any(not torch.equal(final[k], joint[f"model.{k}"]) for k in heads if k.endswith("running_mean"))

    # the optimiser's state: the joint phase has momentum for every parameter; the heads phase starts
    # afresh, so its checkpoints hold state for the heads only
    _, meta2 = _checkpoint(tmp_path / "ck" / "epoch2.safetensors")
    joint_state = set(json.loads(meta1["opt_layout"]))
    heads_state = set(json.loads(meta2["opt_layout"]))
    assert heads_state and heads_state < joint_state
    names = _param_names(tmp_path / "run")
    assert all(not names[int(i)].startswith("backbone.") for i in heads_state)
    assert any(names[int(i)].startswith("backbone.") for i in joint_state)


def _param_names(run_dir):
    """Parameter names in the optimiser's order (model.parameters())."""
    from scan_cli import artifact

    model, _ = artifact.load(run_dir / "model.safetensors")
    return [n for n, _ in model.named_parameters()]


# stop: in the joint phase, at the switch, in the heads phase; scale: last_lr_scale (a second optimiser group)
@pytest.mark.parametrize("stop,scale", [(1, 1.0), (2, 1.0), (3, 1.0), (1, 3.0), (3, 3.0)])
def test_resume_in_either_phase_gives_the_uninterrupted_weights(folder, tmp_path, stop, scale):
    recipe = tiny_recipe(data=str(folder), epochs=2, heads_epochs=2, last_lr_scale=scale)
    straight = tmp_path / "straight"
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=straight))

    broken = tmp_path / "broken"

    def interrupt(epoch, history):
        if epoch == stop:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=broken), on_epoch=interrupt)
    resumed = fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, resume=broken))
    assert [h["phase"] for h in resumed["history"]] == ["joint", "joint", "heads", "heads"]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_a_run_from_before_the_heads_phase_resumes_without_one():
    old = Recipe(epochs=10)  # a checkpoint's recipe from before heads_epochs and last_lr_scale
    assert phases.as_trained(Recipe(epochs=10), old).heads_epochs == 0
    assert phases.as_trained(Recipe(epochs=10), old).last_lr_scale == 1.0  # one optimiser group, as it trained
    assert phases.as_trained(Recipe(epochs=10, heads_epochs=3), old).heads_epochs == 3
    # an API caller's unresolved recipe resumes with what the run resolved (its checkpoint's values)
    new = Recipe(epochs=10, heads_epochs=3, last_lr_scale=4.0)
    assert phases.as_trained(Recipe(epochs=10), new).last_lr_scale == 4.0
    assert phases.as_trained(Recipe(epochs=10), new).heads_epochs == 3


def test_a_run_in_its_heads_phase_cannot_grow_joint_epochs():
    history = [{"epoch": 1, "phase": "joint"}, {"epoch": 2, "phase": "heads"}]
    phases.check_resume(history, Recipe(epochs=1, heads_epochs=2))  # as trained: fine
    with pytest.raises(ScanError, match="heads-only phase"):
        phases.check_resume(history, Recipe(epochs=3, heads_epochs=2))


def test_heads_phase_schedule():
    r = resolve(Recipe(lr=0.1, epochs=4, heads_epochs=2, heads_lr=0.02, warmup_epochs=0), img_size=16, mode="joint")
    for e in (0, 1, 3):
        assert phases.lr_for(r, e, 0.5) == lr_at(r, e, 0.5)  # the joint epochs keep their schedule
    assert phases.lr_for(r, 4) == pytest.approx(0.02)  # the heads phase: heads_lr, cosine to 0
    assert phases.lr_for(r, 5) == pytest.approx(0.01)
    assert phases.lr_for(r, 5, 0.999) == pytest.approx(0.0, abs=1e-5)
    assert phases.total_epochs(r) == 6 and not phases.in_heads_phase(r, 3) and phases.in_heads_phase(r, 4)


def test_auto_heads_epochs_rounds_and_is_capped():
    from scan_cli.training import recipes

    assert [recipes.auto_heads_epochs(n, "joint") for n in (1, 3, 4, 5, 10, 12, 200)] == [0, 0, 1, 2, 3, 4, 5]
    assert recipes.auto_heads_epochs(10, "heads") == 0


def test_resolve_fills_the_phase_keys():
    heads = resolve(Recipe(heads_epochs=3), img_size=16, mode="heads")
    assert heads.heads_epochs == 0  # a heads-only run is all heads phase
    joint = resolve(Recipe(epochs=10), img_size=16, mode="joint", world_size=2)
    assert joint.heads_epochs == 3 and joint.heads_last  # on by default for joint training (issue 22)
    # the last section's rate: 4x in joint training from scratch on small images with the scan loss
    assert joint.last_lr_scale == 4.0 and heads.last_lr_scale == 1.0
    assert "past the last split at 4x lr" in describe(joint, None) and "4x" not in describe(heads, None)
    assert resolve(Recipe(epochs=10), img_size=224, mode="joint").last_lr_scale == 1.0  # not measured there
    assert resolve(Recipe(epochs=10, loss="paper"), img_size=16, mode="joint").last_lr_scale == 1.0
    assert resolve(Recipe(epochs=10, last_lr_scale=2.5), img_size=224, mode="joint").last_lr_scale == 2.5
    assert joint.kd_teacher == "ensemble" and heads.kd_teacher == "last"  # a trained backbone's deepest exit teaches
    assert resolve(Recipe(epochs=10, loss="paper"), img_size=16, mode="joint").kd_teacher == "last"  # the paper's
    assert resolve(Recipe(epochs=10, kd_teacher="last"), img_size=16, mode="joint").kd_teacher == "last"
    paper = Path(__file__).resolve().parents[1] / "recipes" / "cifar100-resnet18-paper.toml"
    assert load_recipe(str(paper)).heads_epochs == 0  # the paper's schedule, exactly
    # the heads phase restarts at the joint phase's peak rate (whatever set it); heads-only keeps its own
    assert joint.heads_lr == joint.lr == pytest.approx(0.4 * 128 / 256)
    assert resolve(Recipe(epochs=10, lr=0.05), img_size=16, mode="joint").heads_lr == 0.05
    adamw = resolve(Recipe(epochs=10, optimizer="adamw"), img_size=16, mode="joint")
    assert adamw.heads_lr == adamw.lr == pytest.approx(1e-3 * 64 / 256)
    assert resolve(Recipe(heads_epochs=4, heads_lr=0.3), img_size=16, mode="joint").heads_epochs == 4


@pytest.mark.parametrize("key,value", [("heads_epochs", -1), ("heads_epochs", 1.5), ("heads_epochs", True),
                                       ("heads_epochs", "3"), ("heads_lr", 0), ("heads_lr", -0.1),
                                       ("heads_lr", "fast"), ("heads_lr", float("nan")), ("heads_last", "yes"),
                                       ("last_lr_scale", 0), ("last_lr_scale", float("inf")), ("last_lr_scale", "2")])
def test_bad_phase_keys_are_usage_errors(key, value):
    with pytest.raises(UsageError, match=key):
        load_recipe(None, {key: value})


def test_bad_phase_key_in_a_recipe_file_is_one_line_exit_2(run_cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("heads_epochs = -2\n")
    code, _, err = run_cli("fit", "resnet10_cifar", "--recipe", str(bad), "--print-recipe")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "heads_epochs" in lines[0], err


def test_heads_last_trains_the_last_section_only(folder, tmp_path):
    """heads_last: the backbone past the last split (layer4, its BN statistics, the classifier) keeps
    learning in the heads phase; everything the shallow exits read stays bit for bit."""
    recipe = tiny_recipe(data=str(folder), epochs=1, heads_epochs=1, heads_last=True)
    _fit_saving_checkpoints(recipe, tmp_path / "run", tmp_path / "ck")
    joint, _ = _checkpoint(tmp_path / "ck" / "epoch1.safetensors")
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    last = [k for k in final if k.startswith(("backbone.model.layer4.", "backbone.model.fc."))]
    assert any(k.endswith("running_mean") for k in last) and any(k.startswith("backbone.model.fc.") for k in last)
    learned = [k for k in last if k.endswith((".weight", "running_mean")) and "num_batches" not in k]
    assert learned and all(not torch.equal(final[k], joint[f"model.{k}"]) for k in learned)
    for k in final:
        if k.startswith("backbone.") and k not in last:
            assert torch.equal(final[k], joint[f"model.{k}"]), k


def test_last_lr_scale_gives_the_last_section_its_own_rate_in_joint_training_only():
    from scan_cli.model import build_bare_model
    from scan_cli.training.loop import _train_step

    model, size = build_bare_model("resnet10_cifar", 16, num_classes=3)
    last = {id(p) for m in phases.deepest_only_modules(model, size) for p in m.parameters(recurse=False)}
    groups = phases.param_groups(model, Recipe(last_lr_scale=3.0), "joint", size)
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 3.0]
    assert {id(p) for p in groups[1]["params"]} == last and not last & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(phases.param_groups(model, Recipe(), "joint", size)) == 1  # the default: one rate
    assert len(phases.param_groups(model, Recipe(last_lr_scale=3.0), "heads", size)) == 1  # heads-only run

    recipe = resolve(Recipe(last_lr_scale=3.0, epochs=2), img_size=size, mode="joint")
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    model.train()
    _train_step(model, torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 0]), optimizer, 0.05, recipe,
                torch.device("cpu"), None, None, False)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.05), pytest.approx(0.15)]
    # the heads phase: every learning parameter at heads_lr
    phases.enter_heads_phase(model, optimizer, recipe.epochs, recipe, lambda m: m, size)
    assert [g["lr_scale"] for g in optimizer.param_groups] == [1.0, 1.0]


def test_deepest_only_modules_are_the_ones_past_the_last_split():
    from scan_cli.model import build_bare_model

    model, size = build_bare_model("resnet10_cifar", 16)
    found = phases.deepest_only_modules(model, size)
    names = {n for n, m in model.backbone.named_modules() if any(m is f for f in found)}
    assert names and all(n.startswith(("model.layer4", "model.fc")) for n in names), names
    assert any(n.startswith("model.layer4") for n in names) and "model.fc" in names
    assert model.training is False  # the probe leaves the mode as it was


def test_heads_phase_under_ddp_two_processes(folder, tmp_path):
    """torchrun with 2 CPU processes: DDP is rebuilt for the heads phase (it reduces only the
    parameters that required gradients when it was built)."""
    import os
    import subprocess
    import sys

    from test_training import _free_port

    recipe = tmp_path / "phased.toml"
    recipe.write_text("heads_epochs = 1\n")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "scan_cli", "fit", "resnet10_cifar", "--recipe", str(recipe), "--data", str(folder), "--epochs", "1",
           "--img-size", "16", "--batch-size", "4", "--workers", "0", "--out", str(out), "--json"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert doc["world_size"] == 2 and [h["phase"] for h in doc["history"]] == ["joint", "heads"]
