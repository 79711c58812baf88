"""Dataset registry: built-in shapes, fake, ImageFolder trees, and the errors users see."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from vmbench.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAPE_CLASSES,
    DataError,
    FakeDataset,
    ShapesDataset,
    build_loaders,
    get_dataset_info,
    list_datasets,
)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------
def test_shapes_deterministic_and_prefix_stable():
    a, b = ShapesDataset("train", 300, 32), ShapesDataset("train", 600, 32)
    for i in (0, 17, 249, 250, 299):
        ia, la = a.raw(i)
        ib, lb = b.raw(i)
        assert la == lb and torch.equal(ia, ib)
    other_seed = ShapesDataset("train", 300, 32, seed=1)
    assert not torch.equal(a.raw(0)[0], other_seed.raw(0)[0])


def test_shapes_train_val_disjoint():
    train, val = ShapesDataset("train", 500, 32), ShapesDataset("val", 500, 32)
    train_hashes = {_digest(train.raw(i)[0]) for i in range(len(train))}
    val_hashes = {_digest(val.raw(i)[0]) for i in range(len(val))}
    assert len(train_hashes) == 500 and len(val_hashes) == 500
    assert not train_hashes & val_hashes


def test_shapes_balanced_classes():
    ds = ShapesDataset("train", 1000, 16)
    counts = torch.bincount(torch.tensor(ds.targets()), minlength=len(SHAPE_CLASSES))
    assert counts.tolist() == [100] * len(SHAPE_CLASSES)


def test_shapes_values_and_size():
    ds = ShapesDataset("val", 20, 48)
    img, label = ds[3]
    assert img.shape == (3, 48, 48) and img.dtype == torch.float32
    assert 0 <= label < 10
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert (img >= (0 - mean) / std - 1e-5).all() and (img <= (1 - mean) / std + 1e-5).all()
    raw, _ = ds.raw(3)
    assert raw.dtype == torch.uint8 and raw.float().std() > 10  # not a blank image
    with pytest.raises(IndexError):
        ds.raw(20)


def test_shapes_colour_alone_does_not_solve_it():
    """A linear classifier on the mean colour of each image stays near chance (10 %)."""
    train, val = ShapesDataset("train", 1000, 32), ShapesDataset("val", 500, 32)

    def feats(ds):
        x = torch.stack([ds.raw(i)[0].float().mean(dim=(1, 2)) / 255 for i in range(len(ds))])
        return torch.cat([x, torch.ones(len(ds), 1)], 1), torch.tensor(ds.targets())

    xt, yt = feats(train)
    xv, yv = feats(val)
    w = torch.linalg.lstsq(xt, torch.nn.functional.one_hot(yt, 10).float()).solution
    acc = ((xv @ w).argmax(1) == yv).float().mean().item()
    assert acc < 0.2


def test_shapes_info_and_loaders():
    info = get_dataset_info("shapes")
    assert (info.num_classes, info.img_size, info.kind, info.path) == (10, 64, "builtin", None)
    info = dataclasses.replace(info, train_size=300, val_size=50)  # a small slice keeps the test fast
    train_loader, val_loader = build_loaders(info, batch_size=8, img_size=24, seed=0)
    x, y = next(iter(train_loader))
    assert x.shape == (8, 3, 24, 24) and y.shape == (8,) and y.dtype == torch.int64
    # same seed, same shuffle order
    again, _ = build_loaders(info, batch_size=8, img_size=24, seed=0)
    assert torch.equal(next(iter(again))[1], y)
    xv, _ = next(iter(val_loader))
    assert torch.equal(xv[0], val_loader.dataset[0][0])


# ---------------------------------------------------------------------------------------------------------
# fake
# ---------------------------------------------------------------------------------------------------------
def test_fake():
    info = get_dataset_info("fake")
    assert (info.num_classes, info.img_size, info.kind) == (1000, 224, "synthetic")
    ds = FakeDataset(10, 16, 5, seed=3)
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and 0 <= y < 5
    assert torch.equal(x, FakeDataset(10, 16, 5, seed=3)[4][0])
    train_loader, val_loader = build_loaders(info, batch_size=4, img_size=16)
    xb, yb = next(iter(val_loader))
    assert xb.shape == (4, 3, 16, 16) and int(yb.max()) < 1000


# ---------------------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------------------
def _write_tree(root: Path, classes=("cat", "dog"), per_class=3, val_name="val", size=20):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", val_name):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = (torch.rand(size, size + 4, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_imagefolder_happy_path(tmp_path):
    root = _write_tree(tmp_path / "pets")
    info = get_dataset_info(str(root))
    assert (info.num_classes, info.kind, info.val_split, info.classes) == (2, "imagefolder", "val", ("cat", "dog"))
    train_loader, val_loader = build_loaders(info, batch_size=4, img_size=32, seed=0)
    x, y = next(iter(train_loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    xs, ys = zip(*val_loader)
    assert sum(len(v) for v in ys) == 6 and torch.cat(ys).tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_test_split_and_named_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("VMBENCH_DATA", raising=False)
    _write_tree(tmp_path / "imagenet", classes=("n01", "n02", "n03"), per_class=1, val_name="test")
    info = get_dataset_info("imagenet", str(tmp_path))
    assert info.val_split == "test" and info.num_classes == 3 and info.path == str(tmp_path / "imagenet")
    monkeypatch.setenv("VMBENCH_DATA", str(tmp_path))
    assert get_dataset_info("imagenet").path == str(tmp_path / "imagenet")
    rows = {r["name"]: r for r in list_datasets(str(tmp_path))}
    assert rows["shapes"]["found"] and rows["fake"]["found"]
    assert rows["imagenet"]["found"] and not rows["cub200"]["found"]
    assert "cub200/train/<class>" in rows["cub200"]["layout"]


def test_val_classes_subset_keep_train_indices(tmp_path):
    root = _write_tree(tmp_path / "d", classes=("a", "b", "c"), per_class=1)
    import shutil

    shutil.rmtree(root / "val" / "a")
    info = get_dataset_info(str(root))
    _, val_loader = build_loaders(info, batch_size=8, img_size=16)
    _, y = next(iter(val_loader))
    assert y.tolist() == [1, 2]


@pytest.mark.parametrize("case", ["missing", "no_train", "no_val", "no_classes", "extra_val_class"])
def test_folder_layout_errors(tmp_path, case):
    root = tmp_path / "ds"
    if case != "missing":
        root.mkdir()
    if case in ("no_val", "no_classes", "extra_val_class"):
        (root / "train").mkdir()
    if case in ("no_classes", "extra_val_class"):
        (root / "val" / "x").mkdir(parents=True)
    if case == "extra_val_class":
        (root / "train" / "y").mkdir()
    with pytest.raises(DataError) as err:
        get_dataset_info(str(root))
    msg = str(err.value)
    assert str(root) in msg and "\n" not in msg
    assert "train" in msg and "val" in msg  # the expected layout is spelled out


def test_named_dataset_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("VMBENCH_DATA", raising=False)
    with pytest.raises(DataError, match="VMBENCH_DATA"):
        get_dataset_info("imagenet", None)
    with pytest.raises(DataError) as err:
        get_dataset_info("imagenet", str(tmp_path))
    assert str(tmp_path / "imagenet") in str(err.value) and "<wnid>" in str(err.value)
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        get_dataset_info("nope")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        get_dataset_info("cifar10", str(tmp_path))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_names_the_file(tmp_path, workers):
    root = _write_tree(tmp_path / "d", per_class=1)
    bad = root / "val" / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    info = get_dataset_info(str(root))
    _, val_loader = build_loaders(info, batch_size=4, img_size=16, num_workers=workers)
    with pytest.raises(DataError) as err:
        list(val_loader)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg
