"""Loaders: a DataLoader whose order and augmentation seeds are a pure function of seed + epoch,
and the run's validation images as preloaded batches (for timing the real cascade).

Undecodable images: datasets give a `dataset.Skipped` marker for them; the collate function of
`make_loader` leaves the markers out of the batch (the rest keep their order, so a training batch
is its sampler's indices minus the bad ones and nothing else moves), and the loader counts them in
its `skipped` (`SkippedImages`, each image once however many epochs read it) and names the first
few in warnings, in the main process whichever worker found them. A batch with no good image is
not yielded at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from ..errors import ScanError
from .dataset import MAX_SKIP_EXAMPLES, Skipped, SkippedImages

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """min(4, usable CPUs - 1), at least 0."""
    return max(0, min(4, usable_cpus() - 1))


def loader_length(loader):
    """len(loader), or None for a loader over a streamed dataset (unknown length)."""
    try:
        return len(loader)
    except TypeError:
        return None


class SkippingCollate:
    """Collate function: (collate_fn(good items) or None, [Skipped markers]). A class, so that it
    pickles for worker processes whatever the start method."""

    def __init__(self, collate_fn=None):
        self.collate_fn = collate_fn

    def __call__(self, batch):
        good = [item for item in batch if not isinstance(item, Skipped)]
        bad = [item for item in batch if isinstance(item, Skipped)]
        if not good:
            return None, bad
        if self.collate_fn is not None:
            return self.collate_fn(good), bad
        from torch.utils.data import default_collate

        return default_collate(good), bad


def _build_loader_class():
    import torch.utils.data

    class SkippingLoader(torch.utils.data.DataLoader):
        """A DataLoader that leaves out, counts (`skipped`) and names undecodable images."""

        skipped: SkippedImages

        def __iter__(self):
            for value, bad in super().__iter__():
                for item in bad:
                    if self.skipped.add(item.name, item.reason) and self.skipped.count <= MAX_SKIP_EXAMPLES:
                        log.warning("skipping undecodable image %s: %s", item.name, item.reason)
                if value is not None:
                    yield value

    SkippingLoader.__module__ = __name__
    SkippingLoader.__qualname__ = "SkippingLoader"
    return SkippingLoader


def __getattr__(name):  # PEP 562: the torch-based class is built on first use
    if name == "SkippingLoader":
        cls = _build_loader_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _loader_class():
    return globals().get("SkippingLoader") or __getattr__("SkippingLoader")


def make_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    collate_fn=None,
    skipped: SkippedImages | None = None,
):
    """A DataLoader whose order and worker augmentation seeds are a pure function of seed + epoch.

    Map-style data: shuffling uses torch.Generator().manual_seed(seed + epoch), which also seeds
    the workers (torch derives each worker's torch/random/numpy seeds from it), so resuming at an
    epoch boundary reproduces the epoch exactly. With num_workers=0 augmentation draws from the
    main process's global RNGs, which the caller seeds. distributed: DistributedSampler(seed=seed,
    shuffle=shuffle, drop_last=drop_last) with set_epoch(epoch); rank r > 0 adds r * 1_000_003 to
    the generator seed so ranks do not share augmentation streams (rank 0 matches the single
    process run). Streamed data (StreamingImages): shuffled through a seeded buffer, set to the
    epoch, split over DDP ranks, workers capped at the shard count (see `streaming.py`).
    Workers are not persistent; memory is pinned when CUDA is available.
    Undecodable images are left out of their batch and counted in the loader's `skipped` (pass
    one `SkippedImages` to share the count between loaders, e.g. across epochs); see the module notes.
    """
    import torch

    if num_workers is None:
        num_workers = default_num_workers()
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    generator = torch.Generator().manual_seed(int(seed) + int(epoch) + 1_000_003 * rank)
    common = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=SkippingCollate(collate_fn),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=generator,
    )
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if hasattr(dataset, "configured"):
            dataset = dataset.configured(shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world)
            shards = dataset.num_shards
            if world > 1:
                shards = max(1, shards // world) if shards % world == 0 else shards
            common["num_workers"] = min(num_workers, shards)
        loader = _loader_class()(dataset, **common)
    elif distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        loader = _loader_class()(dataset, sampler=sampler, **common)
    else:
        loader = _loader_class()(dataset, shuffle=shuffle, **common)
    loader.skipped = SkippedImages() if skipped is None else skipped
    return loader


def validation_batches(run_dir: Path, info, batch_size: int, max_images: Optional[int] = None):
    """``(batches, None)``: up to ``max_images`` validation images of the run's data as a list of
    image tensors (eval preprocessing, the split ``scan fit`` held out), or ``(None, reason)``.

    The data settings are what the run recorded (``splits.run_recipe``); the split is rebuilt by
    ``splits.run_data`` at the artifact's input size and batched by ``make_loader``."""
    from ..runs import RECIPE_FILE
    from .splits import run_data, run_recipe

    try:
        recipe = run_recipe(run_dir, info)
    except ScanError as exc:
        return None, str(exc)
    if "data" not in recipe:
        return None, f"{Path(run_dir) / RECIPE_FILE} (written by 'scan fit') is missing or names no data, so the validation split is unknown"
    try:
        splits = run_data(run_dir, info, recipe=recipe, splits=("val",))
    except ScanError as exc:
        return None, f"the run's data could not be loaded ({exc})"
    val = getattr(splits, "val", None)
    if val is None:
        return None, f"data '{recipe['data']}' has no validation split"
    loader = make_loader(val, batch_size=batch_size, shuffle=False, num_workers=0)
    batches, n = [], 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if max_images is not None and n + images.shape[0] > max_images:
            images = images[: max_images - n]
        if images.shape[0]:
            batches.append(images)
        n += int(images.shape[0])
        if max_images is not None and n >= max_images:
            break
    if not batches:
        return None, f"data '{recipe['data']}' has an empty validation split"
    return batches, None
