"""Commands import only what they use: a calibrated run's thresholds are searched without torch,
timm or scikit-learn, and errors that need no model are reported before any of them is imported.
(Speed itself is measured in bench/, never asserted here: these tests check what gets imported.)"""

import json
import os
import subprocess
import sys

HEAVY = ("torch", "timm", "sklearn", "datasets", "fvcore", "matplotlib")


def _imported(args, env_extra=None):
    """Run `python -X importtime -m scan_cli ARGS`; (exit code, stderr, set of top-level modules imported)."""
    env = dict(os.environ, **(env_extra or {}))
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "scan_cli", *args], capture_output=True,
                         text=True, env=env, timeout=300)
    modules = set()
    lines = []
    for line in res.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            modules.add(name.split(".")[0])
        else:
            lines.append(line)
    return res.returncode, "\n".join(lines), modules


def test_calibrating_a_cached_run_imports_no_torch_timm_or_sklearn(trained_run, run_cli, tmp_path):
    from conftest import copy_of

    run = copy_of(trained_run, tmp_path)
    code, _, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.01")
    assert code == 0, err  # fills the caches (exit outputs, MACs); --dry-run would write nothing
    code, err, modules = _imported(["calibrate", "--run", str(run), "--max-drop", "0.01", "--json"])
    assert code == 0, err
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_an_unknown_backbone_is_reported_without_importing_timm():
    import timm

    from scan_cli.backbones.timm_families import known_timm_models, remember_timm_models

    remember_timm_models(timm)  # what the first real use of timm records
    assert "resnet50" in known_timm_models()
    code, err, modules = _imported(["fit", "resnet5O", "--data", "digits"])
    assert code == 1 and "unknown backbone 'resnet5O'" in err and "resnet50" in err
    assert not modules & {"torch", "timm", "sklearn"}, sorted(modules & {"torch", "timm", "sklearn"})


def test_errors_that_need_no_model_import_nothing_heavy(tmp_path):
    for args, code_wanted in ((["calibrate", "--run", str(tmp_path / "missing"), "--max-drop", "0.01"], 1),
                              (["calibrate", "--target-acc", "1.5"], 2),
                              (["fit", "resnet18", "--lr", "-1"], 2),
                              (["predict", str(tmp_path), "--target-acc", "1.5"], 2),
                              (["profile", "--run", str(tmp_path / "missing")], 1)):
        code, err, modules = _imported(args)
        assert code == code_wanted, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), (args, err)
        assert not modules & {"torch", "timm", "sklearn"}, (args, sorted(modules & {"torch", "timm", "sklearn"}))


def test_predicting_one_image_imports_only_what_it_needs(trained_run, run_cli, tmp_path):
    """Issue 21: `scan predict one.png --run RUN` on a CIFAR run builds the model and preprocesses the
    image without timm, torchvision (tests/test_cifar_resnet.py, tests/test_preprocess.py) or
    torch._dynamo, without fvcore (the MACs come from the run's cache), and stores the build's
    dry-run shapes for the next call (tests/test_run_handle.py)."""
    from conftest import copy_of, make_color_folder

    run = copy_of(trained_run, tmp_path)
    image = sorted(make_color_folder(tmp_path / "imgs", per_class=1).rglob("*.png"))[0]
    code, _, err = run_cli("predict", str(image), "--run", str(run), "--json")
    assert code == 0, err
    assert (run / "cache" / "shapes-16.json").is_file()
    modules = _modules_after(["predict", str(image), "--run", str(run), "--json"], tmp_path / "modules.json")
    assert "torch" in modules and "scan_cli.backbones.cifar" in modules and "scan_cli.model" in modules
    unneeded = {m for m in modules if m.split(".")[0] in ("timm", "torchvision", "fvcore", "sklearn", "datasets",
                                                          "matplotlib", "huggingface_hub")
                or m.startswith("torch._dynamo") or m == "torch._inductor"}
    assert not unneeded, sorted(unneeded)


def _modules_after(args, out):
    """Every module in sys.modules after `scan ARGS` ran in a fresh process (also those imported while
    stderr was redirected, which -X importtime cannot see)."""
    code = ("import json, sys\nfrom scan_cli.cli import main\ntry:\n    main(sys.argv[2:])\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code, str(out), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return set(json.loads(out.read_text()))
