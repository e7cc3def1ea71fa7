"""Registry: built-ins through entry points, isolation of broken plugins, conflicts, suggestions."""

import sys
import types
from importlib import metadata

import pytest

from scan_cli.contract import BackboneSpec, Provider, SplitPoint
from scan_cli.errors import ScanError
from scan_cli.backbones.registry import Registry


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


def test_strict_mode_raises_naming_the_plugin(monkeypatch):
    from scan_cli.backbones.registry import PluginError

    monkeypatch.setenv("SCAN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="provider 'ghost'.*ModuleNotFoundError") as exc:
        Registry([_ep("ghost", "no_such_module_for_scan:provider")]).statuses()
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)  # SCAN_DEBUG=1 shows the real traceback


def test_strict_mode_raises_for_a_dropped_spec_naming_the_plugin(monkeypatch):
    from scan_cli.backbones.registry import PluginError

    monkeypatch.setenv("SCAN_STRICT_PLUGINS", "1")
    _install_module(monkeypatch, "fake_half", provider=Provider(name="half", backbones=[_spec("bad", splits=(("a", 0, 2),))]))
    with pytest.raises(PluginError, match="'bad'.*plugin 'half'.*invalid channels"):
        Registry([_ep("half", "fake_half:provider")]).statuses()


def test_strict_mode_on_the_command_line_is_one_line_with_the_name(monkeypatch, run_cli):
    import fakeplugins as fp

    monkeypatch.setenv("SCAN_STRICT_PLUGINS", "1")
    fp.install(monkeypatch, "not a provider")
    code, _, err = run_cli("plugins")
    assert code == 1 and err.count("\n") == 1 and "tinyplug" in err and "scan-tinyplug" in err


@pytest.mark.parametrize("bad, needle", [
    (_spec("bad", splits=(("a", 0, 2),)), "invalid channels 0"),
    (_spec("bad", splits=(("b", 8, 8), ("a", 8, 2))), "execution order"),
    (BackboneSpec(id="bad", split_points=(SplitPoint("a", 8, 2),), build=lambda **kw: None, input_size=[3, 32, 32]),
     "input_size must be an int"),
    (BackboneSpec(id="bad", split_points=(SplitPoint("a", 8, 2),), build="not callable"), "build must be callable"),
])
def test_invalid_spec_is_dropped_and_the_rest_kept(monkeypatch, scan_log, bad, needle):
    """The README and the tool agree: one invalid spec does not take down the provider's other backbones."""
    _install_module(monkeypatch, "fake_half", provider=Provider(name="half", backbones=[_spec("good1"), bad, _spec("good2")]))
    reg = Registry([_ep("half", "fake_half:provider")])
    (status,) = reg.statuses()
    assert status.ok and status.backbones == ["good1", "good2"]
    assert [d["id"] for d in status.dropped] == ["bad"] and needle in status.dropped[0]["error"]
    assert reg.get("good2").provider == "half"
    with pytest.raises(ScanError, match="'bad'.*dropped.*half.*" + needle.split()[0]):
        reg.get("bad")
    assert any("half" in m and "'bad'" in m and needle in m for m in scan_log)


def test_id_listed_twice_in_one_provider_says_so(monkeypatch, scan_log):
    _install_module(monkeypatch, "fake_twice", provider=Provider(name="twice", backbones=[_spec("same"), _spec("same"), _spec("other")]))
    reg = Registry([_ep("twice", "fake_twice:provider")])
    (status,) = reg.statuses()
    assert status.ok and status.backbones == ["same", "other"] and status.conflicts == []
    assert status.dropped == [{"id": "same", "error": "listed twice by provider 'twice'; the first declaration is kept"}]
    message = " ".join(scan_log)
    assert "listed twice by provider 'twice'" in message and "conflicts with" not in message


def test_duplicate_id_is_a_conflict_and_first_wins(monkeypatch):
    _install_module(monkeypatch, "fake_dupe", provider=Provider(name="dupe", backbones=[_spec("resnet50"), _spec("fresh")]))
    reg = Registry(list(metadata.entry_points(group="scan_cli.backbones")) + [_ep("dupe", "fake_dupe:provider")])
    statuses = {s.name: s for s in reg.statuses()}
    assert statuses["dupe"].conflicts == ["resnet50"]
    assert statuses["dupe"].backbones == ["fresh"]
    assert reg.get("resnet50").provider == "timm"


def test_conflict_with_another_provider_names_both(monkeypatch, scan_log):
    _install_module(monkeypatch, "fake_dupe", provider=Provider(name="dupe", backbones=[_spec("resnet50")]))
    Registry(list(metadata.entry_points(group="scan_cli.backbones")) + [_ep("dupe", "fake_dupe:provider")]).statuses()
    assert any("'resnet50'" in m and "'dupe'" in m and "'timm'" in m for m in scan_log)


def test_contract_version_message_says_what_to_upgrade(monkeypatch):
    _install_module(monkeypatch, "fake_new", provider=Provider(name="new", backbones=[_spec("v")], contract_version=2))
    _install_module(monkeypatch, "fake_old", provider=Provider(name="old", backbones=[_spec("w")], contract_version=0))
    statuses = {s.name: s for s in Registry([_ep("new", "fake_new:provider"), _ep("old", "fake_old:provider")]).statuses()}
    assert "upgrade scan-cli" in statuses["new"].error
    assert "a release of the plugin for contract version 1" in statuses["old"].error


