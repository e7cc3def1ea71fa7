"""The held-out membership a run records: which examples were validation (and which training) when
`scan fit` ran, so every later command rebuilds validation from the record, not from a rule
re-applied to data that may have changed since.

Keys are stable per example:
* image files: the path relative to the data root (stored absolute) plus a hash of the file's
  bytes; a validation file is matched by its path, and counted as changed when its bytes differ;
* `datasets` rows: a fingerprint of the row's image (its bytes, else its path); row numbers move
  when rows are added or removed, content does not;
* streamed splits: the fingerprints of the validation examples, read once (undecoded) when fit
  records them; the content-hash rule (`holdout.in_stream_holdout`) keeps training examples out of
  validation, the fingerprints keep out examples added since (`StreamingImages.members`, counted
  as they stream by).

`holdout.json` in the run folder (written atomically at fit) holds the validation keys, a compact
set of 64-bit hashes of the training keys (to tell "added since" from "trained on") and a digest
of the validation membership, which also names the exit-outputs cache (`runs.Run.outputs_cache`).
The artifact header only carries the data root and that digest (`DataSplits.record()`).
numpy is imported inside functions; nothing here imports torch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

from ..errors import ScanError

log = logging.getLogger(__name__)

MEMBERSHIP_FILE = "holdout.json"
FORMAT = 1
# below this share of the recorded validation still present and unchanged, a command refuses:
# the promise was measured on the rest, and too much of it is gone to stand for it
FLOOR = 0.9
NAMED = 3  # how many missing or changed examples a message names
FILE_KEY = "path relative to the data root + blake2b-96 of the file"
ROW_KEY = "blake2b-96 of the row's image (bytes, else path)"
STREAM_KEY = "blake2b-96 of the streamed image (bytes, else path)"


def content_hash(path) -> str:
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def example_key(value) -> bytes:
    """Bytes identifying an image value: the streamed hold-out hash and row fingerprints use them."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        return str(value.get("path")).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        return str(value).encode()
    try:
        from PIL import Image

        if isinstance(value, Image.Image):
            return value.tobytes()
    except Exception:  # pragma: no cover
        pass
    import numpy as np

    return np.asarray(value).tobytes()


def row_fingerprint(value) -> str:
    return hashlib.blake2b(example_key(value), digest_size=12).hexdigest()


def digest(pairs) -> str:
    """The membership digest: order-free, over (key, hash) pairs."""
    h = hashlib.blake2b(digest_size=8)
    for key, value in sorted(pairs):
        h.update(f"{key}\0{value}\n".encode())
    return h.hexdigest()


def data_root(spec) -> str:
    """Where `--data` points, absolute (a path) or as given (a Hub id, digits)."""
    text = None if spec is None else str(spec).strip()
    if not text or text.lower() == "digits":
        return "digits"
    path = os.path.expanduser(text)
    if os.path.exists(path) or any(c in text for c in "*?[") or text.startswith((".", "/", "~")):
        return os.path.abspath(path)
    return text


def _rel(path, root: str) -> str:
    return Path(os.path.abspath(path)).relative_to(root).as_posix() if root else str(path)


def _rows(dataset):
    """(row number, fingerprint) of every item of an `HFImages`, read in batches, undecoded."""
    rows = [int(r) for r in dataset.indices]
    if not rows:
        return []
    out, step = [], 1024
    for start in range(0, len(rows), step):
        chunk = dataset.hf.select(rows[start:start + step])[dataset.image_column]
        out += [(r, row_fingerprint(v)) for r, v in zip(rows[start:start + step], chunk)]
    return out


def _is_files(dataset) -> bool:  # `FileImages` (duck-typed: dataset.py imports this module)
    return hasattr(dataset, "paths") and hasattr(dataset, "labels")


def _is_rows(dataset) -> bool:  # `HFImages`
    return hasattr(dataset, "hf") and hasattr(dataset, "indices") and hasattr(dataset, "image_column")


def _is_stream(dataset) -> bool:  # `StreamingImages`
    return hasattr(dataset, "members") and hasattr(dataset, "values")


