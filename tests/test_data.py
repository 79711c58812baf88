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
    Augment,
    DataError,
    FakeDataset,
    ShapesDataset,
    SkipBadImages,
    bad_image_count,
    bad_image_paths,
    build_datasets,
    build_loaders,
    eval_transform_info,
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


def test_fake_with_a_training_size():
    info = get_dataset_info("fake:40")
    assert (info.name, info.train_size, info.val_size, info.kind) == ("fake:40", 40, 256, "synthetic")
    train_loader, _ = build_loaders(info, batch_size=8, img_size=16)
    assert len(train_loader.dataset) == 40 and len(train_loader) == 5
    for bad in ("fake:0", "fake:x", "fake:-3", "fake:"):
        with pytest.raises(DataError, match="expected fake:<number of training images>"):
            get_dataset_info(bad)


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
    assert "CUB_200_2011/" in rows["cub200"]["layout"] and "train_test_split.txt" in rows["cub200"]["layout"]
    assert rows["cub200"]["path"] == str(tmp_path / "CUB_200_2011")  # where it is expected


def test_val_classes_subset_keep_train_indices(tmp_path):
    root = _write_tree(tmp_path / "d", classes=("a", "b", "c"), per_class=1)
    import shutil

    shutil.rmtree(root / "val" / "a")
    info = get_dataset_info(str(root))
    _, val_loader = build_loaders(info, batch_size=8, img_size=16)
    _, y = next(iter(val_loader))
    assert y.tolist() == [1, 2]
    train_loader, val_loader = build_loaders(info, batch_size=8, img_size=16, val_only=True)
    assert train_loader is None and next(iter(val_loader))[1].tolist() == [1, 2]


def test_val_only_never_lists_the_training_images(tmp_path, monkeypatch):
    """Evaluation builds its loader without scanning the training split (slow on ImageNet)."""
    import torchvision.datasets.folder as folder

    root = _write_tree(tmp_path / "d", classes=("a", "b"), per_class=2)
    info = get_dataset_info(str(root))
    listed = []
    make_dataset = folder.make_dataset
    monkeypatch.setattr(folder, "make_dataset", lambda d, *a, **k: listed.append(str(d)) or make_dataset(d, *a, **k))
    _, val_loader = build_loaders(info, batch_size=8, img_size=16, val_only=True)
    assert next(iter(val_loader))[1].tolist() == [0, 0, 1, 1]
    assert listed and not any(d.endswith("train") for d in listed), listed


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


# ---------------------------------------------------------------------------------------------------------
# torchvision on-disk formats (tiny fakes); the md5 checks of CIFAR / Flowers102 are patched out
# ---------------------------------------------------------------------------------------------------------
def _jpeg(path: Path, value: int, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value % 256, 40, 200)).save(path, "JPEG")


def _write_aircraft(root: Path, variants=("707-320", "A300B4", "Boeing 747"), per_split=(3, 2)) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    n = 0
    for split, per_class in zip(("trainval", "test"), per_split):
        lines = []
        for v in variants:
            for _ in range(per_class):
                n += 1
                _jpeg(data / "images" / f"{n:07d}.jpg", n)
                lines.append(f"{n:07d} {v}\n")
        (data / f"images_variant_{split}.txt").write_text("".join(lines))
    return data.parent


def _write_cifar(root: Path, kind: str, n_train=6, n_test=4) -> None:
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if kind == "cifar10" else "fine_labels"
    num = 10 if kind == "cifar10" else 100

    def batch(name, n, first):
        labels = [(first + i) % num for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), key: labels}, f)

    if kind == "cifar10":
        for i in range(1, 6):
            batch(f"data_batch_{i}", n_train, i)
        batch("test_batch", n_test, 0)
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        batch("train", n_train, 0)
        batch("test", n_test, 50)
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f)