def test_resolve_giving_an_invalid_spec_names_the_provider(monkeypatch):
    bad = _spec("dyn_net", splits=(("a", -1, 2),))
    _install_module(monkeypatch, "fake_dyn", provider=Provider(name="dyn", resolve=lambda i: bad if i == "dyn_net" else None,
                                                                 patterns=("dyn_*",)))
    with pytest.raises(ScanError, match="plugin 'dyn'.*'dyn_net'.*invalid channels"):
        Registry([_ep("dyn", "fake_dyn:provider")]).get("dyn_net")


def test_resolve_is_asked_only_for_ids_matching_its_patterns(monkeypatch):
    asked = []
    _install_module(monkeypatch, "fake_dyn", provider=Provider(
        name="dyn", patterns=("dyn_*",), resolve=lambda i: asked.append(i) or _spec(i)))
    reg = Registry([_ep("dyn", "fake_dyn:provider")])
    assert reg.get("dyn_a").id == "dyn_a"
    with pytest.raises(ScanError, match="unknown backbone"):
        reg.get("Dyn_b")  # patterns are case-sensitive shell globs
    assert asked == ["dyn_a"]


def test_resolve_for_another_id_is_refused(monkeypatch):
    _install_module(monkeypatch, "fake_dyn", provider=Provider(name="dyn", resolve=lambda i: _spec("other")))
    with pytest.raises(ScanError, match="plugin 'dyn'.*'dyn_x'.*'other'"):
        Registry([_ep("dyn", "fake_dyn:provider")]).get("dyn_x")


def test_package_version_comes_from_the_entry_points_distribution(monkeypatch):
    import fakeplugins as fp

    reg = fp.install(monkeypatch, fp.provider(), version="2.5.1")
    status = {s.name: s for s in reg.statuses()}["tinyplug"]
    assert (status.distribution, status.version) == ("scan-tinyplug", "2.5.1")


# -- control: SCAN_DISABLE_PLUGINS and SCAN_PLUGINS ---------------------------------------------
def test_disabled_plugin_is_never_imported(monkeypatch):
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", " ghost , other")
    reg = Registry([_ep("ghost", "no_such_module_for_scan:provider")] + list(metadata.entry_points(group="scan_cli.backbones")))
    statuses = {s.name: s for s in reg.statuses()}
    assert not statuses["ghost"].ok and statuses["ghost"].error == ""  # not imported: no import error
    assert statuses["ghost"].disabled == "disabled by SCAN_DISABLE_PLUGINS"
    assert statuses["timm"].ok


def test_allow_list_loads_only_the_named_providers(monkeypatch):
    monkeypatch.setenv("SCAN_PLUGINS", "cifar")
    reg = Registry()
    statuses = {s.name: s for s in reg.statuses()}
    assert statuses["cifar"].ok and statuses["timm"].disabled == "disabled: not in SCAN_PLUGINS"
    assert {s.provider for s in reg.specs()} == {"cifar"}
    with pytest.raises(ScanError, match="timm.*SCAN_PLUGINS"):
        reg.get("resnet18")


def test_builtins_can_be_disabled_like_any_provider(monkeypatch):
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "timm")
    reg = Registry()
    assert "cifar" in {s.provider for s in reg.specs()} and "timm" not in {s.provider for s in reg.specs()}
    assert reg.get("resnet18_cifar").provider == "cifar"  # built on timm's ResNet class: still works


def test_disable_wins_over_the_allow_list_and_package_names_work(monkeypatch):
    monkeypatch.setenv("SCAN_PLUGINS", "scan-cli")  # a package name enables all of its providers
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "cifar")
    statuses = {s.name: s for s in Registry().statuses()}
    assert statuses["timm"].ok and statuses["cifar"].disabled == "disabled by SCAN_DISABLE_PLUGINS"


def test_unknown_names_in_the_control_variables_are_reported(monkeypatch, scan_log):
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "torchvison")
    Registry().statuses()
    assert any("SCAN_DISABLE_PLUGINS" in m and "'torchvison'" in m and "timm" in m for m in scan_log)


def test_default_registry_follows_the_control_variables(monkeypatch):
    from scan_cli.backbones.registry import default_registry

    assert default_registry() is default_registry()
    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "cifar")
    assert "resnet18_cifar" not in {s.id for s in default_registry().specs()}


def test_plugins_command_shows_disabled_and_dropped(monkeypatch, run_cli):
    import json

    import fakeplugins as fp

    monkeypatch.setenv("SCAN_DISABLE_PLUGINS", "cifar")
    fp.install(monkeypatch, fp.provider(fp.spec(), fp.spec("tinynet_bad", splits=[("stage1", 0, 2)])))
    code, out, err = run_cli("plugins")
    assert code == 0, err
    assert "disabled by SCAN_DISABLE_PLUGINS" in out and "tinynet_bad" in out and "invalid channels" in out
    assert "SCAN_DISABLE_PLUGINS=cifar" in out
    code, out, _ = run_cli("plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["cifar"]["disabled"] == "disabled by SCAN_DISABLE_PLUGINS" and rows["cifar"]["builtin"]
    assert rows["tinyplug"]["ok"] and rows["tinyplug"]["dropped"][0]["id"] == "tinynet_bad"


def test_contract_and_listing_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, scan_cli.contract as c; a = 'torch' in sys.modules; "
            "from scan_cli.backbones.registry import Registry; r = Registry(); r.specs(); r.statuses(); "
            "print(a, 'torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_unknown_id_suggests_close_ones():
    with pytest.raises(ScanError, match="did you mean resnet50"):
        Registry().get("resnet5O")


def test_undeclared_timm_model_of_a_supported_family_resolves():
    spec = Registry().get("resnet26")
    assert spec.provider == "timm"
    assert [s.module for s in spec.split_points] == ["layer1", "layer2", "layer3"]
    assert spec.split_points[0].channels == 256
