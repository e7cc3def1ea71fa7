"""The image-folder source: `root/<class>/...`, or the ImageNet layout `root/train/<class>/...`.

In the flat layout validation is held out of the folder (`holdout.holdout`, keyed by relative
path). In the ImageNet layout `root/val` (or `validation`, `valid`) and `root/test` hold the same
class sub-folders as `root/train`. Images are found recursively inside each class folder; hidden
files and folders are skipped. Symbolic links are followed but never into a loop, and a file
reached twice is listed once (`images.walk_images`): train first, so a val/ or test/ file that is
a training file (through a link) is left out of val/test with a warning.

Undecodable images: every file is opened and `verify()`-ed in a thread pool when indexed
(`check_images=True`); failures and images over the pixel limit (`images.max_image_pixels`) are
left out, counted in `DataSplits.skipped` and reported with a warning. Damage only full decoding
finds is handled when read (see `dataset.py`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ScanError
from .images import IMAGE_EXTENSIONS, describe_error, has_images, is_image_file, walk_images
from .dataset import DataSplits, FileImages, SkippedImages
from .holdout import MAP_RULE, holdout, rule
from .transforms import eval_transform, train_transform

log = logging.getLogger(__name__)

VAL_FOLDER_NAMES = ("val", "validation", "valid")


def _class_folders(folder: Path):
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name) and not p.name.startswith("."))
    return subdirs, loose


def _list_with_classes(folder: Path, classes: list, role: str, seen: dict):
    """[(path, label)] for a val/test folder that must hold exactly the train classes.
    Returns None for a test folder of unlabelled loose images (ignored with a warning).
    `seen`: real paths already listed (train first): a file that is one of them is left out."""
    subdirs, loose = _class_folders(folder)
    names = [d.name for d in subdirs]
    if not subdirs:
        if loose and role == "test":
            log.warning("ignoring %s: its images are not in class sub-folders (unlabelled)", folder)
            return None
        if loose:
            raise ScanError(
                f"{folder} holds images but no class sub-folders: sort them into {folder}/<class>/ "
                "(for ImageNet's val set, e.g. with valprep.sh)"
            )
    missing = [c for c in classes if c not in names]
    extra = [c for c in names if c not in classes]
    if missing or extra:
        bits = []
        if missing:
            bits.append("missing class " + ", ".join(f"'{c}'" for c in missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if extra:
            bits.append("extra class " + ", ".join(f"'{c}'" for c in extra[:5]) + (" ..." if len(extra) > 5 else ""))
        raise ScanError(f"{role} folder {folder} does not match the train classes ({'; '.join(bits)}): give it the same class sub-folders as train")
    if loose:
        log.warning("ignoring %d images directly in %s (not in a class sub-folder)", len(loose), folder)
    index = {c: i for i, c in enumerate(classes)}
    duplicates: list = []
    found = [(p, index[d.name]) for d in subdirs for p in walk_images(d, seen, duplicates)]
    _warn_duplicates(duplicates, role)
    return found


def _warn_duplicates(duplicates: list, role: str) -> None:
    """One warning for the files of a split reached a second time through symbolic links."""
    if duplicates:
        path, first = duplicates[0]
        log.warning("%s: %d image file(s) reached through symbolic links are files already listed, left out "
                    "(e.g. %s is %s)", role, len(duplicates), path, first)


def _check_file(path) -> str | None:
    from .images import _pil_image, check_size

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with _pil_image().open(path) as img:
            check_size(img)  # over the pixel limit: left out here, never decoded
            img.verify()
        return None
    except Exception as exc:  # noqa: BLE001
        return describe_error(exc)


def _verify(samples, skipped: SkippedImages):
    """samples without the files that fail PIL's open + verify (checked in a thread pool)."""
    if not samples:
        return samples
    from concurrent.futures import ThreadPoolExecutor

    workers = min(32, 4 * (os.cpu_count() or 1), len(samples))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = list(pool.map(_check_file, [p for p, _ in samples], chunksize=64))
    good = []
    for (path, label), err in zip(samples, errors):
        if err is None:
            good.append((path, label))
        else:
            skipped.add(path, err)
    return good


def _layout(root: Path):
    """(train, val, test) folders: `root` itself, or the ImageNet layout `root/train`, `root/val`, ...;
    train is None for a folder of split folders without train/ (e.g. only test/: data to evaluate on)."""
    val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    test_dir = root / "test" if (root / "test").is_dir() else None
    if not (root / "train").is_dir():
        subdirs = [d.name for d in _class_folders(root)[0]]
        if (val_dir or test_dir) and set(subdirs) <= {"test", *VAL_FOLDER_NAMES}:
            return None, val_dir, test_dir
        return root, None, None
    return root / "train", val_dir, test_dir


