"""The hold-out rules: which examples become validation (and, for digits, test).

Every source in this package holds examples out through these functions; nothing else does.

* Map-style hold-out (`holdout`): a source without its own validation split gives `val_fraction`
  of train, seeded and stratified: each class gives its share, and which examples go is decided
  by a hash of `seed` and the example's key (its relative path for folders, its row number for
  `datasets`), so it does not depend on numpy's RNG.
* Streamed hold-out (`in_stream_holdout`): an example is validation when the seeded hash of its
  image bytes (or path) falls in the lowest `val_fraction` of the hash range. Unlike "every k-th
  example" this does not depend on the order examples arrive in, or on how the stream is split
  over DataLoader workers and DDP ranks, so train and validation never overlap and stay the same
  across runs and machine counts.
* Digits have a fixed split (see `digits.py`), built from the same stratified pick.

A run records which rule held validation out, of what key, with which fraction and seed
(`DataSplits.record()`, `rule()` here), so `splits.run_data` rebuilds exactly the same validation
set for every later command and refuses when the data no longer splits that way. numpy is
imported inside functions.
"""

from __future__ import annotations

import hashlib

from ..errors import UsageError


MAP_RULE = "stratified-hash"  # `holdout`: per class, the smallest hash(seed, key) go to validation
STREAM_RULE = "content-hash"  # `in_stream_holdout`: hash(seed, image bytes) below fraction * 2**64


def rule(name: str, key: str, fraction: float, seed: int) -> dict:
    """How validation was held out of train, as a run records it (`DataSplits.val_rule`)."""
    return {"from": "train", "rule": name, "key": key, "fraction": float(fraction), "seed": int(seed)}


def hash64(salt: str, key) -> int:
    data = key if isinstance(key, (bytes, bytearray, memoryview)) else str(key).encode()
    return int.from_bytes(hashlib.blake2b(bytes(data), digest_size=8, key=salt.encode()[:64]).digest(), "little")


def stratified_pick(labels, keys, count: int, salt: str):
    """Boolean mask choosing `count` examples, each class contributing in proportion to its size
    (largest remainders get the rounding; a class always keeps at least one unpicked example);
    within a class the examples with the smallest hash(salt, key) are picked."""
    import numpy as np

    labels = np.asarray(labels)
    n = len(labels)
    picked = np.zeros(n, dtype=bool)
    if n == 0 or count <= 0:
        return picked
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (count / n)
    quota = np.floor(exact).astype(np.int64)
    rest = int(count - quota.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(counts)), -(exact - quota)))
        quota[order[:rest]] += 1
    quota = np.minimum(quota, np.maximum(counts - 1, 0))
    hashes = np.array([hash64(salt, k) for k in keys], dtype=np.uint64)
    order = np.lexsort((hashes, inverse))  # grouped by class, hash order inside a class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    picked[rank < quota[inverse]] = True
    return picked


def holdout(labels, keys, fraction: float, seed: int, what: str = "val"):
    """(keep_indices, held_out_indices) holding out round(fraction * n) examples, stratified."""
    import numpy as np

    if not 0.0 < float(fraction) < 1.0:
        raise UsageError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(labels)
    count = max(1, int(round(fraction * n))) if n >= 2 else 0
    mask = stratified_pick(labels, keys, count, f"scan-{what}-{seed}")
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def in_stream_holdout(key: bytes, fraction: float, seed: int) -> bool:
    """True when a streamed example (identified by `key`, its image bytes or path) is validation."""
    return hash64(f"scan-stream-val-{seed}", key) < int(fraction * 2**64)