def _stream_entries(splits) -> tuple:
    """([(name, fingerprint)] of a streamed validation, training examples counted) in one undecoded
    pass: held out of train, the pass reads train once and sorts by the hold-out hash."""
    import copy

    val, train, v = [], 0, splits.val
    held = splits.val_from_train and v.holdout is not None
    every = copy.copy(v)
    if held:
        every.holdout = None
    seen = set()
    for value in every.values():
        if held and not v._in_side(value):
            train += 1
            continue
        fp = row_fingerprint(value)
        if fp not in seen:
            seen.add(fp)
            path = value.get("path") if isinstance(value, dict) else None
            val.append((str(path) if path else fp, fp))
    return val, train


def _subset(dataset, **fields):
    """A copy of a map-style split with other items (its transform and source kept)."""
    import copy

    import numpy as np

    other = copy.copy(dataset)
    for name, values in fields.items():
        setattr(other, name, np.asarray(values, dtype=np.int64) if name in ("indices", "labels") else values)
    return other


def entries(dataset, root: str):
    """[(key, hash)] of a map-style split, and how they are matched ("path" or "content");
    None for a split without stable keys (in-memory arrays, streams)."""
    if _is_files(dataset):
        return [(_rel(p, root), content_hash(p)) for p in dataset.paths], "path"
    if _is_rows(dataset):
        return [(f"row {r}", fp) for r, fp in _rows(dataset)], "content"
    return None


def _hash_set(keys) -> str:
    import numpy as np

    from .holdout import hash64

    values = np.unique(np.array([hash64("scan-member", k) for k in keys], dtype=np.uint64))
    return base64.b64encode(values.astype("<u8").tobytes()).decode()


def _in_hash_set(encoded: str):
    import numpy as np

    from .holdout import hash64

    values = np.frombuffer(base64.b64decode(encoded or ""), dtype="<u8")
    return lambda key: bool(len(values)) and values[min(np.searchsorted(values, hash64("scan-member", key)),
                                                        len(values) - 1)] == hash64("scan-member", key)


def build(splits, root: str):
    """The membership document of fit's splits, or None when validation has no stable keys."""
    if splits.val is None:
        return None
    if _is_stream(splits.val):
        val, count = _stream_entries(splits)
        return {"format": FORMAT, "root": root, "match": "stream", "key": STREAM_KEY, "digest": digest(val),
                "val": [list(e) for e in val], "train": {"count": count, "hashes": ""}}
    found = entries(splits.val, root)
    if found is None:
        return None
    val, match = found
    train = []
    if splits.val_from_train and splits.train is not None:
        train = ([_rel(p, root) for p in splits.train.paths] if _is_files(splits.train)
                 else [fp for _, fp in _rows(splits.train)])
    return {"format": FORMAT, "root": root, "match": match, "key": FILE_KEY if match == "path" else ROW_KEY,
            "digest": digest(val), "val": [list(e) for e in val],
            "train": {"count": len(train), "hashes": _hash_set(train)}}


def save(doc: dict, folder) -> None:
    from .. import files

    text = json.dumps(doc, separators=(",", ":"))
    files.atomic_write(Path(folder) / MEMBERSHIP_FILE, lambda tmp: Path(tmp).write_text(text))


def load(folder) -> dict:
    path = Path(folder) / MEMBERSHIP_FILE
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("val"), list):
            raise ValueError("not a membership record")
    except (OSError, ValueError) as exc:
        raise ScanError(f"{path} (the validation 'scan fit' held out) is missing or unreadable "
                        f"({type(exc).__name__}): restore it from a copy of the run, or re-run 'scan fit'") from None
    return doc


def _names(keys) -> str:
    keys = list(keys)
    return ", ".join(keys[:NAMED]) + (", ..." if len(keys) > NAMED else "")


