"""Hugging Face Hub dataset ids: aliases, telling ids from paths, failing fast without a Hub.

A short name ('imagenet', 'cifar10', 'cifar100', 'mnist', 'fashion-mnist': DATASET_ALIASES) stands for its Hub id. A missing
local path that clearly is a path (starts with `.`, `/` or `~`, has two or more `/`, a file suffix
or a backslash) is reported as such instead of being looked up on the Hub. Without a reachable Hub
(HF_HUB_OFFLINE=1, or a 3-second connection probe fails) a dataset is only taken from the local
cache, and a missing one fails at once with one line instead of five retries; `check_hub` gives
that line without importing `datasets` (for `scan fit`'s checks before torch). What the Hub returns
is a `datasets` source (see `hf.py`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ScanError
from .images import is_image_file
from .hf import COLUMNAR_SUFFIXES

DATASET_ALIASES = {
    "imagenet": "ILSVRC/imagenet-1k",
    "imagenet-1k": "ILSVRC/imagenet-1k",
    "imagenet1k": "ILSVRC/imagenet-1k",
    "cifar10": "uoft-cs/cifar10",
    "cifar-10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "cifar-100": "uoft-cs/cifar100",
    "mnist": "ylecun/mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "fashionmnist": "zalando-datasets/fashion_mnist",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def resolve_alias(name: str) -> str:
    """Hub dataset id for a short name ('imagenet', 'cifar10', 'cifar100'); other names unchanged."""
    return DATASET_ALIASES.get(name.strip().lower(), name.strip())


def looks_like_path(spec: str) -> bool:
    """True when `spec` cannot be a Hub dataset id and must mean a local path."""
    s = spec.strip()
    if s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1:
        return True
    if Path(s).suffix.lower() in COLUMNAR_SUFFIXES or is_image_file(s):
        return True
    return not _HUB_ID.match(s)


_REACHABLE: dict = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the Hub endpoint (or the HTTPS proxy) open within `timeout`?"""
    import socket
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    url = urlsplit(endpoint)
    target = (url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY") or os.environ.get("all_proxy")
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    if proxy and not any(h.strip() and target[0].endswith(h.strip().lstrip(".")) for h in no_proxy.split(",")):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target = (p.hostname or target[0], p.port or 80)
    if target not in _REACHABLE:
        try:
            with socket.create_connection(target, timeout=timeout):
                _REACHABLE[target] = True
        except OSError:
            _REACHABLE[target] = False
    return _REACHABLE[target]


class _ForcedOffline:
    """Temporarily switch `datasets` and `huggingface_hub` to offline mode (cache only)."""

    def __init__(self, active: bool):
        self.active = active
        self.saved = []

    def __enter__(self):
        if self.active:
            import datasets.config
            from huggingface_hub import constants

            for mod, attr in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (constants, "HF_HUB_OFFLINE")):
                if hasattr(mod, attr):
                    self.saved.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, True)
        return self

    def __exit__(self, *exc):
        for mod, attr, value in reversed(self.saved):
            setattr(mod, attr, value)
        self.saved = []
        return False


def _offline_env() -> bool:
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def _not_offline(repo: str) -> ScanError:
    return ScanError(f"dataset '{repo}' is not available offline: download it first or pass a local folder/--data path")


def hub_offline() -> bool:
    """`datasets.config.HF_HUB_OFFLINE`'s rule (HF_DATASETS_OFFLINE, else HF_HUB_OFFLINE), without
    importing `datasets` (about 1 s)."""
    value = os.environ.get("HF_DATASETS_OFFLINE")
    if value is None:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return value.upper() in ("1", "ON", "YES", "TRUE")


def maybe_cached(repo: str) -> bool:
    """Whether `datasets` may find `repo` in a cache: its prepared copy (HF_DATASETS_CACHE/ns___name)
    or Hub files (HF_HUB_CACHE/datasets--ns--name). False means an offline load must fail."""
    from huggingface_hub import constants

    home = os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))
    prepared = Path(os.path.expanduser(os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets")))
    hub = Path(constants.HF_HUB_CACHE)
    return (prepared / "___".join(repo.split("/"))).is_dir() or (hub / f"datasets--{repo.replace('/', '--')}").is_dir()


def check_hub(spec: str) -> None:
    """`load_hub`'s offline failure without importing `datasets`: offline (or the Hub unreachable)
    and no cached copy. Anything it cannot decide here is left to `load_hub`."""
    repo = resolve_alias(spec)
    if maybe_cached(repo):
        return
    if hub_offline() or not _hub_reachable():
        raise _not_offline(repo)


def load_hub(spec: str, streaming: bool):
    """datasets.load_dataset(id) with one-line errors; fails at once when the Hub is unreachable."""
    import datasets

    repo = resolve_alias(spec)
    offline = _offline_env()
    forced = not offline and not _hub_reachable()
    no_hub = offline or forced
    try:
        with _ForcedOffline(forced):
            return repo, datasets.load_dataset(repo, streaming=streaming)
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - everything from the hub becomes one line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if no_hub:
            raise _not_offline(repo) from None
        if "gated" in str(exc).lower():
            raise ScanError(
                f"dataset '{repo}' is gated: accept its terms on huggingface.co and log in (`hf auth login`)"
            ) from None
        if isinstance(exc, FileNotFoundError):
            raise ScanError(
                f"no local folder or file '{spec}' and no Hugging Face dataset '{repo}': check the name or path"
            ) from None
        if isinstance(exc, (ConnectionError, OSError)):
            raise ScanError(f"cannot load dataset '{repo}' from the Hub ({text}): check the network or pass a local path") from None
        raise
