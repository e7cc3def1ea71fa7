"""`scan export` and the ONNX Runtime engine: equivalence with PyTorch on every supported family.

Each family's tiny model (random weights; every exit's classifier centred on the test images so that
labels vary and exits disagree) is saved as an artifact with thresholds that send images out at
every exit, exported through `export_run`, and then:
every graph passes the ONNX checker; every exported exit's logits are within 1e-4 of PyTorch's at
batch sizes other than the export's; `scan predict`'s torch engine and the ONNX Runtime engine give
identical labels and exits on generated image files; the manifest's thresholds are the artifact's.
Families also carry one feature each (an exit without a head, the ensemble fallback, margin and
neg_entropy scores, the full graph), so every export costs one family's time only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import without_run_line

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

sys.path.insert(0, str(Path(__file__).parent))
from test_prediction import decoded_batch, make_bad_files, make_images  # noqa: E402

CLASSES = ["cat", "dog", "owl", "fox"]
DATA_CONFIG = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
               "crop_pct": 0.9, "crop_mode": "center"}
TOL = 1e-4

# id, image size, variant. heads: the preset (default "slim", what `scan fit` builds: attention inside
# the head at the last stage's resolution); skip: shallow exits (0-based) that never fire (exported without a head);
# splits: how many of the default split points to use (fewer pieces = a faster export; every kind of
# piece is still there: stem + section + exit, section + exit, section + the backbone's head).
FAMILIES = {
    "test_resnet": (48, dict(fmt="onnx-full")),  # all 4 exits; also the engine's own tests below
    "test_efficientnet": (32, dict(splits=2, score="margin")),
    "mobilenetv3_small_050": (32, dict(splits=2, skip=(0,))),
    "test_convnext": (32, dict(splits=2, score="neg_entropy", heads="paper")),  # full-width attention on the split
    "regnetx_002": (32, dict(splits=2, skip=(1,))),
    "test_vit": (32, dict(splits=2, skip=(1,), fallback="ensemble")),  # the ensemble keeps every head
    "tv_resnet18": (32, dict(splits=2, skip=(1,))),  # the scan-torchvision plugin
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs on a shared machine (see test_prediction.py)
    yield
    torch.set_num_threads(before)


def pick_thresholds(logits, score="max_softmax", skip=()):
    """One threshold per shallow exit that fires for some of the images still running (at most three
    quarters), midway across the widest gap in their scores (so float noise cannot flip a decision);
    None for the exits in ``skip``."""
    from scan_cli.scoring import confidence

    n, K, _ = logits.shape
    remaining = np.ones(n, dtype=bool)
    out = []
    for k in range(K - 1):
        if k in skip:
            out.append(None)
            continue
        scores = confidence(logits[:, k], score).numpy()
        s = np.sort(scores[remaining])
        gap, j = max((s[j + 1] - s[j], j) for j in range(len(s) // 4, len(s) - 1))
        assert gap > 1e-4
        t = float((s[j] + s[j + 1]) / 2)
        out.append(t)
        remaining &= ~(scores >= t)
    return out


def spread_classifiers(model, x, seed=0, spread=2.0):
    """Random classifiers (every exit's last linear layer), centred and scaled on the images ``x``, so
    that each exit's logits vary across images (std ``spread``) and exits disagree. A randomly
    initialised network maps different images to nearly the same direction, so without this every
    image would get the same label and an equivalence check could pass by luck."""
    g = torch.Generator().manual_seed(seed)
    linears = [h.fc for h in model.heads] + [model.backbone.classifier()]
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.__setitem__(id(mod), inp[0].detach().flatten(1)))
             for m in linears]
    with torch.no_grad():
        model(x)
        for h in hooks:
            h.remove()
        for m in linears:
            f = seen[id(m)].double()
            w = torch.randn(m.weight.shape, generator=g, dtype=torch.float64)
            scale = spread / ((f - f.mean(0)) @ w.T).std(0).clamp_min(1e-12)
            m.weight.copy_(w * scale[:, None])
            m.bias.copy_(-(f.mean(0) @ w.T) * scale)


class Case:
    """One family: its run, export, images and PyTorch reference."""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return folder, make_images(folder, n=24, seed=3)


_CASES: dict = {}


def build_case(backbone, tmp_path_factory, images) -> Case:
    """Save the family's tiny model as a run with thresholds, export it (once per session)."""
    if backbone in _CASES:
        return _CASES[backbone]
    from scan_cli import artifact
    from scan_cli.inference.export import export_run
    from scan_cli.model import HeadConfig, build_scan_model
    from scan_cli.backbones.registry import default_registry

    size, variant = FAMILIES[backbone]
    score, fallback = variant.get("score", "max_softmax"), variant.get("fallback", "last")
    torch.manual_seed(0)
    registry = default_registry()
    spec = registry.get(backbone)
    splits = [s.module for s in spec.split_points][: variant.get("splits", 3)]
    model = build_scan_model(spec, num_classes=len(CLASSES), head=HeadConfig.preset(variant.get("heads", "slim")),
                             input_size=size, split_modules=splits).eval()
    config = dict(DATA_CONFIG, input_size=[3, size, size])
    info = artifact.info_for(model, spec, registry, classes=CLASSES, data_config=config, input_size=size)
    folder, paths = images
    x = decoded_batch(paths, info)
    spread_classifiers(model, x, seed=1)
    with torch.no_grad():
        logits = torch.stack([o.float() for o in model(x)], dim=1)
    thresholds = pick_thresholds(logits, score, variant.get("skip", ()))
    info.calibration = {"thresholds": thresholds + [None], "score": score, "fallback": fallback}
    run_dir = tmp_path_factory.mktemp(backbone)
    artifact.save(model, info, run_dir / "model.safetensors")
    out = run_dir / "onnx"
    manifest, _ = export_run(str(run_dir), str(out), fmt=variant.get("fmt", "onnx"))
    c = Case()
    c.backbone, c.model, c.info, c.run, c.out, c.manifest = backbone, model, info, run_dir, out, manifest
    c.x, c.logits, c.paths, c.thresholds, c.score, c.fallback = x, logits, paths, thresholds, score, fallback
    c.variant, c.folder = variant, folder
    _CASES[backbone] = c
    return c


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request, tmp_path_factory, images):
    return build_case(request.param, tmp_path_factory, images)


