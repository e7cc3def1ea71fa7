"""The backbone contract test: what `scan backbones check ID` runs, importable by plugin authors.

    from scan_cli.checks import check_backbone
    assert all(c.ok for c in check_backbone(my_spec))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def check_backbone(spec, input_size: Optional[int] = None, num_classes: int = 7, atol: float = 1e-4) -> list[Check]:
    """Build ``spec`` (random weights), run real forwards, compare with what it declares."""
    import torch

    from .backbones.shapes import trace_shapes
    from .model import HeadConfig, ScanModel

    checks: list[Check] = []
    size = input_size or spec.input_size
    torch.manual_seed(0)
    try:
        backbone = spec.build(num_classes=num_classes, pretrained=False).eval()
    except Exception as exc:
        return [Check("build", False, f"{type(exc).__name__}: {exc}")]
    checks.append(Check("build", True, type(backbone).__name__))

    declared = [s.module for s in spec.split_points]
    missing = [m for m in declared if m not in backbone.unit_names]
    checks.append(Check("split points are units", not missing,
                        f"not units: {missing}" if missing else f"{len(declared)} of {len(backbone.unit_names)} units"))
    if missing:
        return checks

    try:
        shapes = trace_shapes(backbone, size)
    except Exception as exc:
        checks.append(Check("dry-run forward", False, f"{type(exc).__name__}: {exc}"))
        return checks
    bad = []
    for sp in spec.split_points:
        c, h, _ = shapes[sp.module]
        reduction = max(1, round(size / h))
        if (c, reduction) != (sp.channels, sp.reduction):
            bad.append(f"{sp.module}: declared {sp.channels}ch/{sp.reduction}x, measured {c}ch/{reduction}x")
    checks.append(Check("declared shapes match a real forward", not bad,
                        "; ".join(bad) or f"{len(spec.split_points)} split points at {size}px"))

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
    return checks