def _check_classes(train_dir: Path, subdirs: list, loose: list, empty: list) -> None:
    """The training folder's mistakes (no class folders, no images, one class, empty classes);
    `empty`: the names of the class folders without images."""
    exts = " ".join(IMAGE_EXTENSIONS)
    if not subdirs:
        if loose:
            raise ScanError(f"{train_dir} holds images but no class sub-folders: put them in {train_dir}/<class>/")
        raise ScanError(f"no images found in {train_dir} (looked for {exts} in class sub-folders)")
    if len(empty) == len(subdirs):
        raise ScanError(f"no images found in {train_dir} (looked for {exts} in class sub-folders)")
    if len(subdirs) < 2:
        raise ScanError(f"only one class ('{subdirs[0].name}') in {train_dir}: a classifier needs at least two class sub-folders")
    if empty:
        raise ScanError(
            f"class folder(s) {', '.join(repr(e) for e in empty[:5])} in {train_dir} hold no images "
            f"(looked for {exts}): add images or remove them"
        )


def check_folder(root: Path) -> None:
    """`load_folder`'s training-folder errors, from a first image per class (no full listing, no
    decoding): what `scan fit` checks before importing torch."""
    train_dir = _layout(root)[0]
    if train_dir is None:
        raise ScanError(f"{root} holds no train/ folder (only {' and '.join(d.name for d in _layout(root)[1:] if d)}/): "
                        "add train/<class>/ folders, or pass a folder of class sub-folders")
    subdirs, loose = _class_folders(train_dir)
    _check_classes(train_dir, subdirs, loose, [d.name for d in subdirs if not has_images(d)])


def load_folder(root: Path, cfg, kind, hflip, val_fraction, seed, splits, check_images) -> DataSplits:
    train_dir, val_dir, test_dir = _layout(root)
    if train_dir is None:
        return _load_eval_only(root, cfg, val_dir, test_dir, splits, check_images)
    if train_dir != root:
        others = [d.name for d in _class_folders(root)[0] if d.name not in ("train", "test") + VAL_FOLDER_NAMES]
        if others:
            log.warning("ignoring folders next to train/ in %s: %s", root, ", ".join(others))

    subdirs, loose = _class_folders(train_dir)
    classes = [d.name for d in subdirs]
    samples = []
    empty = []
    seen: dict = {}  # real path -> the path listed: every file once, train first (no val/test leak)
    duplicates: list = []
    for label, d in enumerate(subdirs):
        files = walk_images(d, seen, duplicates)
        if not files:
            empty.append(d.name)
        samples += [(p, label) for p in files]
    _check_classes(train_dir, subdirs, loose, empty)
    if loose:
        log.warning("ignoring %d images directly in %s (not in a class sub-folder)", len(loose), train_dir)
    _warn_duplicates(duplicates, "training")

    skipped = SkippedImages()
    val_samples = _list_with_classes(val_dir, classes, "validation", seen) if val_dir is not None else None
    test_samples = _list_with_classes(test_dir, classes, "test", seen) if test_dir is not None else None
    val_from_train = val_samples is None
    if check_images:
        if "train" in splits or (val_from_train and "val" in splits):
            samples = _verify(samples, skipped)
        if val_samples is not None and "val" in splits:
            val_samples = _verify(val_samples, skipped)
        if test_samples is not None and "test" in splits:
            test_samples = _verify(test_samples, skipped)
    if skipped:
        log.warning("%s", skipped.summary())
    if val_from_train:
        keys = [Path(p).relative_to(train_dir).as_posix() for p, _ in samples]
        keep, held = holdout([lab for _, lab in samples], keys, val_fraction, seed)
        samples, val_samples = [samples[i] for i in keep], [samples[i] for i in held]

    ev = eval_transform(cfg)
    tr = train_transform(cfg, kind, hflip=True if hflip is None else hflip)
    built = {}
    if "train" in splits:
        built["train"] = FileImages(samples, tr)
    if "val" in splits:
        built["val"] = FileImages(val_samples, ev)
    if "test" in splits and test_samples:
        built["test"] = FileImages(test_samples, ev)
    val_rule = (rule(MAP_RULE, "relative path", val_fraction, seed) if val_from_train
                else {"from": "own split", "name": val_dir.name})
    return DataSplits.of(built, classes=classes, source=f"folder {root}", data_config=cfg, skipped=skipped,
                         val_from_train=val_from_train, val_rule=val_rule)


def _load_eval_only(root: Path, cfg, val_dir, test_dir, splits, check_images) -> DataSplits:
    """A folder holding only val/ and/or test/ (labelled data to evaluate or calibrate on): its
    classes are the first one's class folders; there is no training split."""
    first = val_dir or test_dir
    subdirs, loose = _class_folders(first)
    _check_classes(first, subdirs, loose, [d.name for d in subdirs if not has_images(d)])
    classes = [d.name for d in subdirs]
    seen: dict = {}
    skipped = SkippedImages()
    ev = eval_transform(cfg)
    built = {}
    for name, folder in (("val", val_dir), ("test", test_dir)):
        if folder is None or name not in splits:
            continue
        samples = _list_with_classes(folder, classes, "validation" if name == "val" else "test", seen) or []
        built[name] = FileImages(_verify(samples, skipped) if check_images else samples, ev)
    if skipped:
        log.warning("%s", skipped.summary())
    return DataSplits.of(built, classes=classes, source=f"folder {root}", data_config=cfg, skipped=skipped,
                         val_rule={"from": "own split", "name": val_dir.name} if val_dir else {"from": "none"})