@pytest.fixture(scope="module")
def resnet_case(tmp_path_factory, images):
    """test_resnet, every head exported (all its exits fire), with the full graph."""
    return build_case("test_resnet", tmp_path_factory, images)


def cascade(out):
    from scan_cli.inference.onnx_engine import Cascade

    return Cascade(out, threads=1)


def test_graphs_pass_the_checker_and_heads_are_left_out_only_where_an_exit_never_fires(case):
    import onnx

    K = case.manifest["num_exits"]
    keep_all = case.fallback == "ensemble"
    for k, piece in enumerate(case.manifest["pieces"]):
        path = case.out / piece["file"]
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path)).graph
        outputs = [o.name for o in graph.output]
        assert outputs == piece["outputs"]
        has_head = k == K - 1 or keep_all or case.thresholds[k] is not None
        assert (piece["logits"] is not None) == has_head
        assert (piece["features"] is None) == (k == K - 1)
        # the batch axis is symbolic on every input and output
        for v in list(graph.input) + list(graph.output):
            assert v.type.tensor_type.shape.dim[0].dim_param, (piece["file"], v.name)
    if case.variant.get("skip") and not keep_all:
        assert not all(p["logits"] for p in case.manifest["pieces"])  # the check can fail


def test_every_exported_exit_matches_pytorch(case):
    engine = cascade(case.out)
    for x in (case.x, case.x[:1]):  # batch 24 and 1; the export was traced at batch 2
        got = engine.exits(x.numpy())
        for k, logits in enumerate(got):
            if logits is None:
                continue
            diff = float(np.abs(logits - case.logits[: len(x), k].numpy()).max())
            assert diff < TOL, (case.backbone, k, diff)


