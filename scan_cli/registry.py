"""One registry for built-in and third-party backbones, discovered through entry points.

Providers are imported one at a time and only when needed; a provider that fails to import, targets
another contract version, declares invalid split points or repeats an id becomes a status row and a
one-line warning, never a crash. ``SCAN_STRICT_PLUGINS=1`` re-raises instead (for plugin authors).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from dataclasses import dataclass, field
from importlib import metadata

from .contract import CONTRACT_VERSION, ENTRY_POINT_GROUP, BackboneSpec, Provider, validate_spec
from .errors import ScanError

log = logging.getLogger("scan_cli")
BUILTIN_DISTRIBUTION = "scan-cli"


@dataclass
class ProviderStatus:
    name: str
    entry_point: str
    distribution: str
    version: str
    ok: bool = False
    error: str = ""
    backbones: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    description: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Registry:
    def __init__(self, entry_points=None):
        eps = list(entry_points if entry_points is not None else metadata.entry_points(group=ENTRY_POINT_GROUP))
        # Built-ins first so that a plugin cannot shadow them; then by name for a stable order.
        self._eps = sorted(eps, key=lambda ep: (_dist_name(ep) != BUILTIN_DISTRIBUTION, ep.name))
        self._loaded: dict[str, tuple[ProviderStatus, Provider | None]] = {}
        self._specs: dict[str, BackboneSpec] = {}

    # -- loading -----------------------------------------------------------------------------
    def _load(self, ep) -> tuple[ProviderStatus, Provider | None]:
        key = f"{ep.name}={ep.value}"
        if key in self._loaded:
            return self._loaded[key]
        dist = _dist_name(ep)
        status = ProviderStatus(name=ep.name, entry_point=ep.value, distribution=dist, version=_dist_version(dist))
        provider = None
        try:
            obj = ep.load()
            provider = obj() if callable(obj) and not isinstance(obj, Provider) else obj
            if not isinstance(provider, Provider):
                raise TypeError(f"entry point gives {type(provider).__name__}, not scan_cli.contract.Provider")
            if provider.contract_version != CONTRACT_VERSION:
                raise ValueError(
                    f"targets contract version {provider.contract_version}, this scan_cli speaks {CONTRACT_VERSION}"
                )
            specs = list(provider.backbones)
            for spec in specs:
                validate_spec(spec)
            status.description = provider.description
            status.patterns = list(provider.patterns)
            for spec in specs:
                if spec.id in self._specs:
                    owner = self._specs[spec.id].provider
                    status.conflicts.append(spec.id)
                    _warn(f"backbone '{spec.id}' from provider '{ep.name}' conflicts with provider '{owner}'; keeping '{owner}'")
                    continue
                self._specs[spec.id] = _with_provider(spec, ep.name)
                status.backbones.append(spec.id)
            status.ok = True
        except Exception as exc:  # isolation: one bad plugin must not break every command
            if os.environ.get("SCAN_STRICT_PLUGINS") == "1":
                raise
            status.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            provider = None
            _warn(f"backbone provider '{ep.name}' ({dist}) is disabled: {status.error}")
        self._loaded[key] = (status, provider)
        return status, provider

    def load_all(self) -> None:
        for ep in self._eps:
            self._load(ep)

    # -- queries -----------------------------------------------------------------------------
    def statuses(self) -> list[ProviderStatus]:
        self.load_all()
        return [self._loaded[f"{ep.name}={ep.value}"][0] for ep in self._eps]

    def specs(self) -> list[BackboneSpec]:
        self.load_all()
        return list(self._specs.values())

    def get(self, backbone_id: str) -> BackboneSpec:
        """The spec for an id: declared ids first (loading providers one by one), then resolvers."""
        for ep in self._eps:
            self._load(ep)
            if backbone_id in self._specs:
                return self._specs[backbone_id]
        for ep in self._eps:
            status, provider = self._load(ep)
            if provider is None or provider.resolve is None:
                continue
            if provider.patterns and not any(fnmatch.fnmatch(backbone_id, p) for p in provider.patterns):
                continue
            spec = provider.resolve(backbone_id)
            if spec is not None:
                validate_spec(spec)
                spec = _with_provider(spec, ep.name)
                self._specs[backbone_id] = spec
                return spec
        close = difflib.get_close_matches(backbone_id, list(self._specs), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'scan backbones' to list them"
        raise ScanError(f"unknown backbone '{backbone_id}': {hint}")

    def provider_of(self, spec: BackboneSpec) -> ProviderStatus:
        for status, _ in self._loaded.values():
            if status.name == spec.provider:
                return status
        raise KeyError(spec.provider)


def _with_provider(spec: BackboneSpec, name: str) -> BackboneSpec:
    from dataclasses import replace

    return replace(spec, provider=name)


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _warn(message: str) -> None:
    log.warning(message)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT
