"""timm and torchvision without torch._dynamo: `load_timm`, `load_torchvision`.

Importing timm imports torch's whole compiler stack (torch._dynamo: about 1.5 s of a 2 s
``import timm`` on a quiet 2-core machine) for nothing a forward pass uses, at two places:
torchvision's ``ops/roi_align.py`` imports ``torch._dynamo.utils.is_compile_supported`` (called
only when roi_align runs), and timm decorates a few methods (NaFlexViT's) with
``torch.compiler.disable``, which imports torch._dynamo to wrap them.

``load_timm`` / ``load_torchvision`` import them once with both deferred, and nothing else
changed: while the import runs, ``torch._dynamo.utils`` is a stand-in whose attributes import the
real module on first use, and ``torch.compiler.disable`` returns a descriptor that is the real
``torch.compiler.disable(fn)`` from the first time the method is looked up (called, inspected or
traced). Both are gone when the import returns. torch._dynamo is then imported when something
needs it (roi_align, such a method, torch.compile), not before. Call them instead of scan's own
first ``import timm`` / ``import torchvision``; where either is imported already they just import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types

_DYNAMO_UTILS = "torch._dynamo.utils"


def load_timm():
    """``import timm`` (once per process) without importing torch._dynamo; returns the module."""
    if "timm" not in sys.modules:
        with _dynamo_deferred():
            import timm  # noqa: F401
    import timm

    return timm


def load_torchvision():
    """``import torchvision`` (once per process) without importing torch._dynamo; returns the module."""
    if "torchvision" not in sys.modules:
        with _dynamo_deferred():
            import torchvision  # noqa: F401
    import torchvision

    return torchvision


@contextlib.contextmanager
def _dynamo_deferred():
    if "torch._dynamo" in sys.modules or _DYNAMO_UTILS in sys.modules:  # nothing left to save
        yield
        return
    import torch

    compiler = torch.compiler
    stand_in = _DeferredModule(_DYNAMO_UTILS)
    stand_in.is_compile_supported = _is_compile_supported
    sys.modules[_DYNAMO_UTILS] = stand_in
    real_disable = compiler.__dict__.get("disable")
    if real_disable is not None:
        compiler.disable = _disable_on_use(real_disable)
    try:
        yield
    finally:
        if sys.modules.get(_DYNAMO_UTILS) is stand_in:
            del sys.modules[_DYNAMO_UTILS]
        if real_disable is not None:
            compiler.disable = real_disable


class _DeferredModule(types.ModuleType):
    """Stands in for ``torch._dynamo.utils`` during the import: any attribute is the real module's,
    imported on first use (the stand-in leaves ``sys.modules`` first)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get(_DYNAMO_UTILS) is self:
            del sys.modules[_DYNAMO_UTILS]
        return getattr(importlib.import_module(_DYNAMO_UTILS), name)


def _is_compile_supported(device_type):
    """``torch._dynamo.utils.is_compile_supported``, imported when first called."""
    return importlib.import_module(_DYNAMO_UTILS).is_compile_supported(device_type)


def _disable_on_use(real_disable):
    """``torch.compiler.disable`` for methods decorated while the import runs (what timm does): the
    real decorator is applied the first time the method is looked up."""

    @functools.wraps(real_disable)
    def disable(fn=None, *args, **kwargs):
        method = isinstance(fn, types.FunctionType) and "." in fn.__qualname__ and "<locals>" not in fn.__qualname__
        if not method:  # a decorator factory, a class, a module, a plain function: decorated now
            return real_disable(fn, *args, **kwargs)
        return _DisabledOnUse(real_disable, fn, args, kwargs)

    return disable


class _DisabledOnUse:
    """A method (defined in a class body) whose ``torch.compiler.disable`` wrapper is made the first
    time it is looked up on its class or an instance, which every call, inspection or trace does."""

    def __init__(self, real_disable, fn, args, kwargs):
        functools.update_wrapper(self, fn)
        self._make = functools.partial(real_disable, fn, *args, **kwargs)
        self._real = None

    def resolve(self):
        if self._real is None:
            self._real = self._make()
        return self._real

    def __get__(self, obj, objtype=None):
        return self.resolve().__get__(obj, objtype)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)
