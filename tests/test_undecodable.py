"""Undecodable images (issue 11 item 6): skipped, never replaced by the next decodable one (which
was then counted twice), counted per split and reported by fit, calibrate and evaluate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from test_data import png_bytes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

BAD = {"train": [5, 17], "validation": [2], "test": [4]}  # rows whose bytes are not an image


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A saved dataset whose every split has undecodable rows (not checked up front: that would
    mean decoding the whole set), and a run trained on it."""
    import datasets

    root = tmp_path_factory.mktemp("damaged")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})

    def split(n, bad, seed):
        rows = [{"bytes": b"not an image %d" % i if i in bad else png_bytes(seed + i), "path": None} for i in range(n)]
        return datasets.Dataset.from_dict({"image": rows, "label": [i % 3 for i in range(n)]}, features=feats)

    datasets.DatasetDict({"train": split(24, BAD["train"], 0), "validation": split(9, BAD["validation"], 100),
                          "test": split(9, BAD["test"], 200)}).save_to_disk(str(root / "data"))
    return root


@pytest.fixture(scope="module")
def fitted(damaged):
    from scan_cli.cli import main

    out = damaged / "run"
    args = ["fit", "resnet10_cifar", "--data", str(damaged / "data"), "--epochs", "1", "--img-size", "16",
            "--batch-size", "4", "--workers", "0", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main(args + ["--json"])
    assert done.value.code in (0, None)
    return out


def test_fit_counts_each_split_and_counts_no_image_twice(fitted, damaged, capsys):
    summary = json.loads((fitted / "metrics.json").read_text())
    assert summary["skipped_images"] == {"when listed": 0, "train": 2, "val": 1, "test": 1}
    assert summary["val"]["n"] == 8 and summary["test"]["n"] == 8  # 9 rows, one undecodable: never 9
    assert summary["history"][0]["images"] == 22  # every good training row once: batches of 4 indices, bad ones left out


def test_fit_summary_says_how_many_were_skipped(fitted, capsys):
    from scan_cli.cli.fit import _print_summary

    _print_summary(json.loads((fitted / "metrics.json").read_text()) | {"model": str(fitted / "model.safetensors")})
    err = capsys.readouterr().err
    assert "skipped 4 undecodable images (train 2, val 1, test 1)" in err


def test_calibrate_and_evaluate_report_the_count(fitted, run_cli):
    for _ in range(2):  # the second time from the cached outputs: still counted
        code, out, err = run_cli("calibrate", "--run", str(fitted), "--max-drop", "0.5", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["n_val"] == 8 and doc["skipped_images"] == 1
        assert "skipped 1 undecodable image" in err and "validation" in err
    code, out, err = run_cli("evaluate", "--run", str(fitted), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n"] == 8 and doc["skipped_images"] == 1 and "skipped 1 undecodable image" in err


def test_streamed_rows_that_do_not_decode_are_counted_too(damaged, tmp_path):
    import datasets

    from scan_cli.data import load_data, make_loader

    ds = datasets.load_from_disk(str(damaged / "data"))["train"]
    ds.to_parquet(str(tmp_path / "t.parquet"))
    d = load_data(str(tmp_path / "t.parquet"), data_config={"input_size": (3, 16, 16)}, train_transform="none",
                  streaming=True, val_fraction=0.25)
    seen, skipped = 0, 0
    for part in (d.train, d.val):
        loader = make_loader(part, batch_size=4, shuffle=False, num_workers=0)
        seen += sum(len(y) for _, y in loader)
        skipped += loader.skipped.count
    assert (seen, skipped) == (22, 2)
