"""One registry for built-in and third-party backbones, discovered through entry points.

Providers are imported one at a time and only when needed. What goes wrong is reported, never a
crash of every command:

- a provider that fails to import, is not a ``Provider`` or targets an unsupported contract version
  is disabled: a status row with its error and a one-line warning;
- a spec that is invalid, or an id the same provider lists twice, is dropped (a status row names it
  and why); the provider's other backbones keep working;
- an id another provider already gave is a conflict: the first provider keeps it (built-ins first,
  then plugins by entry-point name).

``SCAN_STRICT_PLUGINS=1`` raises instead (a ``PluginError`` that names the plugin, chained to the
original exception). ``SCAN_DISABLE_PLUGINS=a,b`` keeps the named providers from being imported at
all; ``SCAN_PLUGINS=a,b`` imports only the named ones. Names are provider (entry-point) names or
package names; built-ins (``timm``, ``cifar``, package ``scan-cli``) are providers like any other.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from dataclasses import dataclass, field, replace
from importlib import metadata

from .contract import CONTRACT_VERSION, ENTRY_POINT_GROUP, SUPPORTED_CONTRACT_VERSIONS, BackboneSpec, Provider, validate_spec
from ..errors import ScanError

log = logging.getLogger("scan_cli")
BUILTIN_DISTRIBUTION = "scan-cli"
ENV_DISABLE = "SCAN_DISABLE_PLUGINS"
ENV_ALLOW = "SCAN_PLUGINS"
ENV_STRICT = "SCAN_STRICT_PLUGINS"


class PluginError(ScanError):
    """A provider broke the contract (raised in strict mode, or for a bad on-demand spec)."""


class UnknownBackbone(ScanError):
    """No enabled provider gives this id."""

    def __init__(self, message: str, backbone_id: str):
        super().__init__(message)
        self.backbone_id = backbone_id


@dataclass
class ProviderStatus:
    name: str
    entry_point: str
    distribution: str
    version: str
    ok: bool = False
    error: str = ""  # why the provider failed to load (it is disabled)
    disabled: str = ""  # why it was not even imported: "disabled by SCAN_DISABLE_PLUGINS", ...
    backbones: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # ids another provider gave first
    dropped: list[dict] = field(default_factory=list)  # [{"id", "error"}]: specs left out, the rest works
    patterns: list[str] = field(default_factory=list)
    description: str = ""
    builtin: bool = False

    @property
    def state(self) -> str:
        if self.disabled:
            return self.disabled
        return "ok" if self.ok else f"error: {self.error}"

    @property
    def label(self) -> str:
        """How messages name it: "plugin 'x' (pkg 1.0)" or "built-in provider 'timm'"."""
        if self.builtin:
            return f"built-in provider '{self.name}'"
        package = " ".join(p for p in (self.distribution, self.version) if p and p != "unknown")
        return f"plugin '{self.name}'" + (f" ({package})" if package else "")

    def to_dict(self) -> dict:
        return dict(self.__dict__) | {"state": self.state}


def _names(var: str) -> set[str]:
    return {n.strip() for n in os.environ.get(var, "").split(",") if n.strip()}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class Registry:
    def __init__(self, entry_points=None, *, control: bool = True, strict: bool | None = None):
        """``control=False`` ignores SCAN_DISABLE_PLUGINS / SCAN_PLUGINS; ``strict`` overrides
        SCAN_STRICT_PLUGINS."""
        eps = list(entry_points if entry_points is not None else metadata.entry_points(group=ENTRY_POINT_GROUP))
        # Built-ins first so that a plugin cannot shadow them; then by name for a stable order.
        self._eps = sorted(eps, key=lambda ep: (_dist_name(ep) != BUILTIN_DISTRIBUTION, ep.name))
        self._loaded: dict[str, tuple[ProviderStatus, Provider | None]] = {}
        self._specs: dict[str, BackboneSpec] = {}
        self._dropped: dict[str, tuple[str, str]] = {}  # id -> (provider label, why)
        self.disabled_names, self.allowed_names = (_names(ENV_DISABLE), _names(ENV_ALLOW)) if control else (set(), set())
        self.strict = os.environ.get(ENV_STRICT) == "1" if strict is None else strict

    # -- control -----------------------------------------------------------------------------
    def _disabled_reason(self, ep) -> str:
        names = {ep.name, _norm(_dist_name(ep))}
        if names & ({n for n in self.disabled_names} | {_norm(n) for n in self.disabled_names}):
            return f"disabled by {ENV_DISABLE}"
        if self.allowed_names and not names & (self.allowed_names | {_norm(n) for n in self.allowed_names}):
            return f"disabled: not in {ENV_ALLOW}"
        return ""

    def unknown_control_names(self) -> dict[str, list[str]]:
        """Names in SCAN_DISABLE_PLUGINS / SCAN_PLUGINS that match no installed provider or package."""
        known = {ep.name for ep in self._eps} | {_norm(_dist_name(ep)) for ep in self._eps}
        out = {}
        for var, names in ((ENV_DISABLE, self.disabled_names), (ENV_ALLOW, self.allowed_names)):
            unknown = sorted(n for n in names if n not in known and _norm(n) not in known)
            if unknown:
                out[var] = unknown
        return out

    # -- loading -----------------------------------------------------------------------------
    def _status(self, ep) -> ProviderStatus:
        dist = _dist_name(ep)
        return ProviderStatus(name=ep.name, entry_point=ep.value, distribution=dist, version=_dist_version(ep),
                              builtin=dist == BUILTIN_DISTRIBUTION)

    def _load(self, ep) -> tuple[ProviderStatus, Provider | None]:
        key = f"{ep.name}={ep.value}"
        if key in self._loaded:
            return self._loaded[key]
        status = self._status(ep)
        provider = None
        status.disabled = self._disabled_reason(ep)
        if status.disabled:  # never imported
            self._loaded[key] = (status, None)
            return status, None
        try:
            obj = ep.load()
            provider = obj() if callable(obj) and not isinstance(obj, Provider) else obj
            if not isinstance(provider, Provider):
                raise TypeError(f"entry point gives {type(provider).__name__}, not scan_cli.contract.Provider")
            version = provider.contract_version
            if version not in SUPPORTED_CONTRACT_VERSIONS:
                fix = ("upgrade scan-cli (pip install -U scan-cli)" if isinstance(version, int) and version > CONTRACT_VERSION
                       else f"install a release of the plugin for contract version {CONTRACT_VERSION}")
                raise ValueError(f"targets contract version {version}, this scan_cli speaks "
                                 f"{', '.join(map(str, SUPPORTED_CONTRACT_VERSIONS))}: {fix}")
            specs = list(provider.backbones)
            status.description = provider.description
            status.patterns = list(provider.patterns)
        except Exception as exc:  # isolation: one bad plugin must not break every command
            status.error = _one_line(exc)
            if self.strict:
                raise PluginError(f"backbone provider '{ep.name}' ({status.distribution}) failed to load: "
                                  f"{status.error}") from exc
            _warn(f"backbone provider '{ep.name}' ({status.distribution}) is disabled: {status.error}")
            self._loaded[key] = (status, None)
            return status, None
        own: set[str] = set()
        for spec in specs:
            spec_id = getattr(spec, "id", None)
            try:
                validate_spec(spec)
            except ValueError as exc:
                self._drop(status, str(spec_id), str(exc))
                continue
            if spec.id in own:
                self._drop(status, spec.id, f"listed twice by provider '{ep.name}'", duplicate=True)
                continue
            own.add(spec.id)
            if spec.id in self._specs:
                owner = self._specs[spec.id].provider
                status.conflicts.append(spec.id)
                message = (f"backbone '{spec.id}' from provider '{ep.name}' ({status.distribution}) is also given by "
                           f"provider '{owner}', which was loaded first and keeps it")
                if self.strict:
                    raise PluginError(message)
                _warn(message)
                continue
            self._specs[spec.id] = _with_provider(spec, ep.name)
            status.backbones.append(spec.id)
        status.ok = True
        self._loaded[key] = (status, provider)
        return status, provider

    def _drop(self, status: ProviderStatus, spec_id: str, why: str, duplicate: bool = False) -> None:
        if self.strict:
            raise PluginError(f"backbone '{spec_id}' from {status.label}: {why} ({ENV_STRICT}=1)")
        if duplicate:
            why += "; the first declaration is kept"
            _warn(f"backbone '{spec_id}' is {why}")
        else:
            _warn(f"backbone '{spec_id}' from {status.label} is dropped: {why}; its other backbones are available")
        status.dropped.append({"id": spec_id, "error": why})
        self._dropped.setdefault(spec_id, (status.label, why))

    def load_all(self) -> None:
        for ep in self._eps:
            self._load(ep)

    # -- queries -----------------------------------------------------------------------------
    def statuses(self) -> list[ProviderStatus]:
        self.load_all()
        for var, names in self.unknown_control_names().items():
            installed = ", ".join(sorted({ep.name for ep in self._eps}))
            _warn(f"{var} names {', '.join(repr(n) for n in names)}, which is no installed provider "
                  f"(installed: {installed})")
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
            if provider.patterns and not any(fnmatch.fnmatchcase(backbone_id, p) for p in provider.patterns):
                continue
            spec = self._resolve(ep, status, provider, backbone_id)
            if spec is not None:
                self._specs[backbone_id] = spec
                return spec
        raise UnknownBackbone(self._unknown_message(backbone_id), backbone_id)

    def _resolve(self, ep, status, provider, backbone_id):
        try:
            spec = provider.resolve(backbone_id)
        except Exception as exc:
            message = f"{status.label} failed to resolve '{backbone_id}' ({_one_line(exc)})"
            if self.strict:
                raise PluginError(message) from exc
            _warn(f"{message}; its resolve() should return None for ids it does not handle")
            return None
        if spec is None:
            return None
        try:
            validate_spec(spec)
            if spec.id != backbone_id:
                raise ValueError(f"resolve('{backbone_id}') returned a spec for '{spec.id}'")
        except ValueError as exc:
            raise PluginError(f"{status.label} gives an invalid spec for '{backbone_id}': {exc}: "
                              f"fix the plugin's resolve(), then run 'scan backbones check {backbone_id}'") from None
        return _with_provider(spec, ep.name)

    def _unknown_message(self, backbone_id: str) -> str:
        if backbone_id in self._dropped:
            label, why = self._dropped[backbone_id]
            return f"backbone '{backbone_id}' was dropped from {label}: {why} (fix the plugin; 'scan plugins' lists what was dropped)"
        close = difflib.get_close_matches(backbone_id, list(self._specs), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'scan backbones' to list them"
        off = self._off_providers()
        if off:
            hint += f"; {'; '.join(off)}"
        return f"unknown backbone '{backbone_id}': {hint}"

    def _off_providers(self) -> list[str]:
        """Hints about providers that were not loaded: one of them may give the id."""
        groups: dict[str, list[str]] = {}
        for ep in self._eps:
            status, _ = self._load(ep)
            if status.disabled or status.error:
                groups.setdefault(status.disabled or "failed", []).append(
                    status.name if status.builtin else f"{status.name} ({status.distribution})")
        out = []
        for reason, names in groups.items():
            if ENV_DISABLE in reason:
                out.append(f"providers disabled by {ENV_DISABLE}: {', '.join(names)} "
                           f"(remove the one that provides it from {ENV_DISABLE})")
            elif ENV_ALLOW in reason:
                out.append(f"providers not in {ENV_ALLOW}: {', '.join(names)} (add the one that provides it to {ENV_ALLOW})")
            else:
                out.append(f"providers that failed to load: {', '.join(names)} ('scan plugins' shows why)")
        return out

    def require(self, backbone_id: str, *, provider: str = "", distribution: str = "", version: str = "",
                needed_by: str = "") -> BackboneSpec:
        """``get`` for an id recorded by a run or a model file, with a message that says what to
        install or enable when it is missing (the recorded provider, package and version)."""
        try:
            spec = self.get(backbone_id)
        except UnknownBackbone:
            pass
        else:
            if provider and spec.provider != provider:
                _warn(f"{needed_by or 'this model'} was trained with backbone '{backbone_id}' from provider "
                      f"'{provider}' ({distribution} {version}); it now comes from provider '{spec.provider}'")
            return spec
        who = needed_by or "this run"
        if not provider:  # recorded by an older scan_cli: only the id is known
            off = self._off_providers()
            raise ScanError(f"{who} needs backbone '{backbone_id}', which no enabled provider gives: install the plugin "
                            f"it was trained with ('scan plugins' lists what is installed)" + (f"; {'; '.join(off)}" if off else ""))
        what = f"backbone '{backbone_id}' from provider '{provider}' ({distribution or 'unknown package'} {version})".rstrip()
        status = self.status_of(provider)
        pin = f"'{distribution}=={version}'" if distribution and version and version != "unknown" else (distribution or "the plugin that provides it")
        if status is None:
            raise ScanError(f"{who} needs {what}, which is not installed: pip install {pin}")
        if status.disabled:
            raise ScanError(f"{who} needs {what}, which is {status.disabled}: {_enable_fix(status)}")
        if not status.ok:
            raise ScanError(f"{who} needs {what}, which failed to load ({status.error}): fix or reinstall it "
                            f"(pip install {pin})")
        raise ScanError(f"{who} needs {what}; the installed {status.distribution} {status.version} no longer provides it: "
                        f"pip install {pin}")

    def status_of(self, provider_name: str) -> ProviderStatus | None:
        for ep in self._eps:
            if ep.name == provider_name:
                return self._load(ep)[0]
        return None

    def provider(self, provider_name: str) -> Provider | None:
        """The loaded ``Provider`` object (None when missing, disabled or broken)."""
        for ep in self._eps:
            if ep.name == provider_name:
                return self._load(ep)[1]
        return None

    def provider_of(self, spec: BackboneSpec) -> ProviderStatus:
        for status, _ in self._loaded.values():
            if status.name == spec.provider:
                return status
        raise KeyError(spec.provider)

    def label_of(self, spec: BackboneSpec) -> str:
        try:
            return self.provider_of(spec).label
        except KeyError:
            return f"provider '{spec.provider or '?'}'"


def provider_label(spec: BackboneSpec) -> str:
    """How messages name the provider of ``spec``, e.g. "plugin 'x' (scan-x 1.0)"."""
    try:
        return default_registry().label_of(spec)
    except Exception:  # a label must never be the error
        return f"provider '{spec.provider or '?'}'"


def _enable_fix(status: ProviderStatus) -> str:
    if ENV_DISABLE in status.disabled:
        return f"remove '{status.name}' from {ENV_DISABLE}"
    return f"add '{status.name}' to {ENV_ALLOW}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _with_provider(spec: BackboneSpec, name: str) -> BackboneSpec:
    return replace(spec, provider=name)


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _dist_version(ep) -> str:
    dist = getattr(ep, "dist", None)
    version = getattr(dist, "version", None) if dist is not None else None
    if version:
        return str(version)
    try:
        return metadata.version(_dist_name(ep))
    except metadata.PackageNotFoundError:
        return "unknown"


def _warn(message: str) -> None:
    log.warning(message)


_DEFAULT: tuple[tuple, Registry] | None = None


def default_registry() -> Registry:
    """The process-wide registry; rebuilt when the control variables change."""
    global _DEFAULT
    key = tuple(os.environ.get(v, "") for v in (ENV_DISABLE, ENV_ALLOW, ENV_STRICT))
    if _DEFAULT is None or _DEFAULT[0] != key:
        _DEFAULT = (key, Registry())
    return _DEFAULT[1]
