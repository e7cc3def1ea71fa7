"""The plugin's own CI: the whole scan contract test over every backbone it lists."""

import pytest

pytest.importorskip("scan_torchvision", reason="pip install -e plugins/scan-torchvision (the README's test line does)")

from scan_cli.testing import check_provider  # noqa: E402


def test_scan_contract():
    # 64 px keeps it fast on CPU; every declared reduction divides 64, so the shapes are compared too
    check_provider("torchvision", input_size=64)
