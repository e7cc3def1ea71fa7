"""``model.safetensors``: the whole SCAN model plus JSON metadata. Nothing is ever unpickled.

Metadata keys (all JSON strings): format, format_version, scan_cli_version, backbone
({id, provider, distribution, version, declared_split_points}), split_points, head, num_classes,
classes, data_config, input_size, and optionally recipe, calibration, metrics.

Nothing in the metadata chooses code or files: the backbone is built with ``build(num_classes,
pretrained=False)`` only (a ``build_kwargs`` entry written by old or edited files is ignored), and
head settings must be the known ``HeadConfig`` keys with plain values.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import __version__
from . import files
from .errors import ScanError

log = logging.getLogger("scan_cli")
_WARNED: set[str] = set()  # files whose ignored build_kwargs were reported (once per process)
FORMAT = "scan-model"
FORMAT_VERSION = 1
OPTIONAL_KEYS = ("recipe", "calibration", "metrics")


@dataclass
class ArtifactInfo:
    """Everything about a SCAN model except its tensors."""

    backbone_id: str
    provider: str
    split_points: list[dict]
    head: dict
    classes: list[str]
    data_config: dict
    input_size: int
    provider_distribution: str = ""
    provider_version: str = ""
    declared_split_points: Optional[list[dict]] = None  # what the provider declared at training time
    recipe: Optional[dict] = None
    calibration: Optional[dict] = None
    metrics: Optional[dict] = None
    scan_cli_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "scan_cli_version": __version__,
            "backbone": json.dumps({"id": self.backbone_id, "provider": self.provider,
                                    "distribution": self.provider_distribution, "version": self.provider_version,
                                    "declared_split_points": self.declared_split_points}),
            "split_points": json.dumps(self.split_points),
            "head": json.dumps(self.head),
            "num_classes": str(self.num_classes),
            "classes": json.dumps(self.classes),
            "data_config": json.dumps(self.data_config),
            "input_size": str(self.input_size),
        }
        for key in OPTIONAL_KEYS:
            if getattr(self, key) is not None:
                meta[key] = json.dumps(finite(getattr(self, key)), allow_nan=False)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "ArtifactInfo":
        if meta.get("format") != FORMAT:
            raise ScanError(f"{path} is not a scan model (no '{FORMAT}' metadata): point --run at a folder written by 'scan fit'")
        version = int(meta.get("format_version", "0"))
        if version != FORMAT_VERSION:
            raise ScanError(
                f"{path} has artifact format {version}, this scan_cli {__version__} reads format {FORMAT_VERSION}: "
                f"install the scan_cli version that wrote it ({meta.get('scan_cli_version', '?')}) or retrain"
            )
        try:
            backbone = json.loads(meta["backbone"])
            if backbone.get("build_kwargs") and str(path) not in _WARNED:  # never passed on: a model file
                _WARNED.add(str(path))                                   # must not choose what gets loaded
                log.warning(f"{path}: build_kwargs {sorted(backbone['build_kwargs'])} in its metadata are ignored "
                            f"(scan builds backbones with num_classes and pretrained=False only)")
            return cls(
                backbone_id=backbone["id"], provider=backbone["provider"],
                provider_distribution=backbone.get("distribution", ""), provider_version=backbone.get("version", ""),
                declared_split_points=backbone.get("declared_split_points"),
                split_points=json.loads(meta["split_points"]), head=json.loads(meta["head"]),
                classes=json.loads(meta["classes"]), data_config=json.loads(meta["data_config"]),
                input_size=int(meta["input_size"]), scan_cli_version=meta.get("scan_cli_version", ""),
                **{k: json.loads(meta[k]) for k in OPTIONAL_KEYS if k in meta},
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ScanError(f"{path} has damaged metadata ({exc}): re-run 'scan fit' to write it again") from None


def finite(obj):
    """The same structure with inf/nan floats as None, so that it is strict JSON
    (a shallow exit whose threshold is None never fires)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return finite(obj.to_dict())
    return obj


