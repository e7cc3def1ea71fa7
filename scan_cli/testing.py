"""Test a backbone plugin in its own CI, from pytest:

    from scan_cli.testing import check_provider

    def test_contract():
        check_provider("mynets", input_size=64)  # the entry-point name, as installed

``check_provider`` runs everything scan relies on: the entry point loads (without importing torch),
the provider targets a supported contract version, every spec is valid and no id is taken by
another provider, ``resolve`` answers as documented, and every backbone passes the contract test of
``scan backbones check`` (real forwards, declared shapes, staged forward equals the plain one, exits,
early exit, classifier reset). It raises ``AssertionError`` listing every failed check, or returns
the checks when all pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
import subprocess
import sys
from typing import Iterable, Optional, Union

from .backbones.verify import _one_line, build_backbone, declaration_problems, measure
from .backbones.contract import ENTRY_POINT_GROUP, Provider

__all__ = ["check_provider", "Check"]

HEAVY_MODULES = ("torch", "timm", "torchvision")
FOREIGN_ID = "scan-check-no-such-backbone"



@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}

class _ObjectEntryPoint:
    """A provider object standing in for an installed entry point."""

    group = ENTRY_POINT_GROUP
    dist = None

    def __init__(self, obj):
        self.obj = obj
        self.name = getattr(obj, "name", None) or "provider-under-test"
        self.value = f"<{type(obj).__name__} object>"

    def load(self):
        return self.obj


def check_provider(provider: Union[str, Provider], *, ids: Optional[Iterable[str]] = None,
                   resolve_ids: Iterable[str] = (), input_size: Optional[int] = None,
                   check_import: bool = True, raise_on_failure: bool = True) -> list[Check]:
    """Run the plugin contract test on one provider.

    ``provider``: the entry-point name of an installed provider (tests the installation as scan sees
    it, including that importing it does not import torch), or a ``Provider`` object (or the
    zero-argument callable an entry point may name). ``ids``: only these listed backbones (default
    all). ``resolve_ids``: ids your ``resolve`` should build on demand; each is checked too.
    ``input_size``: the side of the test forwards (default each spec's own; smaller is faster).
    SCAN_DISABLE_PLUGINS / SCAN_PLUGINS do not apply here.
    """
    from importlib import metadata

    from .backbones.registry import Registry

    installed = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    if isinstance(provider, str):
        matches = [ep for ep in installed if ep.name == provider]
        if not matches:
            names = ", ".join(sorted({ep.name for ep in installed})) or "none"
            return _finish([Check("entry point is installed", False,
                                  f"no entry point '{provider}' in group {ENTRY_POINT_GROUP} (installed: {names}): "
                                  f"pip install -e your package, and check [project.entry-points.\"{ENTRY_POINT_GROUP}\"]")],
                           raise_on_failure)
        target = matches[0]
    else:
        target = _ObjectEntryPoint(provider)
    others = [ep for ep in installed if ep.name != target.name]

    registry = Registry(others + [target], control=False, strict=False)
    registry.load_all()  # in scan's order, so that conflicts show as users will meet them
    status, loaded = registry.status_of(target.name), registry.provider(target.name)
    checks: list[Check] = []
    checks.append(Check("provider loads", status.ok, status.error or f"{len(status.backbones)} backbones listed"))
    if not status.ok:
        return _finish(checks, raise_on_failure)

    if isinstance(provider, str):
        checks.append(Check("provider name equals the entry-point name", loaded.name == target.name,
                            f"Provider(name='{loaded.name}'), entry point '{target.name}'"))
        if check_import:
            checks.append(_check_cheap_import(target.name))
    checks.append(Check("every listed spec is valid", not status.dropped,
                        "; ".join(f"{d['id']}: {d['error']}" for d in status.dropped) or "ok"))
    checks.append(Check("no id is taken by another provider", not status.conflicts,
                        f"given first by another provider: {', '.join(status.conflicts)}" if status.conflicts else "ok"))

    specs = []
    wanted = list(ids) if ids is not None else list(status.backbones)
    for backbone_id in wanted:
        if backbone_id in status.backbones:
            specs.append(registry.get(backbone_id))
        else:
            checks.append(Check(f"{backbone_id}: listed", False, f"not among {', '.join(status.backbones) or 'none'}"))
    resolve_ids = list(resolve_ids)
    if resolve_ids or loaded.resolve is not None:
        checks.extend(_check_resolve(registry, loaded, target.name, resolve_ids, specs))

    for spec in specs:
        for c in check_backbone(spec, input_size=input_size):
            checks.append(Check(f"{spec.id}: {c.name}", c.ok, c.detail))
    return _finish(checks, raise_on_failure)


def _check_resolve(registry, provider: Provider, name: str, resolve_ids: list[str], specs: list) -> list[Check]:
    import fnmatch

    checks = []
    if provider.resolve is None:
        return [Check("resolve", False, f"resolve_ids {resolve_ids} given, but the provider has no resolve")]
    try:
        answer = provider.resolve(FOREIGN_ID)
        checks.append(Check("resolve returns None for an id it does not handle", answer is None,
                            f"resolve('{FOREIGN_ID}') returned {answer!r}"[:200]))
    except Exception as exc:
        checks.append(Check("resolve returns None for an id it does not handle", False,
                            f"resolve('{FOREIGN_ID}') raised {type(exc).__name__}: {exc}"[:200]))
    for backbone_id in resolve_ids:
        if provider.patterns and not any(fnmatch.fnmatchcase(backbone_id, p) for p in provider.patterns):
            checks.append(Check(f"{backbone_id}: matches patterns", False,
                                f"no pattern of {list(provider.patterns)} matches it, so scan never asks resolve"))
            continue
        try:
            spec = registry.get(backbone_id)
        except Exception as exc:
            checks.append(Check(f"{backbone_id}: resolves", False, str(exc)))
            continue
        ok = spec.provider == name
        checks.append(Check(f"{backbone_id}: resolves", ok, f"given by provider '{spec.provider}'"))
        if ok:
            specs.append(spec)
    return checks


def _check_cheap_import(name: str) -> Check:
    """Import the entry point in a fresh interpreter: listing backbones must not import torch."""
    code = (
        "import json, sys\n"
        "from importlib.metadata import entry_points\n"
        f"[ep] = [e for e in entry_points(group={ENTRY_POINT_GROUP!r}) if e.name == {name!r}]\n"
        "obj = ep.load()\n"
        "from scan_cli.contract import Provider\n"
        "p = obj if isinstance(obj, Provider) else obj()\n"
        "list(p.backbones)\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return Check("importing the provider does not import torch", False, f"import failed: {tail}")
    heavy = json.loads(res.stdout.strip().splitlines()[-1])
    return Check("importing the provider does not import torch", not heavy,
                 f"imports {', '.join(heavy)} at import time: import them inside build()" if heavy else "ok")


def _finish(checks: list[Check], raise_on_failure: bool) -> list[Check]:
    failed = [c for c in checks if not c.ok]
    if failed and raise_on_failure:
        lines = "\n".join(f"  FAIL {c.name}: {c.detail}" for c in failed)
        raise AssertionError(f"{len(failed)} of {len(checks)} plugin contract checks failed:\n{lines}")
    return checks


# -- the backbone contract test (`scan backbones check ID`) -------------------------------------
def check_backbone(spec, input_size: Optional[int] = None, num_classes: int = 7, atol: float = 1e-4) -> list[Check]:
    """Build ``spec`` (random weights), run real forwards, compare with what it declares."""
    import torch

    from .model import HeadConfig, ScanModel

    checks: list[Check] = []
    size = input_size or spec.input_size
    torch.manual_seed(0)
    try:
        backbone = build_backbone(spec, num_classes=num_classes, pretrained=False).eval()
    except Exception as exc:
        return [Check("build", False, str(exc))]
    checks.append(Check("build", True, type(backbone).__name__))

    checks.append(_check_attributes(backbone, num_classes))
    if not checks[-1].ok:
        return checks

    try:
        shapes = measure(spec, backbone, size)
    except Exception as exc:
        checks.append(Check("dry-run forward", False, str(exc)))
        return checks
    declared = [s.module for s in spec.split_points]
    problems = declaration_problems(spec, backbone.unit_names, shapes, size)
    skipped = [sp.module for sp in spec.split_points
               if size != spec.input_size and size % sp.reduction and sp.module in shapes]
    detail = "; ".join(problems) or (f"{len(declared)} split points at {size}px"
                                     + (f" (reduction not compared for {', '.join(skipped)}: {size}px is not a "
                                        f"multiple of it; run at {spec.input_size}px)" if skipped else ""))
    checks.append(Check("declared shapes match a real forward", not problems, detail))
    if problems:
        return checks

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        staged = backbone(x)
        if staged.shape != (2, num_classes):
            checks.append(Check("staged forward gives logits", False, f"shape {tuple(staged.shape)}"))
            return checks
        reference = getattr(backbone, "model", None)
        if reference is not None:
            plain = reference(x)
            diff = float((staged - plain).abs().max())
            checks.append(Check("staged forward equals the plain forward", diff <= atol, f"max |diff| {diff:.2e}"))
        feature = backbone.forward_head(backbone.forward_post(_run_units(backbone, x)), pre_logits=True)
        diff = float((backbone.classify(feature) - staged).abs().max())
        checks.append(Check("classify(forward_head(pre_logits=True)) gives the logits", diff <= atol,
                            f"max |diff| {diff:.2e}"))

        model = ScanModel(backbone, declared, num_classes, HeadConfig(), shapes).eval()
        outs = model(x)
        ok = len(outs) == len(declared) + 1 and all(o.shape == (2, num_classes) for o in outs)
        checks.append(Check("every exit gives logits", ok, f"{len(outs)} exits"))
        diff = float((outs[-1] - staged).abs().max())
        checks.append(Check("last exit is the backbone's own head", diff <= atol, f"max |diff| {diff:.2e}"))
        never = model.early_exit(x, [None] * len(declared))
        diff = float((never.logits - staged).abs().max())
        checks.append(Check("early exit with no exit firing equals the backbone", diff <= atol, f"max |diff| {diff:.2e}"))
        always = model.early_exit(x, [0.0] * len(declared))
        ok = bool((always.exit_index == 0).all()) and float((always.logits - outs[0]).abs().max()) <= atol
        checks.append(Check("early exit at the first exit skips the rest", ok, "all images left at exit 1" if ok else "mismatch"))
    checks.append(_check_classifier(backbone, num_classes, size))
    return checks


def _run_units(backbone, x):
    h = backbone.forward_stem(x)
    for name in backbone.unit_names:
        h = backbone.forward_unit(name, h)
    return h


def _check_attributes(backbone, num_classes: int) -> Check:
    """unit_names, unit_depths, data_config and num_classes as the contract describes them."""
    problems = []
    units = getattr(backbone, "unit_names", None)
    if not (isinstance(units, (list, tuple)) and len(units) >= 2 and all(isinstance(u, str) and u for u in units)
            and len(set(units)) == len(units)):
        problems.append(f"unit_names must list at least two distinct names, got {units!r}")
    depths = getattr(backbone, "unit_depths", None)
    if depths is not None and (not isinstance(depths, (list, tuple)) or len(depths) != len(units or ())
                               or not all(isinstance(d, int) and d > 0 for d in depths)):
        problems.append(f"unit_depths must give a positive int per unit, got {depths!r}")
    cfg = getattr(backbone, "data_config", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) for v in size)):
        problems.append(f"data_config must be a dict with input_size [3, H, W], got {cfg!r}"[:200])
    else:
        for key in ("mean", "std"):
            if key in cfg and len(cfg[key]) not in (1, 3):
                problems.append(f"data_config['{key}'] must have 1 or 3 values")
    if getattr(backbone, "num_classes", None) != num_classes:
        problems.append(f"num_classes is {getattr(backbone, 'num_classes', None)!r} after build(num_classes={num_classes})")
    return Check("unit_names, unit_depths, data_config, num_classes", not problems,
                 "; ".join(problems) or f"{len(units)} units, input {size}")


def _check_classifier(backbone, num_classes: int, size: int) -> Check:
    """classifier() holds weights, and reset_classifier(n) gives n logits (fit uses both)."""
    import torch

    try:
        params = sum(p.numel() for p in backbone.classifier().parameters())
        n = num_classes + 2
        backbone.reset_classifier(n)
        with torch.no_grad():
            shape = tuple(backbone(torch.randn(1, 3, size, size)).shape)
        ok = params > 0 and shape == (1, n) and backbone.num_classes == n
        detail = f"classifier() has {params} weights; reset_classifier({n}) gives {shape[-1]} logits, num_classes {backbone.num_classes}"
    except Exception as exc:
        ok, detail = False, _one_line(exc)
    return Check("classifier() and reset_classifier(n)", ok, detail)
