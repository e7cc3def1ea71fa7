"""Test a backbone plugin in its own CI, from pytest:

    from scan_cli.testing import check_provider

    def test_contract():
        check_provider("mynets", input_size=64)  # the entry-point name, as installed

``check_provider`` runs everything scan relies on: the entry point loads (without importing torch),
the provider targets a supported contract version, every spec is valid and no id is taken by
another provider, ``resolve`` answers as documented, and every backbone passes the contract test of
``scan backbones check`` (real forwards, declared shapes, staged forward equals the plain one, exits,
early exit, classifier reset). It raises ``AssertionError`` listing every failed check, or returns
the checks when all pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Iterable, Optional, Union

from .checks import Check, check_backbone
from .contract import ENTRY_POINT_GROUP, Provider

__all__ = ["check_provider", "Check"]

HEAVY_MODULES = ("torch", "timm", "torchvision")
FOREIGN_ID = "scan-check-no-such-backbone"


class _ObjectEntryPoint:
    """A provider object standing in for an installed entry point."""

    group = ENTRY_POINT_GROUP
    dist = None

    def __init__(self, obj):
        self.obj = obj
        self.name = getattr(obj, "name", None) or "provider-under-test"
        self.value = f"<{type(obj).__name__} object>"

    def load(self):
        return self.obj


def check_provider(provider: Union[str, Provider], *, ids: Optional[Iterable[str]] = None,
                   resolve_ids: Iterable[str] = (), input_size: Optional[int] = None,
                   check_import: bool = True, raise_on_failure: bool = True) -> list[Check]:
    """Run the plugin contract test on one provider.

    ``provider``: the entry-point name of an installed provider (tests the installation as scan sees
    it, including that importing it does not import torch), or a ``Provider`` object (or the
    zero-argument callable an entry point may name). ``ids``: only these listed backbones (default
    all). ``resolve_ids``: ids your ``resolve`` should build on demand; each is checked too.
    ``input_size``: the side of the test forwards (default each spec's own; smaller is faster).
    SCAN_DISABLE_PLUGINS / SCAN_PLUGINS do not apply here.
    """
    from importlib import metadata

    from .registry import Registry

    installed = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    if isinstance(provider, str):
        matches = [ep for ep in installed if ep.name == provider]
        if not matches:
            names = ", ".join(sorted({ep.name for ep in installed})) or "none"
            return _finish([Check("entry point is installed", False,
                                  f"no entry point '{provider}' in group {ENTRY_POINT_GROUP} (installed: {names}): "
                                  f"pip install -e your package, and check [project.entry-points.\"{ENTRY_POINT_GROUP}\"]")],
                           raise_on_failure)
        target = matches[0]
    else:
        target = _ObjectEntryPoint(provider)
    others = [ep for ep in installed if ep.name != target.name]

    registry = Registry(others + [target], control=False, strict=False)
    registry.load_all()  # in scan's order, so that conflicts show as users will meet them
    status, loaded = registry.status_of(target.name), registry.provider(target.name)
    checks: list[Check] = []
    checks.append(Check("provider loads", status.ok, status.error or f"{len(status.backbones)} backbones listed"))
    if not status.ok:
        return _finish(checks, raise_on_failure)

    if isinstance(provider, str):
        checks.append(Check("provider name equals the entry-point name", loaded.name == target.name,
                            f"Provider(name='{loaded.name}'), entry point '{target.name}'"))
        if check_import:
            checks.append(_check_cheap_import(target.name))
    checks.append(Check("every listed spec is valid", not status.dropped,
                        "; ".join(f"{d['id']}: {d['error']}" for d in status.dropped) or "ok"))
    checks.append(Check("no id is taken by another provider", not status.conflicts,
                        f"given first by another provider: {', '.join(status.conflicts)}" if status.conflicts else "ok"))

    specs = []
    wanted = list(ids) if ids is not None else list(status.backbones)
    for backbone_id in wanted:
        if backbone_id in status.backbones:
            specs.append(registry.get(backbone_id))
        else:
            checks.append(Check(f"{backbone_id}: listed", False, f"not among {', '.join(status.backbones) or 'none'}"))
    resolve_ids = list(resolve_ids)
    if resolve_ids or loaded.resolve is not None:
        checks.extend(_check_resolve(registry, loaded, target.name, resolve_ids, specs))

    for spec in specs:
        for c in check_backbone(spec, input_size=input_size):
            checks.append(Check(f"{spec.id}: {c.name}", c.ok, c.detail))
    return _finish(checks, raise_on_failure)


def _check_resolve(registry, provider: Provider, name: str, resolve_ids: list[str], specs: list) -> list[Check]:
    import fnmatch

    checks = []
    if provider.resolve is None:
        return [Check("resolve", False, f"resolve_ids {resolve_ids} given, but the provider has no resolve")]
    try:
        answer = provider.resolve(FOREIGN_ID)
        checks.append(Check("resolve returns None for an id it does not handle", answer is None,
                            f"resolve('{FOREIGN_ID}') returned {answer!r}"[:200]))
    except Exception as exc:
        checks.append(Check("resolve returns None for an id it does not handle", False,
                            f"resolve('{FOREIGN_ID}') raised {type(exc).__name__}: {exc}"[:200]))
    for backbone_id in resolve_ids:
        if provider.patterns and not any(fnmatch.fnmatchcase(backbone_id, p) for p in provider.patterns):
            checks.append(Check(f"{backbone_id}: matches patterns", False,
                                f"no pattern of {list(provider.patterns)} matches it, so scan never asks resolve"))
            continue
        try:
            spec = registry.get(backbone_id)
        except Exception as exc:
            checks.append(Check(f"{backbone_id}: resolves", False, str(exc)))
            continue
        ok = spec.provider == name
        checks.append(Check(f"{backbone_id}: resolves", ok, f"given by provider '{spec.provider}'"))
        if ok:
            specs.append(spec)
    return checks


def _check_cheap_import(name: str) -> Check:
    """Import the entry point in a fresh interpreter: listing backbones must not import torch."""
    code = (
        "import json, sys\n"
        "from importlib.metadata import entry_points\n"
        f"[ep] = [e for e in entry_points(group={ENTRY_POINT_GROUP!r}) if e.name == {name!r}]\n"
        "obj = ep.load()\n"
        "from scan_cli.contract import Provider\n"
        "p = obj if isinstance(obj, Provider) else obj()\n"
        "list(p.backbones)\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return Check("importing the provider does not import torch", False, f"import failed: {tail}")
    heavy = json.loads(res.stdout.strip().splitlines()[-1])
    return Check("importing the provider does not import torch", not heavy,
                 f"imports {', '.join(heavy)} at import time: import them inside build()" if heavy else "ok")


def _finish(checks: list[Check], raise_on_failure: bool) -> list[Check]:
    failed = [c for c in checks if not c.ok]
    if failed and raise_on_failure:
        lines = "\n".join(f"  FAIL {c.name}: {c.detail}" for c in failed)
        raise AssertionError(f"{len(failed)} of {len(checks)} plugin contract checks failed:\n{lines}")
    return checks
