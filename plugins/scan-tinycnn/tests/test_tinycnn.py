"""The plugin's own CI: the whole scan contract test, plus what this plugin promises on its own."""

import subprocess
import sys

import pytest

pytest.importorskip("scan_tinycnn", reason="pip install -e plugins/scan-tinycnn (the README's test line does)")

from scan_cli.testing import check_provider  # noqa: E402


def test_scan_contract():
    check_provider("tinycnn", input_size=32)  # raises AssertionError listing every failed check


def test_contract_holds_at_the_small_sizes_users_train_at():
    check_provider("tinycnn", ids=["tinycnn"], input_size=16, check_import=False)


def test_pretrained_is_a_one_line_error_naming_the_model():
    from scan_cli.errors import ScanError
    from scan_cli.backbones.registry import Registry

    with pytest.raises(ScanError, match="tinycnn has no pretrained weights"):
        Registry().get("tinycnn").build(pretrained=True)


def test_no_timm_anywhere():
    """Building and running the network imports neither timm nor torchvision."""
    code = ("import sys, torch; from scan_tinycnn import provider; "
            "net = provider.backbones[0].build(num_classes=3); net.eval(); "
            "assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3); "
            "print('timm' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