def test_fgvc_aircraft(tmp_path):
    _write_aircraft(tmp_path)
    for name in ("fgvc_aircraft", "aircraft"):  # the short alias resolves to the same dataset
        info = get_dataset_info(name, str(tmp_path))
        assert (info.name, info.kind, info.num_classes) == ("fgvc_aircraft", "fgvc_aircraft", 3)
        assert (info.train_size, info.val_size, info.val_split) == (9, 6, "test")
        assert info.path == str(tmp_path / "fgvc-aircraft-2013b")
    train_loader, val_loader = build_loaders(info, batch_size=4, img_size=16)
    x, _ = next(iter(train_loader))
    assert x.shape == (4, 3, 16, 16)
    assert torch.cat([y for _, y in val_loader]).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_formats(tmp_path, monkeypatch, kind):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    _write_cifar(tmp_path, kind)
    info = get_dataset_info(kind, str(tmp_path))
    assert (info.kind, info.num_classes, info.img_size) == ("cifar", 10 if kind == "cifar10" else 100, 32)
    train, val = build_datasets(info, img_size=32)
    assert len(train) == (30 if kind == "cifar10" else 6) and len(val) == 4
    x, y = val[1]
    assert x.shape == (3, 32, 32) and y == (1 if kind == "cifar10" else 51)
    # the older <root>/<name>/<torchvision folder> location keeps working
    (tmp_path / kind).mkdir()
    folder = next(tmp_path.glob("cifar-*"))
    folder.rename(tmp_path / kind / folder.name)
    assert get_dataset_info(kind, str(tmp_path)).path == str(tmp_path / kind / folder.name)


def test_cifar_bad_checksum_is_one_line(tmp_path):
    _write_cifar(tmp_path, "cifar10")  # real md5 check: the fake batches fail it
    info = get_dataset_info("cifar10", str(tmp_path))
    with pytest.raises(DataError) as err:
        build_datasets(info)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-batches-py") in msg and "corrupted" in msg
    assert "download" not in msg


@pytest.mark.parametrize("name, folder, must_mention", [
    ("stanford_cars", "stanford_cars", "cars_test_annos_withlabels.mat"),
    ("cars", "stanford_cars", "devkit/cars_meta.mat"),
    ("fgvc_aircraft", "fgvc-aircraft-2013b", "images_variant_trainval.txt"),
    ("aircraft", "fgvc-aircraft-2013b", "variants.txt"),
    ("flowers102", "flowers-102", "setid.mat"),
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "meta"),
    ("cub200", "CUB_200_2011", "train_test_split.txt"),
])
def test_missing_named_dataset_is_one_line(tmp_path, name, folder, must_mention):
    with pytest.raises(DataError) as err:
        get_dataset_info(name, str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / folder) in msg and must_mention in msg
    # the folder exists but lacks a required file: the message names that file
    (tmp_path / folder).mkdir()
    with pytest.raises(DataError) as err:
        get_dataset_info(name, str(tmp_path))
    assert "\n" not in str(err.value) and str(tmp_path / folder) in str(err.value)


def test_old_imagefolder_tree_is_pointed_to(tmp_path):
    _write_tree(tmp_path / "cars", per_class=1)
    with pytest.raises(DataError, match=r"looks like an ImageFolder tree: pass that path"):
        get_dataset_info("cars", str(tmp_path))
    assert get_dataset_info(str(tmp_path / "cars")).kind == "imagefolder"


def _scipy():
    try:
        import scipy.io
    except ImportError:
        pytest.skip("scipy is not installed (torchvision reads the Stanford Cars / Flowers102 .mat files with it)")
    return scipy.io


def test_mat_datasets_without_scipy_say_so(tmp_path):
    import importlib.util

    if importlib.util.find_spec("scipy") is not None:
        pytest.skip("scipy is installed")
    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for f in ("imagelabels.mat", "setid.mat"):
        (folder / f).write_bytes(b"")
    with pytest.raises(DataError, match=r"needs? scipy") as err:
        get_dataset_info("flowers102", str(tmp_path))
    assert "\n" not in str(err.value)


