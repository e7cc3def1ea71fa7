"""Loaders: a DataLoader whose order and augmentation seeds are a pure function of seed + epoch,
and the run's validation images as preloaded batches (for timing the real cascade)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ScanError


def default_num_workers() -> int:
    """min(4, usable CPUs - 1), at least 0 (usable: the CPUs this process may run on)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def loader_length(loader):
    """len(loader), or None for a loader over a streamed dataset (unknown length)."""
    try:
        return len(loader)
    except TypeError:
        return None


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
        collate_fn=collate_fn,
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
        return torch.utils.data.DataLoader(dataset, **common)
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, sampler=sampler, **common)
    return torch.utils.data.DataLoader(dataset, shuffle=shuffle, **common)


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
