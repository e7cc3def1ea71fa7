"""docs/plugins.md: its two example plugins are complete, short, cheap to import and pass the contract."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scan_cli.testing import check_provider

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _files():
    """{path: source} of every block the guide marks with <!-- file: PATH -->."""
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S)}


@pytest.fixture
def examples(tmp_path, monkeypatch):
    for name, source in _files().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m == "mycnn" or m.startswith("mycnn.") or m == "scan_dla"]:
        monkeypatch.delitem(sys.modules, mod)
    return tmp_path


def test_the_examples_are_complete_plugins_of_at_most_60_lines():
    files = _files()
    assert set(files) == {"pyproject.toml", "mycnn/__init__.py", "mycnn/net.py", "scan_dla.py"}
    hand_written = sum(files[f].count("\n") for f in ("pyproject.toml", "mycnn/__init__.py", "mycnn/net.py"))
    assert hand_written <= 60  # pyproject and code together
    assert files["scan_dla.py"].count("\n") + 2 <= 60  # plus the entry-point lines of its pyproject
    assert 'mycnn = "mycnn:provider"' in files["pyproject.toml"]


def test_importing_the_examples_does_not_import_torch(examples):
    code = "import sys, mycnn, scan_dla; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=examples).stdout
    assert out.split() == ["False", "False"]


def test_the_hand_written_example_passes_the_contract(examples):
    import mycnn

    checks = check_provider(mycnn.provider, input_size=32)
    assert any(c.name == "mycnn: staged forward equals the plain forward" for c in checks)


def test_the_hand_written_example_says_it_has_no_pretrained_weights(examples):
    import mycnn

    from scan_cli.errors import ScanError

    with pytest.raises(ScanError, match="mycnn has no pretrained weights"):
        mycnn.provider.backbones[0].build(pretrained=True)


def test_the_timm_family_example_passes_the_contract_declared_and_resolved(examples):
    import scan_dla

    checks = check_provider(scan_dla.provider, resolve_ids=["dla46_c"], input_size=32)  # 32: a multiple of 4, 8, 16
    names = {c.name for c in checks}
    assert {"dla34: staged forward equals the plain forward", "dla46_c: staged forward equals the plain forward",
            "resolve returns None for an id it does not handle"} <= names
