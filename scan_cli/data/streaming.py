"""Streamed splits: a `datasets.IterableDataset` as a torch IterableDataset of (tensor, label).

Streaming (`--streaming`, Hub ids and parquet/arrow files; map-style sources ignore it) gives
splits of unknown length. Validation held out of a streamed train set uses the seeded content
hash of `holdout.in_stream_holdout`. Sharding: `make_loader` hands each DDP rank its part with
`datasets.distributed.split_dataset_by_node` (whole shards when the shard count divides the world
size, else every world_size-th example), and inside a rank `datasets` gives each DataLoader worker
its own shards (workers are capped at the shard count). Every example is read by exactly one
(rank, worker); ranks can differ by a few examples, so a DDP loop must tolerate uneven ends.
Streamed examples that do not decode are given as `dataset.Skipped` markers, which the loaders
leave out, count and name (as for map-style data). A run's streamed validation is also limited to
the examples fit held out (`members`, their fingerprints from `holdout.json`, `membership.py`):
examples added since are left out and counted, whatever side of the hash they fall on.

`StreamingImages` subclasses a torch class, so it is built on first use (PEP 562 `__getattr__`)
and this module does not import torch at module level; it still pickles by name.
"""

from __future__ import annotations

import copy
import logging
import os

from ..errors import ScanError
from .images import describe_error, draft_size
from .dataset import Skipped, value_to_pil
from .holdout import in_stream_holdout
from .membership import FLOOR, example_key, row_fingerprint

log = logging.getLogger(__name__)

STREAM_SHUFFLE_BUFFER = 10_000


def _example_name(value) -> str:
    """A streamed image's name for messages: its path, else a short hash of its bytes."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    import hashlib

    return f"streamed image {hashlib.blake2b(example_key(value), digest_size=6).hexdigest()}"


def _build_streaming_class():
    import torch.utils.data

    class StreamingImages(torch.utils.data.IterableDataset):
        """A streamed `datasets.IterableDataset` as a torch IterableDataset of (tensor, label).

        holdout=(fraction, seed, side): keep only the 'train' or 'val' side of the seeded
        content-hash hold-out (`holdout.in_stream_holdout`). `configured(...)` returns a copy set up for
        one epoch of one rank (make_loader calls it): optional buffered shuffle seeded by
        seed + epoch, then split_dataset_by_node for DDP; DataLoader workers get disjoint shards
        from `datasets` itself. members: fingerprints (`membership.row_fingerprint`) of the only
        examples to give (a run's recorded validation), or None; the others are counted and left out.
        """

        def __init__(self, hf_dataset, image_column, label_column, transform=None, holdout=None, label_map=None):
            super().__init__()
            self.hf = hf_dataset
            self.image_column = image_column
            self.label_column = label_column
            self.transform = transform
            self.holdout = holdout
            self.label_map = label_map
            self.shuffle = False
            self.seed = 0
            self.epoch = 0
            self.rank = 0
            self.world_size = 1
            self.shuffle_buffer = STREAM_SHUFFLE_BUFFER
            self.members = None

        @property
        def num_shards(self) -> int:
            return int(getattr(self.hf, "num_shards", 1) or 1)

        def configured(self, *, shuffle=False, seed=0, epoch=0, rank=0, world_size=1):
            other = copy.copy(self)
            other.shuffle, other.seed, other.epoch = bool(shuffle), int(seed), int(epoch)
            other.rank, other.world_size = int(rank), int(world_size)
            return other

        def values(self):
            """Every image value (undecoded) this split gives, in stream order, nothing decoded: what
            fit records as a streamed validation's membership."""
            for example in self.hf:
                labelled = self._labelled(example)
                if labelled is not None and (self.holdout is None or self._in_side(labelled[0])):
                    yield labelled[0]

        def _labelled(self, example):
            """(image value, class index) of one example, or None when it has no usable label."""
            label = example[self.label_column]
            if self.label_map is not None:
                label = self.label_map.get(label, -1)
            if label is None or int(label) < 0:
                return None
            return example[self.image_column], int(label)

        def _in_side(self, value) -> bool:
            fraction, seed, side = self.holdout
            is_val = in_stream_holdout(example_key(value), fraction, seed)
            return is_val if side == "val" else not is_val

        def __iter__(self):
            ds = self.hf
            if self.shuffle:
                ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
                ds.set_epoch(self.epoch)
            if self.world_size > 1:
                from datasets.distributed import split_dataset_by_node

                ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
            draft = draft_size(self.transform)
            added, seen = 0, set()
            for example in ds:
                labelled = self._labelled(example)
                if labelled is None:
                    continue
                value, label = labelled
                if self.holdout is not None and not self._in_side(value):
                    continue
                if self.members is not None:
                    fingerprint = row_fingerprint(value)
                    if fingerprint not in self.members:
                        added += 1
                        continue
                    seen.add(fingerprint)
                try:
                    img = value_to_pil(value, draft=draft)
                except Exception as exc:  # noqa: BLE001 - counted by the loader, never a crash
                    yield Skipped(-1, _example_name(value), describe_error(exc))
                    continue
                yield (self.transform(img) if self.transform is not None else img), int(label)
            if self.members is not None:
                self._report(added, seen)

        def _report(self, added: int, seen: set) -> None:
            """After a pass over the recorded validation: examples added since (left out), and, when
            this pass read the whole stream (one process), the recorded ones no longer there."""
            import torch.utils.data

            if added:
                log.warning(f"{added} example(s) added to the data since 'scan fit' are left out of validation "
                            "(validation is what fit held out)")
            whole = torch.utils.data.get_worker_info() is None and self.world_size == 1
            missing = len(self.members) - len(seen)
            if whole and len(seen) < FLOOR * len(self.members):  # the same floor as folders and rows
                raise ScanError(f"only {len(seen)} of the {len(self.members)} validation examples 'scan fit' held out "
                                f"are still in the stream unchanged, below the {FLOOR:.0%} floor: restore the data "
                                "as it was, or calibrate on other labelled data with --data DIR")
            if whole and missing:
                log.warning(f"validation: {missing} of the {len(self.members)} examples 'scan fit' held out are "
                            f"missing or changed: calibrating on the {len(seen)} still there")

    StreamingImages.__module__ = __name__
    StreamingImages.__qualname__ = "StreamingImages"
    return StreamingImages


def __getattr__(name):  # PEP 562: torch-based classes are built on first use (and pickle by name)
    if name == "StreamingImages":
        cls = _build_streaming_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def streaming_class():
    """The StreamingImages class (built, and torch imported, on first use)."""
    return globals().get("StreamingImages") or __getattr__("StreamingImages")