def test_labels_and_exits_equal_the_torch_engine(case):
    from scan_cli.data import eval_transform
    from scan_cli.inference.onnx_engine import predict_paths as ort_predict
    from scan_cli.inference.torch_engine import predict_paths
    from scan_cli.policy import ExitPolicy

    policy = ExitPolicy(list(case.thresholds), case.score, case.fallback, source="test")
    transform = eval_transform(case.info.data_config, case.info.input_size)
    K = case.manifest["num_exits"]
    costs = [1.0] * K
    ref = predict_paths(case.model, case.paths, transform, policy, classes=CLASSES, costs=costs, backbone_macs=1.0,
                        batch_size=10, progress=False, channels_last=False)
    got = ort_predict(cascade(case.out), case.paths, policy, batch_size=10, progress=False)
    ref_exits = [p.exit_index for p in ref.predictions]
    can_fire = {k for k in range(K) if k == K - 1 or case.thresholds[k] is not None}
    assert set(ref_exits) == can_fire and len({p.label for p in ref.predictions}) >= 3  # the check can fail
    assert [p.exit_index for p in got.predictions] == ref_exits
    assert [p.label for p in got.predictions] == [p.label for p in ref.predictions]
    assert np.allclose([p.confidence for p in got.predictions], [p.confidence for p in ref.predictions], atol=1e-4)
    assert np.allclose([p.score for p in got.predictions], [p.score for p in ref.predictions], atol=1e-4)


def test_manifest_is_plain_json_with_the_artifacts_thresholds(case):
    from scan_cli.artifact import read_info

    doc = json.loads((case.out / "manifest.json").read_text())  # nothing but the json module
    stored = read_info(case.run / "model.safetensors")
    assert doc["thresholds"] == stored.calibration["thresholds"] == case.thresholds + [None]
    assert (doc["score"], doc["fallback"]) == (case.score, case.fallback)
    assert doc["classes"] == CLASSES and doc["num_exits"] == len(doc["pieces"]) == case.model.num_exits
    assert doc["format"] == "scan-onnx-cascade" and doc["format_version"] == 1 and doc["producer"]["opset"] >= 18
    pre = doc["input"]["preprocessing"]
    size = case.info.input_size
    assert pre["center_crop"] == [size, size] and pre["resize_shorter_side"] == int(size / 0.9)
    assert pre["mean"] == DATA_CONFIG["mean"] and pre["std"] == DATA_CONFIG["std"]
    assert pre["interpolation"] == "bilinear" and doc["input"]["shape"] == [None, 3, size, size]
    # answering at exit k costs the backbone up to its split plus the heads exported on the way
    from scan_cli.profiling import profile_macs

    report = profile_macs(case.model, size)
    heads = [p["logits"] is not None for p in doc["pieces"]]
    expected = [e.backbone_macs_to_split + sum(report.exits[j].exit_macs for j in range(k + 1) if heads[j])
                for k, e in enumerate(report.exits)]
    assert doc["macs"]["exits_cumulative"] == [p["macs_cumulative"] for p in doc["pieces"]] == expected
    assert doc["macs"]["backbone"] == report.backbone_macs
    if not all(heads):
        assert expected[-1] < report.cumulative[-1]  # the check can fail


# -- test_resnet only: the loop itself, the full graph, the CLI -----------------------------------------
def test_the_full_graph_gives_every_exits_logits(resnet_case):
    import onnxruntime as ort

    c = resnet_case
    full = c.manifest["full"]
    session = ort.InferenceSession(str(c.out / full["file"]), providers=["CPUExecutionProvider"])
    got = session.run(full["outputs"], {full["input"]: c.x.numpy()})
    assert len(got) == 4
    for k in range(4):
        assert float(np.abs(got[k] - c.logits[:, k].numpy()).max()) < TOL


