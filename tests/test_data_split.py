"""CUB-200-2011 (official files and train_test_split.txt) and `vmbench data split` alternative splits."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.data import DataError, build_loaders, get_dataset_info, list_datasets, make_split, stratified_split

# (train, test) images per class: enough spread to see the per-class rounding
CLASS_SIZES = {"001.Albatross": (10, 3), "002.Auklet": (25, 2), "003.Blackbird": (2, 2), "004.Bobolink": (1, 1)}


def _write_cub(root: Path, sizes: dict = CLASS_SIZES) -> Path:
    """A tiny CUB_200_2011 folder of 8×8 JPEGs; in each class the last n_test images are official test images."""
    from PIL import Image

    folder = root / "CUB_200_2011"
    files: dict[str, list[str]] = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [],
                                   "classes.txt": []}
    image_id = 0
    for class_id, (name, (n_train, n_test)) in enumerate(sizes.items(), 1):
        files["classes.txt"].append(f"{class_id} {name}")
        (folder / "images" / name).mkdir(parents=True)
        for k in range(n_train + n_test):
            image_id += 1
            rel = f"{name}/{name[4:]}_{k:04d}.jpg"
            Image.new("RGB", (8, 8), (image_id % 256, 40 * class_id, 0)).save(folder / "images" / rel, "JPEG")
            files["images.txt"].append(f"{image_id} {rel}")
            files["image_class_labels.txt"].append(f"{image_id} {class_id}")
            files["train_test_split.txt"].append(f"{image_id} {0 if k >= n_train else 1}")
    for fname, lines in files.items():
        (folder / fname).write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def cub(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("VMBENCH_DATA", raising=False)
    _write_cub(tmp_path)
    return tmp_path  # the data root


def _labels(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


# ---------------------------------------------------------------------------------------------------------
# the official split
# ---------------------------------------------------------------------------------------------------------
def test_cub_official_split(cub):
    info = get_dataset_info("cub200", str(cub))
    assert (info.kind, info.num_classes, info.img_size, info.val_split) == ("cub200", 4, 448, "test")
    assert (info.train_size, info.val_size) == (38, 8) and info.path == str(cub / "CUB_200_2011")
    assert info.classes == tuple(CLASS_SIZES) and info.split_file is None
    train_loader, val_loader = build_loaders(info, batch_size=64, img_size=16)
    assert Counter(_labels(train_loader)) == {0: 10, 1: 25, 2: 2, 3: 1}
    assert _labels(val_loader) == [0, 0, 0, 1, 1, 2, 2, 3]


def test_cub_bad_metadata_is_one_line(cub):
    folder = cub / "CUB_200_2011"
    labels = folder / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")  # last image has no class
    with pytest.raises(DataError) as err:
        get_dataset_info("cub200", str(cub))
    assert "\n" not in str(err.value) and str(labels) in str(err.value) and "image 46" in str(err.value)
    (folder / "train_test_split.txt").write_text("1 yes\n")
    labels.write_text("oops\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt:1: expected '<image_id> <class_id>'"):
        get_dataset_info("cub200", str(cub))


# ---------------------------------------------------------------------------------------------------------
# stratified splits
# ---------------------------------------------------------------------------------------------------------
def test_stratified_split_counts_per_class():
    sizes = {0: 30, 1: 29, 2: 25, 3: 10, 4: 2, 5: 1, 6: 15}
    labels = [c for c, n in sizes.items() for _ in range(n)]
    is_val = stratified_split(labels, 0.1, seed=0)
    per_class = Counter(c for c, v in zip(labels, is_val) if v)
    # round half up (2.5 -> 3, 1.5 -> 2), at least 1 where a class has 2+, none from a single-image class
    assert dict(per_class) == {0: 3, 1: 3, 2: 3, 3: 1, 4: 1, 6: 2}
    assert stratified_split(labels, 0.1, seed=0) == is_val  # deterministic
    assert stratified_split(labels, 0.1, seed=1) != is_val  # another seed, another draw
    # every class keeps a training image even at a large fraction
    big = stratified_split(labels, 0.99, seed=0)
    assert all(sum(1 for c, v in zip(labels, big) if c == k and not v) >= 1 for k in sizes)


def test_make_split_writes_a_deterministic_file(cub):
    out = make_split("cub200", str(cub), 0.1, 0)
    path = Path(out["path"])
    assert path == cub / "CUB_200_2011" / "vmbench_splits" / "val0.1-seed0.txt"
    assert out["dataset"] == "cub200:split-val0.1-seed0" and (out["train"], out["val"], out["classes"]) == (33, 5, 4)
    first = path.read_bytes()
    make_split("cub200", str(cub), 0.1, 0)
    assert path.read_bytes() == first  # same seed, same file
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left behind
    other = Path(make_split("cub200", str(cub), 0.1, 1)["path"])
    assert other.name == "val0.1-seed1.txt" and other.read_text().splitlines()[2:] != first.decode().splitlines()[2:]
    rows = [ln.split() for ln in first.decode().splitlines() if not ln.startswith("#")]
    official_train = {i for i, f in (ln.split() for ln in (cub / "CUB_200_2011" / "train_test_split.txt")
                                     .read_text().splitlines()) if f == "1"}
    assert {i for i, _ in rows} == official_train  # the official test images are in neither part


def test_split_variant_dataset(cub):
    with pytest.raises(DataError) as err:
        get_dataset_info("cub200:split-val0.1-seed0", str(cub))
    assert "vmbench data split cub200 --val-frac 0.1 --seed 0" in str(err.value) and "\n" not in str(err.value)
    make_split("cub200", str(cub), 0.1, 0)
    info = get_dataset_info("cub200:split-val0.10-seed0", str(cub))  # spelled differently, same split
    assert info.name == "cub200:split-val0.1-seed0" and info.val_split == "val0.1-seed0"
    assert (info.train_size, info.val_size, info.num_classes) == (33, 5, 4)
    train_loader, val_loader = build_loaders(info, batch_size=64, img_size=16)
    assert Counter(_labels(val_loader)) == {0: 1, 1: 3, 2: 1}
    assert Counter(_labels(train_loader)) == {0: 9, 1: 22, 2: 1, 3: 1}
    rows = {r["name"]: r for r in list_datasets(str(cub))}
    assert rows["cub200:split-val0.1-seed0"]["found"] and rows["cub200"]["found"]


@pytest.mark.parametrize("name", ["cub200:", "cub200:split-val1.5-seed0", "cub200:split-0.1",
                                  "cifar10:split-val0.1-seed0"])
def test_bad_variant_names(cub, name):
    with pytest.raises(DataError) as err:
        get_dataset_info(name, str(cub))
    assert "\n" not in str(err.value) and "split-val" in str(err.value)


def test_split_file_must_match_the_dataset(cub):
    path = Path(make_split("cub200", str(cub), 0.2, 3)["path"])
    path.write_text("1 1\n")
    with pytest.raises(DataError, match=r"does not match the training images .*--val-frac 0.2 --seed 3"):
        get_dataset_info("cub200:split-val0.2-seed3", str(cub))


# ---------------------------------------------------------------------------------------------------------
# vmbench data split
# ---------------------------------------------------------------------------------------------------------
def test_cli_data_split(cub):
    r = CliRunner().invoke(main, ["data", "split", "cub200", "--val-frac", "0.1", "--seed", "0",
                                  "--data-root", str(cub)])
    assert r.exit_code == 0, r.output
    assert (cub / "CUB_200_2011" / "vmbench_splits" / "val0.1-seed0.txt").is_file()
    assert "cub200:split-val0.1-seed0" in r.output
    r = CliRunner().invoke(main, ["data", "split", "cub200", "--seed", "2", "--data-root", str(cub), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["dataset"] == "cub200:split-val0.1-seed2"
    r = CliRunner().invoke(main, ["datasets", "--data-root", str(cub), "--json"])
    assert {"cub200:split-val0.1-seed0", "cub200:split-val0.1-seed2"} <= {row["name"] for row in json.loads(r.output)}
    r = CliRunner().invoke(main, ["datasets", "--data-root", str(cub)])
    assert r.exit_code == 0 and "cub200:split-val0.1-seed0" in r.output


@pytest.mark.parametrize("args", [
    ["cub200", "--val-frac", "1.5"],
    ["cub200", "--val-frac", "0"],
    ["cub200", "--seed", "-1"],
    ["cifar10"],
    ["cub200", "--data-root", "MISSING"],
])
def test_cli_data_split_user_errors(cub, args):
    args = [a.replace("MISSING", str(cub / "nowhere")) for a in args]
    if "--data-root" not in args:
        args += ["--data-root", str(cub)]
    r = CliRunner().invoke(main, ["data", "split", *args])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert not (cub / "CUB_200_2011" / "vmbench_splits").exists()