def artifact_fingerprint(model_file: Path) -> str:
    """sha256 of the tensors part of the artifact: calibration metadata changes don't invalidate caches."""
    import struct

    with open(model_file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def save(model, info: ArtifactInfo, path: Path) -> None:
    from safetensors.torch import save_model

    model_to_save = getattr(model, "module", model)  # unwrap DDP
    files.atomic_write(Path(path), lambda tmp: save_model(model_to_save, str(tmp), metadata=info.to_metadata()))


def read_info(path: Path) -> ArtifactInfo:
    """Read only the metadata (fast: the JSON header, not the tensors; imports no torch)."""
    path = Path(path)
    header, _ = _checked_header(path)
    return ArtifactInfo.from_metadata(header.get("__metadata__") or {}, path)


def _checked_header(path: Path) -> tuple[dict, int]:
    """``_read_header`` with one-line errors for a missing or unreadable file."""
    if not path.is_file():
        raise ScanError(f"no model at {path}: run 'scan fit' first or pass --run DIR")
    try:
        return _read_header(path)
    except (OSError, ValueError) as exc:
        raise ScanError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}): re-run 'scan fit'") from None


MAX_HEADER_BYTES = 100 * 1024 * 1024  # what safetensors itself refuses


def _read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the offset where its tensor bytes start."""
    import struct

    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("file too short for a safetensors header")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"header of {size} bytes (more than {MAX_HEADER_BYTES})")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + size


def update_metadata(path: Path, **fields: Any) -> ArtifactInfo:
    """Rewrite the artifact with new optional metadata (e.g. calibration), atomically.

    Only the JSON header changes: the tensor bytes are copied as they are (the header's offsets are
    relative to them), so no tensor is decoded and torch is not needed."""
    import shutil
    import struct

    path = Path(path)
    header, start = _checked_header(path)  # read right before the rewrite: nothing written meanwhile is lost
    info = ArtifactInfo.from_metadata(header.get("__metadata__") or {}, path)
    for key, value in fields.items():
        if key not in OPTIONAL_KEYS:
            raise KeyError(key)
        setattr(info, key, value)
    header["__metadata__"] = info.to_metadata()
    data = json.dumps(header, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)  # keep the tensor bytes 8-byte aligned, as safetensors writes them

    def write(tmp):
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", len(data)))
            dst.write(data)
            src.seek(start)
            shutil.copyfileobj(src, dst, 1 << 20)

    files.atomic_write(path, write)
    return info


def load(path: Path, registry=None, device="cpu", info: Optional[ArtifactInfo] = None, shapes_cache=None):
    """Rebuild the model from its backbone provider and load the tensors. Returns (model, info).
    ``info``: the header already read (``runs.Run`` reads it once per command). ``shapes_cache``: the
    run's cache file for the build's dry-run shapes (``runs.Run.shapes_cache``).

    Refuses (naming the provider and the package version it was trained with) when the backbone no
    longer has the model's exits or gives other shapes there; warns when the provider now declares
    other default split points (the model keeps its own exits, which still fit)."""
    from safetensors.torch import load_model

    from .backbones.verify import SplitPointError, measured_reduction
    from .model import build_scan_model
    from .backbones.registry import default_registry, provider_label

    path = Path(path)
    info = info if info is not None else read_info(path)
    registry = registry or default_registry()
    spec = registry.require(info.backbone_id, provider=info.provider, distribution=info.provider_distribution,
                            version=info.provider_version, needed_by=str(path))
    head = head_config(info.head, path)
    modules = [s["module"] for s in info.split_points]
    fix = _trained_with(info)
    try:
        model = build_scan_model(spec, num_classes=info.num_classes, head=head, split_modules=modules,
                                 input_size=info.input_size, shapes_cache=shapes_cache)
    except SplitPointError as exc:  # the provider's backbone changed under the artifact
        raise ScanError(f"{path} has exits after {', '.join(modules)}, which the installed backbone no longer offers "
                        f"({exc}): {fix}") from None
    shapes = model.shapes  # the build's dry run at info.input_size
    for sp in info.split_points:
        c, h, _ = shapes[sp["module"]]
        r = measured_reduction(info.input_size, h)
        if (c, r) != (sp["channels"], sp["reduction"]):
            raise ScanError(
                f"backbone '{info.backbone_id}' from {provider_label(spec)} now gives {c} channels at 1/{r} after "
                f"{sp['module']}, {path} expects {sp['channels']} at 1/{sp['reduction']}: {fix}"
            )
    _warn_changed_split_points(path, info, spec)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:
        raise ScanError(f"{path} does not match backbone '{info.backbone_id}' ({str(exc).splitlines()[0]}): {fix}") from None
    if missing or unexpected:
        names = ", ".join((list(missing) + list(unexpected))[:3])
        raise ScanError(f"{path} does not match backbone '{info.backbone_id}' from {provider_label(spec)} "
                        f"(tensors differ: {names}): {fix}")
    model.to(device).eval()
    return model, info


def head_config(raw, path: Path):
    """``HeadConfig`` from metadata: known keys with plain values only, else a one-line error."""
    from dataclasses import fields

    from .model import HeadConfig

    if not isinstance(raw, dict):
        raise ScanError(f"{path} has damaged head settings in its metadata (not a JSON object): "
                        f"re-run 'scan fit' to write it again")
    known = [f.name for f in fields(HeadConfig)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ScanError(f"{path} has unknown head setting(s) {', '.join(map(repr, unknown))} in its metadata "
                        f"(this scan_cli {__version__} knows {', '.join(known)}): install the scan_cli that wrote it or retrain")
    checks = {"width": (lambda v: v is None or _positive_int(v), "null or a positive int"),
              "attention": (lambda v: isinstance(v, bool), "true or false"),
              "attention_reduction": (_positive_int, "a positive int"),
              "attention_at": (lambda v: v in ("input", "reduced"), "input or reduced"),
              "narrow": (lambda v: isinstance(v, bool), "true or false")}
    for key, value in raw.items():
        ok, expected = checks.get(key, (lambda v: True, ""))
        if not ok(value):
            raise ScanError(f"{path} has an invalid head setting {key}={value!r} in its metadata ({expected}): "
                            f"re-run 'scan fit' to write it again")
    return HeadConfig(**raw)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _trained_with(info: ArtifactInfo) -> str:
    """The fix for a backbone that changed under a model file: the package version it was trained with."""
    dist, version = info.provider_distribution, info.provider_version
    if dist and version and version != "unknown":
        return f"pip install '{dist}=={version}' as used for training, or retrain"
    return f"install {dist or 'the provider'} as used for training, or retrain"


def _warn_changed_split_points(path: Path, info: ArtifactInfo, spec) -> None:
    """The provider declared other default split points when this model was trained."""
    then = info.declared_split_points
    if then is None:  # written before the declaration was recorded: the exits were the defaults unless --splits
        if (info.recipe or {}).get("splits"):
            return
        then = info.split_points
    then_modules = [s["module"] for s in then]
    now_modules = [s.module for s in spec.split_points]
    if then_modules == now_modules:
        return
    from .backbones.registry import provider_label

    log.warning(f"{path}: {provider_label(spec)} now declares split points {', '.join(now_modules)} for "
                f"'{info.backbone_id}', it declared {', '.join(then_modules)} when this model was trained "
                f"({info.provider_distribution} {info.provider_version}); the model keeps its exits after "
                f"{', '.join(s['module'] for s in info.split_points)}, which still fit the backbone: "
                f"retrain to use the new split points")


def info_for(model, spec, registry, *, classes, data_config, input_size, recipe=None) -> ArtifactInfo:
    """Describe a freshly built ScanModel for saving (built at ``input_size``: its own dry-run shapes)."""
    status = registry.provider_of(spec)
    shapes = model.shapes
    splits = [{"module": m, "channels": shapes[m][0], "reduction": max(1, round(input_size / shapes[m][1]))}
              for m in model.split_modules]
    declared = [sp.to_dict() for sp in spec.split_points]
    return ArtifactInfo(
        backbone_id=spec.id, provider=spec.provider, provider_distribution=status.distribution,
        provider_version=status.version, split_points=splits, head=model.head_config.to_dict(),
        classes=list(classes), data_config=data_config, input_size=input_size,
        declared_split_points=declared, recipe=recipe,
    )