@pytest.mark.parametrize("score", ["max_softmax", "margin", "neg_entropy"])
@pytest.mark.parametrize("fallback", ["last", "ensemble"])
def test_early_exit_equals_the_torch_cascade(resnet_case, score, fallback):
    c = resnet_case
    thresholds = pick_thresholds(c.logits, score)
    ref = c.model.early_exit(c.x, thresholds, score, fallback)
    got = cascade(c.out).early_exit(c.x.numpy(), thresholds, score, fallback)
    assert len(set(ref.exit_index.tolist())) == 4
    assert got.exit_index.tolist() == ref.exit_index.tolist()
    assert float(np.abs(got.logits - ref.logits.numpy()).max()) < TOL
    assert float(np.abs(got.confidence - ref.confidence.numpy()).max()) < TOL


def test_answered_images_leave_the_batch(resnet_case):
    """Each piece runs only on the images no earlier exit answered; once none are left, nothing runs."""
    c = resnet_case
    engine = cascade(c.out)
    fed = []

    class Recorder:
        def __init__(self, k, session):
            self.k, self.session = k, session

        def run(self, names, feed):
            fed.append((self.k, next(iter(feed.values())).shape[0]))
            return self.session.run(names, feed)

    engine.sessions = [Recorder(k, s) for k, s in enumerate(engine.sessions)]
    n = len(c.x)
    answered = np.bincount(engine.early_exit(c.x.numpy(), c.thresholds).exit_index, minlength=4)
    assert answered[0] > 0 and answered[1] > 0
    assert fed == [(0, n), (1, n - answered[0]), (2, n - answered[:2].sum()), (3, n - answered[:3].sum())]
    fed.clear()
    engine.early_exit(c.x.numpy(), [0.0, None, None])  # everything leaves at exit 1
    assert fed == [(0, n)]


