"""Fashion-MNIST as an image folder, for benchmarks on real data offline.

    apt-get install dataset-fashion-mnist          # Debian ships the IDX files
    python bench/fashion_mnist.py OUT [--train 3000] [--test 10000] [--idx-dir DIR]

Writes OUT/train/<class>/*.png (a stratified subset of the 60,000 training images, the first
``--train`` of a seeded per-class shuffle) and OUT/test/<class>/*.png (the first ``--test`` of the
official 10,000 test images, stratified the same way). `scan fit --data OUT` then holds its own
validation split out of train/ and never touches test/ until `scan evaluate`.
Users with internet can use `--data fashion-mnist` (the Hugging Face Hub copy) instead.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def stratified_first(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` examples, classes in proportion, in a seeded order per class."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(CLASSES))]
    share = count / len(labels)
    picked = [idx[: int(round(share * len(idx)))] for idx in per_class]
    return np.sort(np.concatenate(picked))


def write_folder(out: Path, n_train: int = 3000, n_test: int = 10000, idx_dir: Path = IDX_DIR, seed: int = 0) -> Path:
    from PIL import Image

    out = Path(out)
    marker = out / f".complete-{n_train}-{n_test}-{seed}"
    if marker.exists():
        return out
    parts = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", n_train),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", n_test)}
    for split, (img_file, lab_file, n) in parts.items():
        if not (idx_dir / img_file).is_file():
            raise SystemExit(f"{idx_dir / img_file} not found: apt-get install dataset-fashion-mnist, or pass --idx-dir")
        images, labels = read_idx(idx_dir / img_file), read_idx(idx_dir / lab_file)
        keep = stratified_first(labels, min(n, len(labels)), seed) if n < len(labels) else np.arange(len(labels))
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for i in keep:
            Image.fromarray(images[i]).save(out / split / CLASSES[labels[i]] / f"{i:05d}.png")
    marker.touch()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--idx-dir", type=Path, default=IDX_DIR)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_folder(a.out, a.train, a.test, a.idx_dir, a.seed))


if __name__ == "__main__":
    main()
