"""The backbone contract test (what `scan backbones check ID` runs) and the checks every model build
runs: the declared split points against a dry-run forward, with messages that name the provider.

Plugin authors: ``scan_cli.testing.check_provider`` runs all of it from pytest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import ScanError, UsageError


class SplitPointError(UsageError):
    """Split points asked for (--splits, or a model file's exits) that the backbone does not have."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def measured_reduction(input_size: int, height: int) -> int:
    return max(1, round(input_size / height))


def declaration_problems(spec, unit_names, shapes: dict, size: int) -> list[str]:
    """What a dry run at ``size`` px contradicts in the spec's declared split points (empty: none).

    Channels are always compared; the reduction where ``size`` is the declared ``input_size`` or a
    multiple of the declared reduction (elsewhere rounding makes it differ legitimately)."""
    units = list(unit_names)
    problems, last = [], -1
    for sp in spec.split_points:
        if sp.module not in units:
            problems.append(f"split point '{sp.module}' is not a unit (units: {', '.join(units)})")
            continue
        index = units.index(sp.module)
        if index == len(units) - 1:
            problems.append(f"split point '{sp.module}' is the last unit (its output feeds the classifier)")
        elif index < last:
            problems.append(f"split point '{sp.module}' comes before the previous one in execution order")
        last = index
        c, h = shapes[sp.module][0], shapes[sp.module][1]
        r = measured_reduction(size, h)
        compare_r = size == spec.input_size or size % sp.reduction == 0
        if c != sp.channels or (compare_r and r != sp.reduction):
            problems.append(f"split point {sp.module} declares {sp.channels} channels at 1/{sp.reduction}, "
                            f"a dry run at {size}px measures {c} at 1/{r}")
    return problems


def _label(spec) -> str:
    from .registry import provider_label

    return provider_label(spec)


def _fix(spec) -> str:
    where = "scan_cli/backbones (a bug: please report it)" if _label(spec).startswith("built-in") else "the plugin"
    return f"fix the declaration in {where}, then run 'scan backbones check {spec.id}'"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def build_backbone(spec, *, num_classes=None, pretrained: bool = False):
    """``spec.build`` with exactly the two arguments of the contract; failures name the provider
    (a ScanError the plugin raises, e.g. "X has no pretrained weights", is shown as it is)."""
    from .contract import StagedBackbone
    from .registry import PluginError

    try:
        backbone = spec.build(num_classes=num_classes, pretrained=pretrained)
    except ScanError:
        raise
    except Exception as exc:
        if pretrained:
            raise PluginError(f"could not build '{spec.id}' with pretrained weights from {_label(spec)} ({_one_line(exc)}): "
                              f"drop --pretrained or pass --weights FILE (or check the network if it downloads them)") from exc
        raise PluginError(f"{_label(spec)} failed to build '{spec.id}' ({_one_line(exc)}): "
                          f"run 'scan backbones check {spec.id}' for the contract test") from exc
    if not isinstance(backbone, StagedBackbone):
        raise PluginError(f"{_label(spec)}: build() of '{spec.id}' returned {type(backbone).__name__}, "
                          f"not a scan_cli.contract.StagedBackbone")
    return backbone


def measure(spec, backbone, size: int) -> dict:
    """The dry-run shapes (``trace_shapes``); a failing forward names the provider."""
    from .backbones.shapes import trace_shapes
    from .registry import PluginError

    try:
        return trace_shapes(backbone, size)
    except Exception as exc:
        raise PluginError(f"backbone '{spec.id}' from {_label(spec)} fails a dry-run forward at {size}px "
                          f"({_one_line(exc)}): run 'scan backbones check {spec.id} --img-size {size}'") from exc


def verify_declaration(spec, backbone, shapes: dict, size: int) -> None:
    """Refuse a backbone whose declared split points a dry run contradicts (fit and load alike)."""
    from .registry import PluginError

    problems = declaration_problems(spec, backbone.unit_names, shapes, size)
    if problems:
        raise PluginError(f"backbone '{spec.id}' from {_label(spec)} does not match its declaration: "
                          f"{'; '.join(problems)}: {_fix(spec)}")


def verify_splits(spec, backbone, modules) -> None:
    """Split points to attach exits to must be units, distinct, in order, before the last unit."""
    units = list(backbone.unit_names)
    where = f"backbone '{spec.id}' from {_label(spec)}"
    unknown = [m for m in modules if m not in units]
    if unknown:
        raise SplitPointError(f"split point(s) {', '.join(unknown)} are not units of {where}: "
                              f"choose from {', '.join(units[:-1])}")
    order = [units.index(m) for m in modules]
    if not modules or order != sorted(set(order)) or order[-1] == len(units) - 1:
        raise SplitPointError(f"split points of {where} must be distinct, in execution order and before the last "
                              f"unit ({units[-1]}): choose from {', '.join(units[:-1])}")


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