def test_export_follows_the_exit_heads_as_they_run(resnet_case, tmp_path):
    """The export goes through model.exit_logits, so a head rewritten for speed (here the patchify
    conv as reshape + matmul, with the batch size read from the tensor) exports as it now runs."""
    import onnx
    import onnxruntime as ort

    from scan_cli.inference.export import export_graph, piece_module

    c = resnet_case
    conv = c.model.heads[0].body[3]  # the strided conv whose kernel is its stride
    s = conv.stride[0]

    def patchify(x):
        b, ch, h, w = x.shape
        x = x[..., : h // s * s, : w // s * s].reshape(b, ch, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5)
        y = x.reshape(b, (h // s) * (w // s), ch * s * s) @ conv.weight.reshape(conv.out_channels, -1).T
        return y.reshape(b, h // s, w // s, conv.out_channels).permute(0, 3, 1, 2)

    module = piece_module(c.model, 0, head=True)
    with torch.no_grad():
        before = module(c.x[:5])[1]
        conv.forward = patchify
        try:
            after = module(c.x[:5])[1]
            export_graph(module, c.x[:2], tmp_path / "piece1.onnx", "image", ["features_1", "logits_1"])
        finally:
            del conv.forward  # back to the class's forward
    assert float((after - before).abs().max()) < 1e-4  # the rewrite computes the same head
    ops = {}
    for name, path in (("before", c.out / "piece1.onnx"), ("after", tmp_path / "piece1.onnx")):
        kinds = [n.op_type for n in onnx.load(str(path)).graph.node]
        ops[name] = (kinds.count("Conv"), kinds.count("MatMul"))
    assert ops["after"][0] == ops["before"][0] - 1 and ops["after"][1] > ops["before"][1]  # the rewritten head
    session = ort.InferenceSession(str(tmp_path / "piece1.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits_1"], {"image": c.x[:5].numpy()})[0]  # another batch size than exported
    assert float(np.abs(got - before.numpy()).max()) < TOL


@pytest.mark.parametrize("kind", ["max_softmax", "margin", "neg_entropy"])
def test_numpy_scores_equal_scoring_confidence(kind):
    from scan_cli.scoring import confidence as np_confidence
    from scan_cli.scoring import confidence

    g = torch.Generator().manual_seed(0)
    for classes in (1, 2, 10):
        logits = torch.randn(64, classes, generator=g) * 4
        ref = confidence(logits, kind).numpy()
        got = np_confidence(logits.numpy(), kind)
        assert got.dtype == np.float32 and got.shape == (64,)
        assert np.abs(got - ref).max() < 1e-6


HEADLESS = [b for b, (_, v) in FAMILIES.items() if v.get("skip") and v.get("fallback", "last") == "last"]


@pytest.mark.parametrize("backbone", HEADLESS)
def test_an_exit_exported_without_its_head_cannot_fire(backbone, tmp_path_factory, images):
    from scan_cli.errors import ScanError

    case = build_case(backbone, tmp_path_factory, images)
    headless = [k for k, p in enumerate(case.manifest["pieces"]) if p["logits"] is None]
    assert headless == list(FAMILIES[backbone][1]["skip"])
    engine = cascade(case.out)
    K = case.model.num_exits
    thresholds = [0.5 if k == headless[0] else None for k in range(K - 1)]
    with pytest.raises(ScanError, match="--all-exits"):
        engine.early_exit(case.x.numpy(), thresholds)
    with pytest.raises(ScanError, match="--all-exits"):
        engine.early_exit(case.x.numpy(), [None] * (K - 1), fallback="ensemble")


# -- the command line, end to end ---------------------------------------------------------------------
def readme_loop() -> str:
    """The Python block of the README's "Deploying" section."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- deploy-loop -->", 1)[1].split("<!-- /deploy-loop -->", 1)[0]
    return block.split("```python", 1)[1].split("```", 1)[0]


def run_readme_loop(tmp_path, folder, paths) -> list:
    """The README loop in a fresh interpreter where scan_cli (and torch) cannot be imported."""
    import subprocess

    script = tmp_path / "cascade.py"
    script.write_text(readme_loop())
    guard = ("import runpy, sys; sys.modules.update(dict.fromkeys(('scan_cli', 'torch', 'torchvision', 'timm'))); "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    res = subprocess.run([sys.executable, "-I", "-c", guard, str(script), str(folder), *map(str, paths)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [line.rsplit(" ", 2) for line in res.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in paths]
    return [(label, int(exit_)) for _, label, exit_ in rows]


def test_readme_loop_runs_without_scan_or_torch(run_cli, resnet_case, tmp_path):
    """The README's loop, in an interpreter where importing scan_cli or torch fails, answers every
    image as scan predict does on the same export folder."""
    code, out, err = run_cli("predict", *map(str, resnet_case.paths), "--run", str(resnet_case.out), "--json",
                             "--workers", "0", "--drift", "off")
    assert code == 0, err
    answers = [(p["label"], p["exit"]) for p in json.loads(out)["predictions"]]
    assert len({e for _, e in answers}) > 1  # early exit really happened
    assert run_readme_loop(tmp_path, resnet_case.out, resnet_case.paths) == answers


@pytest.mark.slow
def test_end_to_end_on_a_trained_run(run_cli, trained_run, tmp_path):
    """A really trained run: calibrate, export, predict with both engines (and through the run's own
    cached export), run the README loop without scan: the same labels and exits everywhere."""
    import shutil

    from conftest import make_color_folder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, _, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.2")
    assert code == 0, err
    code, out, err = run_cli("export", "--run", str(run), "--out", str(tmp_path / "deploy"), "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert json.loads((tmp_path / "deploy" / "manifest.json").read_text()) == manifest
    assert "piece1.onnx" in err or "piece 1/4" in err  # progress on stderr, the manifest on stdout
    images = make_color_folder(tmp_path / "images", per_class=6, size=20, mislabel=2, seed=7)
    make_bad_files(tmp_path / "bad")
    args = ["predict", str(images), str(tmp_path / "bad"), "--json", "--workers", "0", "--batch-size", "5"]
    results = {}
    for name, extra in (("torch", ["--run", str(run)]), ("export", ["--run", str(tmp_path / "deploy")]),
                        ("run", ["--run", str(run), "--engine", "onnxruntime"])):
        code, out, err = run_cli(*args, *extra)
        assert code == 3, err  # the same exit code: three unreadable files, the rest predicted
        results[name] = json.loads(out)
    ref = results["torch"]
    answers = [(p["label"], p["exit"]) for p in ref["predictions"]]
    assert len(answers) == 18 and len({a for a, _ in answers}) >= 2
    for name in ("export", "run"):
        doc = results[name]
        assert [(p["label"], p["exit"]) for p in doc["predictions"]] == answers, name
        assert [set(p) for p in doc["predictions"]] == [set(p) for p in ref["predictions"]]
        assert doc["errors"] == ref["errors"] and doc["summary"]["policy"] == ref["summary"]["policy"]
        assert doc["summary"]["engine"] == "onnxruntime" and set(ref["summary"]) <= set(doc["summary"])
    assert ref["summary"]["engine"] == "torch"
    # both exports hold exactly the heads of the exits that can fire, so they cost what torch counts
    for name in ("export", "run"):
        assert [p["macs"] for p in results[name]["predictions"]] == [p["macs"] for p in ref["predictions"]]
    from scan_cli.policy import heads_needed as heads_for

    policy = ref["summary"]["policy"]
    cached = list((run / "cache").glob("onnx-*/manifest.json"))
    assert len(cached) == 1
    assert [p["logits"] is not None for p in json.loads(cached[0].read_text())["pieces"][:-1]] == \
        heads_for(policy["thresholds"], policy["fallback"], 4) == \
        [p["logits"] is not None for p in manifest["pieces"][:-1]]
    # other thresholds: the run exports the heads they need once more; the export folder refuses
    code, out, _ = run_cli(*args, "--run", str(run), "--engine", "onnxruntime", "--thresholds", "0.99,0.99,0.99")
    assert code == 3 and json.loads(out)["summary"]["policy"]["thresholds"] == [0.99, 0.99, 0.99]
    assert len(list((run / "cache").glob("onnx-*-111/manifest.json"))) == 1
    # the README's loop, with neither scan nor torch importable, answers the same
    good = [Path(p["path"]) for p in ref["predictions"]]
    assert run_readme_loop(tmp_path, tmp_path / "deploy", good) == answers
    if not all(p["logits"] for p in manifest["pieces"]):
        code, _, err = run_cli(*args, "--run", str(tmp_path / "deploy"), "--thresholds", "0.5,0.5,0.5")
        assert code == 1 and "--all-exits" in err and err.count("\n") == 1


def test_cli_engine_errors(run_cli, resnet_case):
    folder, out = resnet_case.folder, resnet_case.out
    code, _, err = run_cli("predict", str(folder), "--run", str(out), "--engine", "torch")
    assert code == 2 and "--engine onnxruntime" in err and err.count("\n") == 1
    code, _, err = run_cli("predict", str(folder), "--run", str(out), "--engine", "tensorrt")
    assert code == 2 and err.count("\n") == 1
    code, _, err = run_cli("predict", str(folder), "--run", str(out), "--target-acc", "0.9")
    assert code == 2 and "training run" in err and err.count("\n") == 1


def test_onnx_engine_refuses_a_bad_pixel_limit_up_front(run_cli, resnet_case, monkeypatch):
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", "abc")  # as the torch engine: a usage error, not a row per image
    code, out, err = run_cli("predict", str(resnet_case.folder), "--run", str(resnet_case.out), "--json")
    assert code == 2 and "SCAN_MAX_IMAGE_PIXELS" in err and err.count("\n") == 1 and out == ""


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_a_threshold_of_minus_inf_always_fires_and_json_says_so(run_cli, resnet_case, engine):
    run = resnet_case.run if engine == "torch" else resnet_case.out
    code, out, err = run_cli("predict", str(resnet_case.folder), "--run", str(run), "--thresholds=-inf,none,none",
                             "--json", "--workers", "0", "--drift", "off")
    assert code == 0, err
    doc = json.loads(out)
    assert {p["exit"] for p in doc["predictions"]} == {1}  # exit 1 answered every image
    assert doc["summary"]["policy"]["thresholds"] == ["-inf", None, None]  # null would say "never fires"
    assert "thresholds always, never, never" in err


def test_exported_heads_that_cannot_fire_are_counted_and_named(run_cli, resnet_case):
    """ONNX Runtime runs a whole graph, so an export folder's heads run even where they cannot fire."""
    code, out, err = run_cli("predict", str(resnet_case.folder), "--run", str(resnet_case.out), "--thresholds",
                             "none,none,none", "--json", "--workers", "0", "--drift", "off")
    assert code == 0, err
    doc = json.loads(out)
    ran = resnet_case.manifest["macs"]["exits_cumulative"][-1]  # the last exit with every exported head
    assert {p["exit"] for p in doc["predictions"]} == {4} and {p["macs"] for p in doc["predictions"]} == {ran}
    assert "exits 1, 2, 3 never fire" in err and "heads still run" in err and "training run" in err


def test_an_opset_the_installed_onnx_does_not_know_is_refused(run_cli, resnet_case, tmp_path):
    # it was written as opset 18 graphs under a manifest saying 99
    code, out, err = run_cli("export", "--run", str(resnet_case.run), "--opset", "99", "--out", str(tmp_path / "o"))
    err = without_run_line(err)
    assert code == 2 and "--opset 99" in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_cli_export_bad_out_is_one_line_and_writes_nothing(run_cli, resnet_case, tmp_path):
    run_dir = resnet_case.run
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for target in (a_file, busy, run_dir):
        code, out, err = run_cli("export", "--run", str(run_dir), "--out", str(target))
        err = without_run_line(err)
        assert code == 1 and out == "" and err.startswith("error: --out") and err.count("\n") == 1, err
    assert a_file.read_text() == "x" and [p.name for p in busy.iterdir()] == ["notes.txt"]
    code, _, err = run_cli("export", "--run", str(run_dir), "--format", "tflite", "--out", str(tmp_path / "new"))
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "new").exists()


def test_exporting_an_uncalibrated_run_says_what_it_gives(run_cli, resnet_case, tmp_path):
    """Without thresholds every shallow head is left out (the plain backbone): said on stderr, and
    the export really has no shallow head; --all-exits keeps them all and says nothing."""
    from scan_cli import artifact

    run = tmp_path / "run"
    run.mkdir()
    info = artifact.read_info(resnet_case.run / "model.safetensors")
    info.calibration = None
    artifact.save(resnet_case.model, info, run / "model.safetensors")
    code, out, err = run_cli("export", "--run", str(run), "--out", str(tmp_path / "x"), "--json")
    assert code == 0 and "not calibrated" in err and "--all-exits" in err
    assert [p["logits"] is not None for p in json.loads(out)["pieces"]] == [False, False, False, True]
    code, out, err = run_cli("export", "--run", str(run), "--out", str(tmp_path / "x"), "--json", "--all-exits")
    assert code == 0 and "not calibrated" not in err
    assert all(p["logits"] is not None for p in json.loads(out)["pieces"])


def test_failed_export_leaves_nothing(resnet_case, tmp_path, monkeypatch):
    from scan_cli.inference import export
    from scan_cli.errors import ScanError

    def half_written(module, example, path, *args, **kwargs):
        path.write_bytes(b"half an onnx file")
        raise ScanError("simulated failure while writing a piece")

    monkeypatch.setattr(export, "export_graph", half_written)
    (tmp_path / "out").mkdir()  # an empty folder is a valid --out: it must survive a failure as it was
    with pytest.raises(ScanError, match="simulated"):
        export.export_run(str(resnet_case.run), str(tmp_path / "out"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime", "onnxscript"])
def test_missing_extras_are_one_line(run_cli, resnet_case, monkeypatch, missing, tmp_path):
    run_dir, out, folder = resnet_case.run, resnet_case.out, resnet_case.folder
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    code, stdout, err = run_cli("export", "--run", str(run_dir), "--out", str(tmp_path / "x"))
    err = without_run_line(err)
    assert code == 1 and stdout == "" and err.count("\n") == 1
    assert missing in err and "pip install 'scan-cli[onnx]'" in err
    if missing == "onnxruntime":
        for run in (out, run_dir):
            code, stdout, err = run_cli("predict", str(folder), "--run", str(run), "--engine", "onnxruntime")
            err = without_run_line(err)
            assert code == 1 and err.count("\n") == 1 and "pip install 'scan-cli[onnx]'" in err


def test_a_wrong_run_is_reported_before_torch_or_onnx_is_imported(tmp_path):
    import subprocess

    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")  # an image to predict: the error must be the --run
    for args in (["export", "--run", str(tmp_path / "missing")],
                 ["predict", str(tmp_path), "--engine", "onnxruntime", "--run", str(tmp_path / "missing")]):
        res = subprocess.run([sys.executable, "-X", "importtime", "-m", "scan_cli", *args], capture_output=True,
                             text=True, timeout=120)
        lines = res.stderr.splitlines()
        err = [line for line in lines if not line.startswith("import time:")]
        modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
        assert res.returncode == 1 and len(err) == 1 and err[0].startswith("error:"), (args, err)
        assert "missing" in err[0] and "no images" not in err[0], (args, err)
        assert not modules & {"torch", "onnx", "onnxruntime", "onnxscript", "timm"}, (args, modules)


def test_cli_does_not_import_onnx_at_startup():
    import subprocess

    code = ("import sys; from scan_cli.cli import app; "
            "print(any(m in sys.modules for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


# a process where torch, timm and torchvision cannot be imported, nor ml_dtypes (what makes `import
# onnx` take a second; the manifest check reads onnx's protobuf classes without it): each attempt
# fails and is written down
NO_TORCH = """
import atexit, sys
tried = []
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision", "ml_dtypes"):
            tried.append(name)
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
atexit.register(lambda: tried and sys.stderr.write(f"TRIED {sorted(set(tried))}\\n"))
from scan_cli.cli import main
main(sys.argv[1:])
"""


def test_an_export_folder_predicts_without_torch_timm_or_torchvision(run_cli, resnet_case, tmp_path):
    """`scan predict --run EXPORT_DIR` in a process that cannot import torch: the same output and exit
    code as in-process, and the same labels and exits as --engine onnxruntime on the training run."""
    import subprocess

    bad = tmp_path / "bad"
    make_bad_files(bad)
    args = ["predict", str(resnet_case.folder), str(bad), "--json", "--batch-size", "5"]
    res = subprocess.run([sys.executable, "-c", NO_TORCH, *args, "--run", str(resnet_case.out)],
                         capture_output=True, text=True, timeout=300)
    assert "TRIED" not in res.stderr, res.stderr  # not even an import attempt that was caught
    assert res.returncode == 3, res.stderr  # three unreadable files, the rest predicted
    doc = json.loads(res.stdout)
    code, out, err = run_cli(*args, "--run", str(resnet_case.out))
    assert code == 3, err
    here = json.loads(out)
    assert doc["predictions"] == here["predictions"] and doc["errors"] == here["errors"]
    assert doc["drift"] == here["drift"] and set(doc["summary"]) == set(here["summary"])
    code, out, err = run_cli(*args, "--run", str(resnet_case.run), "--engine", "onnxruntime")
    assert code == 3, err
    run_doc = json.loads(out)
    answers = [(p["path"], p["label"], p["exit"]) for p in run_doc["predictions"]]
    assert len({a[2] for a in answers}) >= 2 and len({a[1] for a in answers}) >= 2  # the check can fail
    assert [(p["path"], p["label"], p["exit"]) for p in doc["predictions"]] == answers
