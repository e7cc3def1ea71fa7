"""Finding and decoding image files for `scan predict`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scan_cli.errors import ScanError
from scan_cli.data.images import IMAGE_EXTENSIONS, ImageFiles, collate_images, find_images, open_rgb


def noise(size=(24, 24), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def save(img, path: Path, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    noise((64, 64), seed=7).save(buf, "PNG")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    save(noise(seed=1), root / "b.png")
    save(noise(seed=2), root / "a.jpg")
    save(noise(seed=3), root / "sub" / "c.JPEG")
    save(noise(seed=4), root / "sub" / "deeper" / "d.webp")
    (root / "notes.txt").write_text("not an image")
    save(noise(seed=5), root / ".hidden" / "e.png")
    return root


def test_extensions_cover_the_usual_formats():
    for ext in ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm"):
        assert f".{ext}" in IMAGE_EXTENSIONS


def test_folder_is_searched_recursively_in_sorted_order(tree):
    found = find_images([str(tree)])
    rel = [p.relative_to(tree).as_posix() for p in found]
    assert rel == ["a.jpg", "b.png", "sub/c.JPEG", "sub/deeper/d.webp"]


def test_files_folders_and_globs_are_deduplicated_in_input_order(tree):
    found = find_images([str(tree / "b.png"), str(tree / "sub"), str(tree / "**" / "*.png"), str(tree / "a.jpg")])
    rel = [p.relative_to(tree).as_posix() for p in found]
    assert rel == ["b.png", "sub/c.JPEG", "sub/deeper/d.webp", "a.jpg"]
    assert find_images([str(tree)]) == find_images([str(tree)])


def test_glob_keeps_only_image_files_and_recurses_into_matched_folders(tree):
    rel = [p.relative_to(tree).as_posix() for p in find_images([str(tree / "*")])]
    assert rel == ["a.jpg", "b.png", "sub/c.JPEG", "sub/deeper/d.webp"]


def test_an_explicit_file_is_kept_whatever_its_extension(tree):
    assert find_images([str(tree / "notes.txt")]) == [tree / "notes.txt"]


def test_nothing_matched_names_the_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError) as err:
        find_images([str(tmp_path / "empty"), str(tmp_path / "*.png")])
    msg = str(err.value)
    assert "empty" in msg and "*.png" in msg and "\n" not in msg


def test_a_missing_path_is_reported(tmp_path):
    with pytest.raises(ScanError, match="no such file or folder"):
        find_images([str(tmp_path / "nope.jpg")])


def test_one_empty_input_among_good_ones_is_still_an_error(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match="empty"):
        find_images([str(tree), str(tmp_path / "empty")])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_every_mode_decodes_to_rgb(tmp_path, mode):
    if mode == "I;16":
        img = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)
        assert img.mode.startswith("I;16")
    else:
        img = noise(mode=mode)
    if mode == "P":
        img.info["transparency"] = 0
    path = save(img, tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png"))
    out = open_rgb(path)
    assert out.mode == "RGB"
    if mode == "I;16":  # rescaled, not clipped to white
        assert 0 < np.asarray(out).mean() < 255


def test_truncated_and_fake_images_become_errors_and_good_ones_still_load(tmp_path):
    from torch.utils.data import DataLoader

    good1 = save(noise(seed=1), tmp_path / "good1.png")
    bad_trunc = truncated_png(tmp_path / "trunc.png")
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is not a jpeg")
    good2 = save(noise((10, 20), seed=2, mode="L"), tmp_path / "good2.jpg")
    missing = tmp_path / "gone.png"

    def transform(img):
        import torchvision.transforms.functional as F

        return F.to_tensor(img.resize((8, 8)))

    ds = ImageFiles([good1, bad_trunc, fake, good2, missing], transform)
    assert len(ds) == 5
    idx, tensor, err = ds[1]
    assert idx == 1 and tensor is None and "truncated" in err
    idx, tensor, err = ds[2]
    assert tensor is None and "not an image" in err
    idx, tensor, err = ds[0]
    assert err is None and tuple(tensor.shape) == (3, 8, 8)

    loader = DataLoader(ds, batch_size=5, collate_fn=collate_images)
    (indices, images, errors), = list(loader)
    assert indices == [0, 3]
    assert tuple(images.shape) == (2, 3, 8, 8)
    assert [i for i, _ in errors] == [1, 2, 4]
    assert all(isinstance(e, str) and e for _, e in errors)


def test_default_transform_gives_unit_range_tensors(tmp_path):
    ds = ImageFiles([save(noise((5, 7)), tmp_path / "a.png")])
    _, t, err = ds[0]
    assert err is None and tuple(t.shape) == (3, 7, 5)
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_transform_failure_is_reported_not_raised(tmp_path):
    def broken(img):
        raise RuntimeError("boom")

    _, t, err = ImageFiles([save(noise(), tmp_path / "a.png")], broken)[0]
    assert t is None and "boom" in err


def test_collate_with_only_bad_images():
    indices, images, errors = collate_images([(0, None, "bad"), (1, None, "worse")])
    assert indices == [] and images is None and errors == [(0, "bad"), (1, "worse")]


# -- symlinks (issue 11 item 5) ---------------------------------------------------------------------
def test_a_symlink_loop_is_never_followed(tmp_path):
    root = tmp_path / "imgs"
    save(noise(seed=1), root / "a" / "x.png")
    save(noise(seed=2), root / "b" / "y.png")
    save(noise(seed=3), root / "b" / "z.png")
    (root / "a" / "up").symlink_to(root)  # a loop: root/a/up/a/up/...
    (root / "b" / "self").symlink_to(root / "b")
    rel = sorted(p.relative_to(root).as_posix() for p in find_images([str(root)]))
    assert rel == ["a/x.png", "b/y.png", "b/z.png"]
    # walking one class folder must not climb out of it through the loop either
    assert [p.name for p in find_images([str(root / "a")])] == ["x.png"]
    # and a glob walks by the same rule (it once followed a/up/a/up/... without end)
    assert sorted(p.relative_to(root).as_posix() for p in find_images([f"{root}/**/*.png"])) == rel


def test_a_glob_never_follows_a_symlink_loop(tmp_path, monkeypatch):
    import os

    from scan_cli.data.factory import data_source

    d = tmp_path / "d"
    save(noise(seed=1), d / "x.png")
    save(noise(seed=2), d / "sub" / "y.png")
    (d / "part.parquet").write_bytes(b"")
    (d / "a").symlink_to(".")  # one loop: a plain recursive glob lists d/a/a/a/... until ELOOP
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (listed.append(os.path.realpath(p)), real_scandir(p))[1])
    rel = [p.relative_to(d).as_posix() for p in find_images([f"{d}/**/*.png"])]
    assert rel == ["sub/y.png", "x.png"]
    assert len(listed) == len(set(listed)), "a folder was listed twice: a link loop was followed"
    listed.clear()
    kind, (files, _, _) = data_source(f"{d}/**/*.parquet")  # --data globs by the same rule
    assert kind == "columnar" and [f.name for f in files] == ["part.parquet"]
    assert len(listed) == len(set(listed))
    monkeypatch.setattr(os, "scandir", real_scandir)
    (d / "b").symlink_to(".")  # two loops: 2**40 paths for a plain recursive glob (it never finishes)
    assert len(find_images([f"{d}/**/*.png", f"{d}/*/*.png"])) == 2


def test_a_symlinked_duplicate_is_listed_once(tmp_path):
    root = tmp_path / "imgs"
    save(noise(seed=1), root / "a" / "x.png")
    (root / "a" / "copy.png").symlink_to(root / "a" / "x.png")
    (root / "more").mkdir()
    (root / "more" / "same").symlink_to(root / "a", target_is_directory=True)
    assert [p.relative_to(root).as_posix() for p in find_images([str(root)])] == ["a/copy.png"]
    from scan_cli.data.images import walk_images

    assert [p.name for p in walk_images(root)] == ["copy.png"]  # not once per path that reaches it


# -- huge images and JPEG draft mode (issue 11 item 9) ---------------------------------------------
def declared_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares width x height (only its header is valid)."""
    import struct
    import zlib

    buf = io.BytesIO()
    noise((2, 2)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path, recwarn):
    from scan_cli.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, describe_error

    huge = declared_png(tmp_path / "huge.png", 12_000, 9_000)  # 108 MP declared, a few hundred bytes
    assert huge.stat().st_size < 1000 and 12_000 * 9_000 > DEFAULT_MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge) as err:
        open_rgb(huge)
    msg = describe_error(err.value)
    assert "12000 x 9000" in msg and "SCAN_MAX_IMAGE_PIXELS" in msg and "\n" not in msg
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]  # ours, not PIL's warning


