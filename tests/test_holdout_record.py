"""Validation is what fit held out, by construction (issue 19 items 1 and 4): the run records the
held-out membership (`holdout.json`, `data/membership.py`) and every later command rebuilds
validation from it, whatever happened to the data since; caches are named by its digest; `--dry-run`
writes nothing; `calibrate --data NEW` calibrates on other labelled data; `evaluate --data` takes a
folder holding only test/ or val/.

Each case fits a real tiny run (1 epoch, 16 px) on data made here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import copy_of, make_color_folder, without_run_line  # noqa: E402
from test_data import hf_dataset, png_bytes  # noqa: E402

from scan_cli.errors import ScanError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _fit(data: str, out: Path, val_fraction=0.5, **flags) -> Path:
    from scan_cli.training.loop import FitOptions, fit
    from scan_cli.training.recipes import Recipe

    recipe = Recipe(data=data, img_size=16, epochs=1, batch_size=16, lr=0.05, schedule="constant", augment="none",
                    hflip=False, workers=0, mode="joint", val_fraction=val_fraction, seed=1)
    fit(FitOptions(backbone="resnet10_cifar", recipe=recipe, out=out, **flags))
    return out


def _val_paths(run: Path) -> list:
    from scan_cli.artifact import read_info
    from scan_cli.data import run_split

    dataset, _ = run_split(run, read_info(run / "model.safetensors"), "val")
    return sorted(dataset.paths)


def _recorded(run: Path, root: Path) -> tuple:
    doc = json.loads((run / "holdout.json").read_text())
    assert doc["root"] == str(root.absolute())
    val = sorted(str(root / k) for k, _ in doc["val"])
    files = sorted(str(p) for p in root.rglob("*.png"))
    return val, sorted(set(files) - set(val))


@pytest.fixture
def folder_run(tmp_path):
    root = make_color_folder(tmp_path / "imgs", per_class=20, size=8)
    run = _fit(str(root), tmp_path / "run")
    val, train = _recorded(run, root)
    assert len(val) == 30 and len(train) == 30
    return root, run, val, train


def test_the_run_records_its_membership_small_in_the_header(folder_run):
    from scan_cli.artifact import read_info

    root, run, val, _ = folder_run
    rec = read_info(run / "model.safetensors").recipe["data_split"]
    assert rec["root"] == str(root.absolute())
    doc = json.loads((run / "holdout.json").read_text())
    assert rec["membership"] == {"file": "holdout.json", "digest": doc["digest"], "val": 30, "train": 30}
    assert _val_paths(run) == val


def test_removed_training_files_never_bring_a_training_image_into_validation(folder_run):
    root, run, val, train = folder_run
    for p in [t for t in train if "/red/" in t][:8]:  # today's quotas would move the hold-out
        os.remove(p)
    later = _val_paths(run)
    assert later == val
    assert not set(later) & set(train)


def test_added_files_are_left_out_of_validation_and_counted(folder_run, scan_log):
    root, run, val, _ = folder_run
    make_color_folder(root, per_class=2, size=8, seed=7)  # overwrites 0.png, 1.png: not new
    from PIL import Image

    for c in ("red", "blue"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / c / "new.png")
    later = _val_paths(run)
    assert not any(p.endswith("new.png") for p in later)
    assert any("2 example(s) added" in m for m in scan_log), scan_log


def test_renamed_and_reencoded_validation_files_are_named_counted_and_left_out(folder_run, scan_log):
    from PIL import Image

    root, run, val, _ = folder_run
    renamed, reencoded = Path(val[0]), Path(val[1])
    renamed.rename(renamed.with_name("moved.png"))
    Image.open(reencoded).convert("RGB").rotate(90).save(reencoded)  # same name, other bytes
    later = _val_paths(run)
    assert str(renamed) not in later and str(reencoded) not in later and len(later) == 28
    line = next(m for m in scan_log if "missing" in m)
    assert "1 of the 30" in line and "1 changed" in line
    assert renamed.relative_to(root).as_posix() in line and reencoded.relative_to(root).as_posix() in line


def test_below_the_floor_the_command_refuses_saying_what_to_do(folder_run, run_cli):
    root, run, val, _ = folder_run
    for p in val[:6]:
        os.remove(p)
    code, _, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.05", "--dry-run")
    assert code == 1
    err = without_run_line(err)
    assert len(err.strip().splitlines()) == 1, err
    assert "24 of the 30" in err and "90% floor" in err and "--data DIR" in err


def test_rows_added_to_a_parquet_file_stay_out_of_validation(tmp_path, hf_cache, scan_log):
    import datasets

    from scan_cli.artifact import read_info
    from scan_cli.data import run_split

    (tmp_path / "p").mkdir()
    file = tmp_path / "p" / "x.parquet"
    hf_dataset(24).to_parquet(str(file))
    run = _fit(str(file), tmp_path / "run", val_fraction=0.25)
    doc = json.loads((run / "holdout.json").read_text())
    recorded = sorted(h for _, h in doc["val"])
    assert len(recorded) == 6
    new = hf_dataset(6, seed=5)  # new rows first: every old row number moves
    datasets.concatenate_datasets([new, hf_dataset(24)]).to_parquet(str(file))
    val, _ = run_split(run, read_info(run / "model.safetensors"), "val")
    from scan_cli.data.membership import row_fingerprint

    got = sorted(row_fingerprint(val.hf[int(r)][val.image_column]) for r in val.indices)
    assert got == recorded
    assert any("6 example(s) added" in m for m in scan_log), scan_log
    assert png_bytes  # the rows are real PNGs


def test_streamed_examples_added_since_fit_stay_out_of_validation(tmp_path, hf_cache, scan_log):
    """A streamed split keeps no row numbers: validation is the content-hash side fit held out, and
    rows added since whose hash falls on that side are left out and counted, as for folders."""
    import datasets

    from scan_cli.artifact import read_info
    from scan_cli.data import run_split
    from scan_cli.data.holdout import in_stream_holdout
    from scan_cli.data.membership import example_key

    N = 80  # about 20 validation rows: one missing stays above the 90 % floor
    (tmp_path / "p").mkdir()
    file = tmp_path / "p" / "x.parquet"
    hf_dataset(N).to_parquet(str(file))
    run = _fit(str(file), tmp_path / "run", val_fraction=0.25, streaming=True)
    info = read_info(run / "model.safetensors")

    def val_items():
        val, _ = run_split(run, info, "val")
        return sorted(x.numpy().tobytes() for x, _ in val)

    before = val_items()
    assert before
    new = hf_dataset(24, seed=5)
    raw = new.cast_column("image", datasets.Image(decode=False))["image"]
    added = sum(in_stream_holdout(example_key(v), 0.25, 1) for v in raw)
    assert added > 0  # some new rows hash onto the validation side
    datasets.concatenate_datasets([new, hf_dataset(N)]).to_parquet(str(file))
    assert val_items() == before
    assert any(f"{added} example(s) added" in m for m in scan_log), scan_log
    doc = json.loads((run / "holdout.json").read_text())
    assert doc["match"] == "stream" and len(doc["val"]) == len(before) and doc["train"]["count"] == N - len(before)
    old = hf_dataset(N).cast_column("image", datasets.Image(decode=False))["image"]
    on_val = [i for i, v in enumerate(old) if in_stream_holdout(example_key(v), 0.25, 1)]
    hf_dataset(N).select([i for i in range(N) if i != on_val[0]]).to_parquet(str(file))  # one removed
    later = val_items()
    assert len(later) == len(before) - 1 and set(later) <= set(before)
    assert any(f"1 of the {len(before)} examples 'scan fit' held out are missing" in m for m in scan_log), scan_log
    hf_dataset(N).select(range(N // 2, N)).to_parquet(str(file))  # the first half removed: below the floor
    with pytest.raises(ScanError, match="below the 90% floor"):
        val_items()


def test_a_relative_data_path_means_the_recorded_folder_from_anywhere(tmp_path, monkeypatch, run_cli):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    make_color_folder(Path("imgs"), per_class=20, size=8)
    run = _fit("imgs", tmp_path / "run")
    monkeypatch.chdir(tmp_path / "b")
    make_color_folder(Path("imgs"), per_class=5, size=8, seed=9)  # the decoy: same name, other images
    code, out, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.05", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["data"]["source"] == str(tmp_path / "a" / "imgs") and doc["n_val"] == 30
    assert str(tmp_path / "a" / "imgs") in err  # shown


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_dry_run_writes_nothing_and_caches_are_named_by_the_membership(folder_run, run_cli):
    root, run, _, _ = folder_run
    before = _listing(run)
    code, _, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.05", "--dry-run")
    assert code == 0, err
    assert _listing(run) == before
    code, _, err = run_cli("calibrate", "--run", str(run), "--max-drop", "0.05")
    assert code == 0, err
    digest = json.loads((run / "holdout.json").read_text())["digest"]
    assert any(p.name.startswith("val-outputs-v3-") and p.name.endswith(f"-{digest}.safetensors")
               for p in (run / "cache").iterdir())


def test_evaluate_takes_a_folder_holding_only_test_or_only_val(trained_run, tmp_path, run_cli):
    make_color_folder(tmp_path / "t" / "test", per_class=4, size=8, seed=3)
    code, out, err = run_cli("evaluate", "--run", str(trained_run), "--data", str(tmp_path / "t"), "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 12
    make_color_folder(tmp_path / "v" / "val", per_class=3, size=8, seed=4)
    code, out, err = run_cli("evaluate", "--run", str(trained_run), "--data", str(tmp_path / "v"), "--split", "val",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 9


def test_calibrate_on_new_labelled_data_uses_all_of_it_and_says_which(trained_run, tmp_path, run_cli):
    run = copy_of(trained_run, tmp_path)
    new = make_color_folder(tmp_path / "new", per_class=7, size=8, seed=11)
    code, out, err = run_cli("calibrate", "--run", str(run), "--data", str(new), "--max-drop", "0.05", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n_val"] == 21
    assert doc["data"]["source"] == str(new.absolute()) and doc["data"]["digest"]
    assert doc["data"]["held_out_by_fit"] is False
    from scan_cli.artifact import read_info

    assert read_info(run / "model.safetensors").calibration["data"]["source"] == str(new.absolute())


def test_a_run_without_a_record_keeps_working_with_a_note(folder_run, scan_log):
    from scan_cli.artifact import read_info
    from scan_cli.data import run_split

    root, run, val, _ = folder_run
    info = read_info(run / "model.safetensors")
    recipe = dict(info.recipe, data_split={k: v for k, v in info.recipe["data_split"].items()
                                           if k not in ("root", "membership")})
    import dataclasses

    dataset, _ = run_split(run, dataclasses.replace(info, recipe=recipe), "val")
    assert sorted(dataset.paths) == val
    assert any("before 'scan fit' recorded" in m for m in scan_log)


def test_cached_test_outputs_follow_the_test_images(tmp_path, run_cli):
    """`scan evaluate` caches the test split's exit outputs by what the images are: an image added,
    changed or removed since is never answered from outputs of the test split as it was."""
    from PIL import Image

    root = tmp_path / "imgs"
    make_color_folder(root / "train", per_class=8, size=8)
    make_color_folder(root / "test", per_class=4, size=8, seed=3)
    run = _fit(str(root), tmp_path / "run")

    def evaluate():
        code, out, err = run_cli("evaluate", "--run", str(run), "--json")
        assert code == 0, err
        return json.loads(out)["n"], sorted(p.name for p in (run / "cache").glob("test-outputs-*"))

    n, caches = evaluate()
    assert n == 12 and len(caches) == 1
    assert evaluate() == (12, caches)  # unchanged images: the cache is used, no second one
    Image.new("RGB", (8, 8), (40, 40, 220)).save(root / "test" / "blue" / "new.png")
    n, added = evaluate()
    assert n == 13 and len(added) == 2
    Image.new("RGB", (8, 8), (220, 30, 30)).save(root / "test" / "blue" / "0.png")  # same name, other image
    n, changed = evaluate()
    assert n == 13 and len(changed) == 3
    os.remove(root / "test" / "blue" / "new.png")
    os.remove(root / "test" / "blue" / "0.png")
    n, removed = evaluate()
    assert n == 11 and len(removed) == 4
