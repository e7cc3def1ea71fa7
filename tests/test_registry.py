"""Registry: built-ins through entry points, isolation of broken plugins, conflicts, suggestions."""

import sys
import types
from importlib import metadata

import pytest

from scan_cli.contract import BackboneSpec, Provider, SplitPoint
from scan_cli.errors import ScanError
from scan_cli.registry import Registry


def _ep(name, value):
    return metadata.EntryPoint(name=name, value=value, group="scan_cli.backbones")


def _install_module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)


def _spec(id_, splits=(("a", 8, 2),)):
    return BackboneSpec(id=id_, split_points=tuple(SplitPoint(*s) for s in splits), build=lambda **kw: None)


def test_builtins_come_through_entry_points():
    reg = Registry()
    names = {s.name for s in reg.statuses()}
    assert {"timm", "cifar"} <= names
    assert all(s.ok for s in reg.statuses() if s.name in ("timm", "cifar"))
    ids = {s.id for s in reg.specs()}
    assert {"resnet50", "test_vit", "resnet18_cifar", "efficientnet_b0", "convnext_tiny", "regnety_008"} <= ids


def test_get_imports_only_the_provider_needed(monkeypatch):
    loaded = []
    _install_module(monkeypatch, "fake_first", provider=Provider(name="first", backbones=[_spec("alpha")]))

    def never():
        loaded.append("second")
        raise RuntimeError("should not be imported")

    _install_module(monkeypatch, "fake_second", provider=never)
    reg = Registry([_ep("first", "fake_first:provider"), _ep("second", "fake_second:provider")])
    assert reg.get("alpha").provider == "first"
    assert loaded == []


@pytest.mark.parametrize("attrs, needle", [
    ({}, "AttributeError"),  # provider attribute missing: import fails
    ({"provider": Provider(name="x", backbones=[_spec("bad", splits=(("a", 0, 2),))])}, "invalid channels"),
    ({"provider": Provider(name="x", backbones=[_spec("bad", splits=(("b", 8, 8), ("a", 8, 2)))])}, "execution order"),
    ({"provider": Provider(name="x", backbones=[_spec("v")], contract_version=99)}, "contract version 99"),
    ({"provider": "not a provider"}, "not scan_cli.contract.Provider"),
])
def test_broken_plugin_becomes_status_row(monkeypatch, caplog, attrs, needle):
    _install_module(monkeypatch, "fake_broken", **attrs)
    reg = Registry(list(metadata.entry_points(group="scan_cli.backbones")) + [_ep("broken", "fake_broken:provider")])
    statuses = {s.name: s for s in reg.statuses()}
    assert not statuses["broken"].ok and needle in statuses["broken"].error
    assert statuses["timm"].ok  # everything else keeps working
    assert reg.get("resnet18").provider == "timm"
    assert any("broken" in r.getMessage() for r in caplog.records)


def test_import_error_is_isolated():
    reg = Registry([_ep("ghost", "no_such_module_for_scan:provider")])
    (status,) = reg.statuses()
    assert not status.ok and "ModuleNotFoundError" in status.error


def test_strict_mode_reraises(monkeypatch):
    monkeypatch.setenv("SCAN_STRICT_PLUGINS", "1")
    with pytest.raises(ModuleNotFoundError):
        Registry([_ep("ghost", "no_such_module_for_scan:provider")]).statuses()


def test_duplicate_id_is_a_conflict_and_first_wins(monkeypatch):
    _install_module(monkeypatch, "fake_dupe", provider=Provider(name="dupe", backbones=[_spec("resnet50"), _spec("fresh")]))
    reg = Registry(list(metadata.entry_points(group="scan_cli.backbones")) + [_ep("dupe", "fake_dupe:provider")])
    statuses = {s.name: s for s in reg.statuses()}
    assert statuses["dupe"].conflicts == ["resnet50"]
    assert statuses["dupe"].backbones == ["fresh"]
    assert reg.get("resnet50").provider == "timm"


def test_unknown_id_suggests_close_ones():
    with pytest.raises(ScanError, match="did you mean resnet50"):
        Registry().get("resnet5O")


def test_undeclared_timm_model_of_a_supported_family_resolves():
    spec = Registry().get("resnet26")
    assert spec.provider == "timm"
    assert [s.module for s in spec.split_points] == ["layer1", "layer2", "layer3"]
    assert spec.split_points[0].channels == 256
