"""scan_cli.testing.check_provider: the contract test a plugin runs in its own CI."""

import pytest

import fakeplugins as fp
from scan_cli.contract import Provider
from scan_cli.testing import check_provider


def test_a_good_provider_object_passes():
    checks = check_provider(fp.provider(), input_size=32)
    names = [c.name for c in checks]
    assert all(c.ok for c in checks)
    assert "provider loads" in names and "tinynet: declared shapes match a real forward" in names
    assert "tinynet: classifier() and reset_classifier(n)" in names


def test_a_wrong_declaration_fails_with_a_readable_assertion():
    bad = fp.provider(fp.spec(splits=[("stage1", 8, 2), ("stage2", 48, 4)]))
    with pytest.raises(AssertionError) as exc:
        check_provider(bad, input_size=32)
    assert "tinynet: declared shapes match a real forward" in str(exc.value)
    assert "declares 48 channels at 1/4, a dry run at 32px measures 16" in str(exc.value)


def test_returns_failures_instead_when_asked():
    checks = check_provider(fp.provider(fp.spec("resnet50")), raise_on_failure=False, input_size=32)
    failed = {c.name: c.detail for c in checks if not c.ok}
    assert "no id is taken by another provider" in failed and "resnet50" in failed["no id is taken by another provider"]


def test_an_invalid_spec_and_a_repeated_id_fail():
    prov = fp.provider(fp.spec(), fp.spec(), fp.spec("tinynet_bad", input_size=0))
    failed = {c.name: c.detail for c in check_provider(prov, raise_on_failure=False, input_size=32) if not c.ok}
    detail = failed["every listed spec is valid"]
    assert "listed twice" in detail and "tinynet_bad" in detail and "input_size" in detail


def test_resolve_is_checked():
    def resolve(backbone_id):
        if not backbone_id.startswith("tinynet_"):
            raise KeyError(backbone_id)  # wrong: must return None
        return fp.spec(backbone_id)

    prov = Provider(name="tinyplug", backbones=[], resolve=resolve, patterns=("tinynet_*",))
    failed = {c.name: c.detail for c in check_provider(prov, resolve_ids=["tinynet_x", "other"], input_size=32,
                                                       raise_on_failure=False) if not c.ok}
    assert set(failed) == {"resolve returns None for an id it does not handle", "other: matches patterns"}
    assert "KeyError" in failed["resolve returns None for an id it does not handle"]


def test_a_name_that_is_not_installed_says_how_to_install():
    with pytest.raises(AssertionError, match="no entry point 'not_installed_plugin'.*pip install -e"):
        check_provider("not_installed_plugin")


def test_an_installed_plugin_that_imports_torch_at_import_time_fails(tmp_path, monkeypatch):
    """A real (if minimal) installed distribution: a dist-info folder with an entry point."""
    (tmp_path / "heavy_plugin.py").write_text(
        "import torch  # at import time: every 'scan backbones' would pay for it\n"
        "from scan_cli.contract import Provider\n"
        "provider = Provider(name='heavy', backbones=[])\n")
    info = tmp_path / "heavy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heavy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[scan_cli.backbones]\nheavy = heavy_plugin:provider\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(AssertionError) as exc:
        check_provider("heavy")
    assert "importing the provider does not import torch: imports torch" in str(exc.value)
