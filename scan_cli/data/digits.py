"""The digits source: scikit-learn's `load_digits()`, offline.

1797 real 8x8 grayscale digits, 10 classes. Pixel values 0..16 become uint8 (x16, clipped to 255),
then RGB. The split is FIXED (stratified, seed 0, whatever `seed` says) so that numbers are
comparable across runs: **train 1079 / val 359 / test 359** (60 / 20 / 20 %, see DIGITS_SIZES).
"""

from __future__ import annotations

from .dataset import ArrayImages, DataSplits
from .holdout import holdout, stratified_pick
from .transforms import eval_transform, train_transform

DIGITS_SIZES = {"train": 1079, "val": 359, "test": 359}


def load_digits(cfg, kind, hflip, splits) -> DataSplits:
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    keys = [str(i) for i in range(len(labels))]
    rest, test_idx = holdout(labels, keys, 0.2, 0, what="digits-test")
    n_val = int(round(0.2 * len(labels)))
    mask = stratified_pick(labels[rest], [keys[i] for i in rest], n_val, "scan-digits-val-0")
    train_idx, val_idx = rest[~mask], rest[mask]

    cfg = dict(cfg, crop_pct=1.0, crop_mode="center")  # 8x8 images: just resize, never crop
    ev = eval_transform(cfg)
    tr = train_transform(cfg, kind, hflip=False if hflip is None else hflip)
    parts = {"train": (train_idx, tr), "val": (val_idx, ev), "test": (test_idx, ev)}
    built = {s: ArrayImages(images[idx], labels[idx], t, source_indices=idx) for s, (idx, t) in parts.items() if s in splits}
    return DataSplits.of(built, classes=[str(i) for i in range(10)], source="digits (scikit-learn)", data_config=cfg,
                         val_from_train=False, val_rule={"from": "fixed split"})
