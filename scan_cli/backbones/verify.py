"""What every model build checks: the declared split points against a dry-run forward, with messages
that name the provider (the plugin surface's own checks; the whole contract test is ``scan_cli.testing``)."""

from __future__ import annotations

from typing import Optional

from ..errors import ScanError, UsageError


class SplitPointError(UsageError):
    """Split points asked for (--splits, or a model file's exits) that the backbone does not have."""


def measured_reduction(input_size: int, height: int) -> int:
    return max(1, round(input_size / height))


def declaration_problems(spec, unit_names, shapes: dict, size: int) -> list[str]:
    """What a dry run at ``size`` px contradicts in the spec's declared split points (empty: none).

    Channels are always compared; the reduction where ``size`` is the declared ``input_size`` or a
    multiple of the declared reduction (elsewhere rounding makes it differ legitimately)."""
    units = list(unit_names)
    problems, last = [], -1
    declared = list(getattr(spec, "unit_names", ()) or ())
    if declared and declared != units:
        problems.append(f"declares units {', '.join(declared)}, the built backbone has {', '.join(units)}")
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


def measure(spec, backbone, size: int, cache=None) -> dict:
    """The dry-run shapes (``trace_shapes``; stored in and reused from ``cache``, a run's cache file,
    for the same backbone, versions and size); a failing forward names the provider."""
    from .shapes import cached_shapes
    from .registry import PluginError

    try:
        return cached_shapes(backbone, size, cache, _label(spec))
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
    check_split_modules(spec, backbone.unit_names, modules)


def check_split_modules(spec, unit_names, modules) -> None:
    """`verify_splits` against a list of units: the built backbone's, or the spec's declared
    ``unit_names`` (then before torch is imported)."""
    units = list(unit_names)
    where = f"backbone '{spec.id}' from {_label(spec)}"
    unknown = [m for m in modules if m not in units]
    if unknown:
        raise SplitPointError(f"split point(s) {', '.join(unknown)} are not units of {where}: "
                              f"choose from {', '.join(units[:-1])}")
    order = [units.index(m) for m in modules]
    if not modules or order != sorted(set(order)) or order[-1] == len(units) - 1:
        raise SplitPointError(f"split points of {where} must be distinct, in execution order and before the last "
                              f"unit ({units[-1]}): choose from {', '.join(units[:-1])}")
