"""A hand-written CNN for scan (plugin contract version 1), in plain PyTorch: no timm anywhere.

This module is what `scan backbones` imports: plain data and no torch. The network lives in
``scan_tinycnn.net``, which ``build`` imports when a model is really built.
"""

from scan_cli.contract import BackboneSpec, Provider, SplitPoint

# id -> (stage widths, blocks per stage, description)
VARIANTS = {
    "tinycnn": ((16, 32, 64, 128), (1, 1, 2, 1), "4-stage CNN, 0.14M parameters: the CPU demo plugin"),
    "tinycnn_wide": ((32, 64, 128, 256), (1, 2, 2, 1), "the same, twice as wide"),
}
INPUT_SIZE = 32  # the split points below are declared at 32x32 inputs
REDUCTIONS = (1, 2, 4)  # stage1 keeps the resolution (stride-1 stem), stages 2-4 halve it


def _build(variant):
    def build(num_classes=None, pretrained=False):
        """The contract's two arguments. num_classes=None keeps the default 10-way classifier."""
        if pretrained:
            from scan_cli.errors import ScanError

            raise ScanError(f"{variant} has no pretrained weights: drop --pretrained, or pass --weights FILE")
        from .net import staged_tinycnn  # imports torch

        widths, depths, _ = VARIANTS[variant]
        return staged_tinycnn(widths, depths, num_classes=num_classes or 10)

    return build


def _spec(variant):
    widths, _, description = VARIANTS[variant]
    # exits after stages 1-3 (never after the last stage: the network's own classifier reads it)
    splits = tuple(SplitPoint(f"stage{i + 1}", widths[i], REDUCTIONS[i]) for i in range(3))
    return BackboneSpec(id=variant, split_points=splits, build=_build(variant), family="tinycnn",
                        input_size=INPUT_SIZE, description=description)


provider = Provider(
    name="tinycnn",  # = the entry-point name in pyproject.toml
    description="a hand-written 4-stage CNN in plain PyTorch",
    backbones=[_spec(v) for v in VARIANTS],
)
