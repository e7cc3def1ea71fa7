"""The plugin contract's public import path (contract v1): ``from scan_cli.contract import ...``.

Its home is ``scan_cli.backbones.contract``; this name stays so that published plugins keep working.
Importing it does not import torch (``StagedBackbone`` is created on first access, as there)."""

from .backbones import contract as _home
from .backbones.contract import (  # noqa: F401
    CONTRACT_VERSION, ENTRY_POINT_GROUP, SUPPORTED_CONTRACT_VERSIONS, BackboneSpec, Provider, SplitPoint,
    default_splits, validate_spec,
)


def __getattr__(name):
    return getattr(_home, name)