def test_stanford_cars(tmp_path):
    import numpy as np

    sio = _scipy()
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(["a", "b", "c"], dtype=object)})
    for split, mat, n in (("train", base / "devkit" / "cars_train_annos.mat", 6),
                          ("test", base / "cars_test_annos_withlabels.mat", 3)):
        names = [f"{i:05d}.jpg" for i in range(n)]
        for i, f in enumerate(names):
            _jpeg(base / f"cars_{split}" / f, i)
        annos = np.array([(f, i % 3 + 1) for i, f in enumerate(names)], dtype=[("fname", object), ("class", int)])
        sio.savemat(mat, {"annotations": annos})
    info = get_dataset_info("cars", str(tmp_path))
    assert (info.name, info.num_classes, info.path) == ("stanford_cars", 196, str(base))
    train, val = build_datasets(info, img_size=16)
    assert len(train) == 6 and [val[i][1] for i in range(3)] == [0, 1, 2]


def test_flowers102(tmp_path, monkeypatch):
    import numpy as np

    sio = _scipy()
    import torchvision.datasets.flowers102 as tv_flowers

    monkeypatch.setattr(tv_flowers, "check_integrity", lambda *a, **k: True)
    base = tmp_path / "flowers-102"
    for i in range(1, 13):
        _jpeg(base / "jpg" / f"image_{i:05d}.jpg", i)
    sio.savemat(base / "imagelabels.mat", {"labels": np.array([(i - 1) % 3 + 1 for i in range(1, 13)])})
    sio.savemat(base / "setid.mat", {"trnid": np.array([1, 2, 3]), "valid": np.array([4, 5, 6]),
                                     "tstid": np.arange(7, 13)})
    info = get_dataset_info("flowers102", str(tmp_path))
    train, val = build_datasets(info, img_size=16)
    assert len(train) == 6 and len(val) == 6  # trains on train+val, evaluates on test
    assert [val[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]


def test_list_datasets_found_and_expected(tmp_path, monkeypatch):
    monkeypatch.delenv("VMBENCH_DATA", raising=False)
    _write_aircraft(tmp_path)
    rows = {r["name"]: r for r in list_datasets(str(tmp_path))}
    assert {"imagenet", "cub200", "stanford_cars", "fgvc_aircraft", "flowers102", "cifar10", "cifar100"} <= set(rows)
    assert rows["fgvc_aircraft"]["found"] and rows["fgvc_aircraft"]["aliases"] == ["aircraft"]
    assert rows["fgvc_aircraft"]["num_classes"] == 3 and rows["fgvc_aircraft"]["error"] is None
    assert not rows["stanford_cars"]["found"] and rows["stanford_cars"]["path"] == str(tmp_path / "stanford_cars")
    assert rows["cifar10"]["path"] == str(tmp_path / "cifar-10-batches-py") and rows["cifar10"]["error"]
    no_root = {r["name"]: r for r in list_datasets(None)}
    assert no_root["cifar10"]["path"] is None and "VMBENCH_DATA" in no_root["cifar10"]["error"]


# ---------------------------------------------------------------------------------------------------------
# unreadable images: stop (default) or skip and count
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_skip_bad_images_counts_them(tmp_path, workers):
    root = _write_tree(tmp_path / "d", per_class=3, size=8)
    bad_train = root / "train" / "cat" / "9_broken.png"
    bad_val = root / "val" / "dog" / "0_broken.png"
    bad_train.write_bytes(b"not an image")
    bad_val.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    info = get_dataset_info(str(root))
    train_loader, val_loader = build_loaders(info, batch_size=7, img_size=16, num_workers=workers,
                                             skip_bad_images=True)
    assert bad_image_count(train_loader, val_loader) == 0
    for _ in range(2):  # two epochs: each bad file is counted once
        sizes = [len(y) for _, y in train_loader]
        assert sizes == [7]  # the unreadable image was replaced by a readable one: the batch stays full
        ys = torch.cat([y for _, y in val_loader]).tolist()
        assert ys == [0, 0, 0, 1, 1, 1]  # 7 files, the unreadable one left out
    assert bad_image_count(train_loader) == 1 and bad_image_count(val_loader) == 1
    assert bad_image_paths(train_loader, val_loader) == [str(bad_train), str(bad_val)]
    # the default still stops on the first unreadable image
    _, strict_val = build_loaders(info, batch_size=4, img_size=16)
    with pytest.raises(DataError, match="0_broken.png"):
        list(strict_val)
    assert bad_image_count(strict_val) == 0


def test_skip_bad_images_all_bad_batch_is_empty(tmp_path):
    root = _write_tree(tmp_path / "d", classes=("a",), per_class=1, size=8)
    for i in range(2):
        (root / "val" / "a" / f"x{i}.png").write_bytes(b"junk")
    info = get_dataset_info(str(root))
    _, val_loader = build_loaders(info, batch_size=2, img_size=16, skip_bad_images=True)
    batches = list(val_loader)
    assert [tuple(x.shape) for x, _ in batches] == [(1, 3, 16, 16), (0, 3, 16, 16)]
    assert bad_image_count(val_loader) == 2


def test_skip_mode_on_datasets_directly(tmp_path):
    root = _write_tree(tmp_path / "d", classes=("a", "b"), per_class=1, size=8)
    (root / "train" / "b" / "zz.png").write_bytes(b"junk")  # the last item: replacement wraps to item 0
    train, val = build_datasets(get_dataset_info(str(root)), img_size=16, skip_bad_images=True)
    assert isinstance(train, SkipBadImages) and isinstance(val, SkipBadImages)
    assert train[2][1] == train[0][1] == 0
    assert train.bad_count() == 1 and train.bad_paths() == [str(root / "train" / "b" / "zz.png")]


# ---------------------------------------------------------------------------------------------------------
# evaluation preprocessing follows the model's pretrained cfg
# ---------------------------------------------------------------------------------------------------------
def test_eval_transform_info(tmp_path):
    root = _write_tree(tmp_path / "d", classes=("a",), per_class=1, size=40)
    info = get_dataset_info(str(root))
    cfg = {"crop_pct": 0.8, "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    ev = eval_transform_info(info, 32, cfg)
    assert ev == dict(input_size=[3, 32, 32], interpolation="bilinear", crop_pct=0.8, crop_mode="center", resize=40,
                      mean=[0.5] * 3, std=[0.25] * 3)
    default = eval_transform_info(info, 224)  # no model cfg: timm's defaults
    assert default["crop_pct"] == 0.875 and default["resize"] == 256 and default["mean"] == list(IMAGENET_MEAN)
    resized = eval_transform_info(info, 32, cfg, Augment(val_resize=36))
    assert resized["resize"] == 36 and resized["crop_pct"] == pytest.approx(32 / 36)
    assert resized["interpolation"] == "bilinear" and resized["mean"] == [0.5] * 3
    # what is reported is what is applied: a flat grey image normalises with the model's mean/std
    from PIL import Image

    Image.new("RGB", (40, 40), (128, 128, 128)).save(root / "val" / "a" / "0.png")
    _, val = build_datasets(info, img_size=32, model_cfg=cfg)
    assert torch.allclose(val[0][0], torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.25), atol=1e-5)
    shapes = eval_transform_info(get_dataset_info("shapes"), 24)
    assert shapes["input_size"] == [3, 24, 24] and shapes["crop_pct"] is None
    assert shapes["mean"] == list(IMAGENET_MEAN)


def test_light_import():
    """`vmbench datasets` and `vmbench data split` must not import torch (fast start)."""
    import subprocess
    import sys

    code = ("import sys; from vmbench.cli import main\n"
            "for argv in (['datasets', '--json'], ['data', 'split', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