def test_the_pixel_limit_comes_from_the_environment(tmp_path, monkeypatch):
    from scan_cli.errors import UsageError
    from scan_cli.data.images import ImageTooLarge, max_image_pixels

    path = save(noise((40, 30)), tmp_path / "a.png")
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    with pytest.raises(ImageTooLarge):
        open_rgb(path)
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", "1200")
    assert open_rgb(path).size == (40, 30)
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", "0")  # no limit of scan's own
    assert open_rgb(path).size == (40, 30)
    monkeypatch.setenv("SCAN_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(UsageError, match="SCAN_MAX_IMAGE_PIXELS"):
        max_image_pixels()


def test_big_jpegs_decode_at_reduced_size_when_the_target_is_small(tmp_path):
    import torch

    from scan_cli.data import eval_transform
    from scan_cli.data.images import draft_size

    yy, xx = np.mgrid[0:1200, 0:1600]
    arr = np.stack([128 + 100 * np.sin(xx / 40), 128 + 100 * np.cos(yy / 30), (xx + yy) % 256], -1)
    path = save(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), tmp_path / "big.jpg")
    t = eval_transform({"input_size": (3, 48, 48), "crop_pct": 0.9, "mean": (0.5,) * 3, "std": (0.25,) * 3})
    assert draft_size(t) == (53, 53)  # the eval resize: shorter side 48 / 0.9
    assert open_rgb(path).size == (1600, 1200)
    small = open_rgb(path, draft=draft_size(t))
    assert small.size == (200, 150)  # 1/8 in the DCT: still above what the resize needs
    full, reduced = t(open_rgb(path)), t(small)
    assert full.shape == reduced.shape == (3, 48, 48)
    assert float((full - reduced).abs().mean()) < 0.05  # the same picture
    assert open_rgb(save(noise((60, 60)), tmp_path / "s.jpg"), draft=(53, 53)).size == (60, 60)  # not big enough
    png = save(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), tmp_path / "big.png")
    assert open_rgb(png, draft=(53, 53)).size == (1600, 1200)  # draft is JPEG's; other formats decode whole
    _, x, err = ImageFiles([path], t)[0]
    assert err is None and torch.equal(x, reduced)  # predict decodes in draft mode


def test_draft_size_only_for_transforms_that_resize_first():
    from scan_cli.data import train_transform
    from scan_cli.data.images import draft_size

    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert draft_size(train_transform(cfg, "pad_crop")) == (32, 32)
    assert draft_size(train_transform(cfg, "rrc")) is None  # a random crop may zoom in: full resolution
    assert draft_size(lambda img: img) is None