def rebuild(splits, doc: dict, held_from_train: bool):
    """`splits` with validation rebuilt from the record `doc`: exactly the recorded examples still
    present and unchanged; training examples and examples added since never enter it. Says how many
    were added, names the missing and changed ones, refuses below FLOOR. Sets `splits.val_digest`.
    A streamed validation is limited to the recorded fingerprints; it is counted as it streams by."""
    root = doc.get("root") or ""
    if doc.get("match") == "stream":
        if not _is_stream(splits.val):
            raise ScanError("the run recorded a streamed split, but the data is now another kind of source: restore "
                            "the data, or pass --data with the data to use")
        splits.val.members = frozenset(h for _, h in doc["val"])
        splits.val_digest = doc["digest"]
        return splits
    parts = [d for d in ((splits.train if held_from_train else None), splits.val) if d is not None]
    recorded = {k: h for k, h in doc["val"]}
    trained = _in_hash_set((doc.get("train") or {}).get("hashes"))
    kept, rest, changed, added, seen = [], [], [], 0, set()
    if doc.get("match") == "path":
        for d in parts:
            if not _is_files(d):
                raise ScanError("the run recorded image files, but the data is now another kind of source: restore "
                                "the data, or pass --data with the data to use")
            for path, label in zip(d.paths, d.labels.tolist()):
                key = _rel(path, root)
                if key in recorded and key not in seen:
                    seen.add(key)
                    if content_hash(path) == recorded[key]:
                        kept.append((key, path, label))
                    else:  # re-encoded or replaced: not the example fit held out
                        changed.append(key)
                        rest.append((path, label))
                    continue
                added += not trained(key)
                rest.append((path, label))
        by_hash = None
    else:
        by_hash = {h: k for k, h in doc["val"]}
        for d in parts:
            if not _is_rows(d):
                raise ScanError("the run recorded rows of a `datasets` source, but the data is now another kind of "
                                "source: restore the data, or pass --data with the data to use")
            for (row, fp), label in zip(_rows(d), d.labels.tolist()):
                if fp in by_hash and fp not in seen:
                    seen.add(fp)
                    kept.append((by_hash[fp], (d, row), label))
                    continue
                added += not trained(fp)
                rest.append(((d, row), label))
    present = {k for k, _, _ in kept}
    missing = [k for k in recorded if k not in present and k not in set(changed)]
    total = len(recorded)
    if total and len(kept) < FLOOR * total:
        raise ScanError(
            f"only {len(kept)} of the {total} validation examples 'scan fit' held out are still in {root} unchanged "
            f"({len(missing)} missing{', e.g. ' + _names(missing) if missing else ''}; {len(changed)} changed"
            f"{', e.g. ' + _names(changed) if changed else ''}), below the {FLOOR:.0%} floor: restore "
            "the data as it was, or calibrate on other labelled data with --data DIR")
    if missing or changed:
        log.warning(f"validation: {len(missing)} of the {total} examples 'scan fit' held out are missing"
                    f"{' (e.g. ' + _names(missing) + ')' if missing else ''} and {len(changed)} changed"
                    f"{' (e.g. ' + _names(changed) + ')' if changed else ''}: "
                    f"calibrating on the {len(kept)} still there")
    if added:
        log.warning(f"{added} example(s) added to the data since 'scan fit' are left out of validation "
                    "(validation is what fit held out)")
    if by_hash is None:
        splits.val = _subset(splits.val, paths=[str(p) for _, p, _ in kept], labels=[lab for *_, lab in kept])
        if splits.train is not None:
            splits.train = _subset(splits.train, paths=[str(p) for p, _ in rest], labels=[lab for _, lab in rest])
    else:  # held out of train, both sides read the same source; else validation is its own split
        src = parts[-1]
        splits.val = _subset(splits.val, hf=src.hf, indices=[r for _, (_, r), _ in kept],
                             labels=[lab for *_, lab in kept])
        if splits.train is not None and held_from_train:
            splits.train = _subset(splits.train, hf=src.hf, indices=[r for (_, r), _ in rest],
                                   labels=[lab for _, lab in rest])
    splits.split_sizes["val"] = len(splits.val)
    splits.val_digest = digest((k, recorded[k]) for k in present)
    return splits


def data_digest(dataset, root: str) -> str | None:
    """The digest of every example of a labelled set (a map-style split or a concatenation of
    them): what `calibrate --data` records about the data it calibrated on; None without stable keys."""
    pairs = []
    for i, part in enumerate(getattr(dataset, "datasets", None) or [dataset]):
        found = entries(part, root)
        if found is None:
            return None
        pairs += [(f"{i}:{k}", h) for k, h in found[0]]
    return digest(pairs)
