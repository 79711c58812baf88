"""Which datasets vmbench knows and where each one lives: the registry look-up (get_dataset_info, cheap, reads no
image), the catalogue (list_datasets) and alternative splits (make_split). Imports no torch."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ._common import DataError, DatasetInfo, _read_lines
from .builtin import (FAKE_CLASSES, FAKE_IMG_SIZE, FAKE_TRAIN_SIZE, FAKE_VAL_SIZE, SHAPE_CLASSES,
                      SHAPES_DET_IMG_SIZE, SHAPES_DET_TRAIN_SIZE, SHAPES_DET_VAL_SIZE, SHAPES_IMG_SIZE,
                      SHAPES_TRAIN_SIZE, SHAPES_VAL_SIZE)
from .fgvc import SPLITS_DIR, _cub_info, write_split
from .coco import COCO_LAYOUT, inspect_coco, is_coco_folder
from .folders import _FOLDER_LAYOUT, _inspect_folder

@dataclass(frozen=True)
class _Named:
    """A registered local dataset: its folder under the data root and what that folder must hold."""

    kind: str  # DatasetInfo.kind
    folder: str  # found at <root>/<folder>, or at <root>/<name>/<folder> when the two names differ
    required: tuple[str, ...]  # files / folders inside it that get_dataset_info checks (ImageFolder: none)
    num_classes: int
    img_size: int
    layout: str  # what <folder> holds, for messages
    protocol: str  # which official splits train and evaluate
    needs_scipy: bool = False  # torchvision reads the annotations from .mat files


_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_NAMED: dict[str, _Named] = {
    "imagenet": _Named(
        "imagefolder", "imagenet", (), 1000, 224, "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*",
        "train / val"),
    "cub200": _Named(
        "cub200", "CUB_200_2011", ("images.txt", "image_class_labels.txt", "train_test_split.txt", "images"),
        200, 448, "CUB_200_2011/ with images.txt, image_class_labels.txt, train_test_split.txt and "
        "images/<class>/*.jpg (the official CUB-200-2011 archive)",
        "official train / test (train_test_split.txt)"),
    "stanford_cars": _Named(
        "stanford_cars", "stanford_cars",
        ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "cars_train",
         "cars_test"),
        196, 448, "stanford_cars/ with devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
        "cars_test_annos_withlabels.mat, cars_train/ and cars_test/ (torchvision's StanfordCars format)",
        "train / test", needs_scipy=True),
    "fgvc_aircraft": _Named(
        "fgvc_aircraft", "fgvc-aircraft-2013b",
        ("data/variants.txt", "data/images_variant_trainval.txt", "data/images_variant_test.txt", "data/images"),
        100, 448, "fgvc-aircraft-2013b/data/ with variants.txt, images_variant_trainval.txt, "
        "images_variant_test.txt and images/*.jpg (torchvision's FGVCAircraft format)",
        "trainval / test, variant level (100 classes)"),
    "flowers102": _Named(
        "flowers102", "flowers-102", ("jpg", "imagelabels.mat", "setid.mat"), 102, 224,
        "flowers-102/ with jpg/image_*.jpg, imagelabels.mat and setid.mat (torchvision's Flowers102 format)",
        "train+val / test", needs_scipy=True),
    "cifar10": _Named(
        "cifar", "cifar-10-batches-py", _CIFAR10_FILES, 10, 32,
        "cifar-10-batches-py/ with data_batch_1…5, test_batch and batches.meta (torchvision's CIFAR-10 format)",
        "train / test"),
    "cifar100": _Named(
        "cifar", "cifar-100-python", ("train", "test", "meta"), 100, 32,
        "cifar-100-python/ with train, test and meta (torchvision's CIFAR-100 format)", "train / test"),
}
_ALIASES = {"cars": "stanford_cars", "aircraft": "fgvc_aircraft"}


def dataset_family(name: str) -> str:
    """The registry name a dataset argument belongs to: aliases resolved, a split variant dropped
    (`cars` -> `stanford_cars`, `cub200:split-val0.1-seed0` -> `cub200`); a path is returned as given."""
    base, _, _ = name.partition(":")
    return _ALIASES.get(base, base)


def _resolve_root(data_root: str | None) -> Path | None:
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("VMBENCH_DATA")
    return Path(env).expanduser() if env else None


def _candidates(name: str, entry: _Named, root: Path) -> list[Path]:
    """Where dataset `name` may live under `root`, in the order they are tried."""
    first = root / entry.folder
    return [first] if entry.folder == name else [first, root / name / entry.folder]


def _locate(name: str, entry: _Named, root: Path) -> Path:
    """The dataset's folder under `root` with every required file present; DataError naming where it was expected."""
    candidates = _candidates(name, entry, root)
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        also = f"; {candidates[1]}/ works too" if len(candidates) > 1 else ""
        legacy = next((root / n for n in (name, *[a for a, c in _ALIASES.items() if c == name])
                       if (root / n / "train").is_dir()), None)
        hint = f"; {legacy} looks like an ImageFolder tree: pass that path as the dataset" if legacy else ""
        raise DataError(f"{name} not found: no folder {candidates[0]} (expected <root>/{entry.layout}{also}){hint}")
    missing = [r for r in entry.required if not (folder / r).exists()]
    if missing:
        raise DataError(f"{name}: no {folder / missing[0]} (expected <root>/{entry.layout})")
    return folder


def get_dataset_info(name: str, data_root: str | None = None) -> DatasetInfo:
    """Describe dataset `name` and check that it is there; cheap (lists folders, reads metadata text files,
    no image).

    `name` is a registry name (shapes, fake — `fake:N` for N training images —, imagenet, cub200,
    stanford_cars/cars, fgvc_aircraft/aircraft, flowers102, cifar10, cifar100), an alternative split
    `cub200:split-val<frac>-seed<seed>` (see `make_split`), or a folder path in ImageFolder layout. Named
    datasets are looked up under `data_root` (--data-root / $VMBENCH_DATA). Raises DataError with the path and
    the expected layout.
    """
    if name == "shapes":
        return DatasetInfo("shapes", len(SHAPE_CLASSES), SHAPES_IMG_SIZE, "builtin", None,
                           SHAPES_TRAIN_SIZE, SHAPES_VAL_SIZE, "val", SHAPE_CLASSES)
    if name == "shapes-det":
        return DatasetInfo("shapes-det", len(SHAPE_CLASSES), SHAPES_DET_IMG_SIZE, "builtin-det", None,
                           SHAPES_DET_TRAIN_SIZE, SHAPES_DET_VAL_SIZE, "val", SHAPE_CLASSES)
    if name == "coco":
        root = _resolve_root(data_root)
        if root is None:
            raise DataError(f"dataset 'coco' needs a data root: pass --data-root or set VMBENCH_DATA "
                            f"(expected <root>/coco/ with {COCO_LAYOUT})")
        classes = inspect_coco(root / "coco")
        return DatasetInfo("coco", len(classes), 800, "coco", str(root / "coco"), None, None, "val", classes)
    base, sep, variant = name.partition(":")
    if base == "fake":
        return DatasetInfo(name, FAKE_CLASSES, FAKE_IMG_SIZE, "synthetic", None,
                           _fake_train_size(variant) if sep else FAKE_TRAIN_SIZE, FAKE_VAL_SIZE, "val")
    canonical = _ALIASES.get(base, base)
    if canonical in _NAMED:
        return _named_info(canonical, variant if sep else None, data_root)
    path = Path(name).expanduser()
    if path.is_dir() and is_coco_folder(path):
        classes = inspect_coco(path)
        return DatasetInfo(name, len(classes), 800, "coco", str(path), None, None, "val", classes)
    if path.exists() or os.sep in name or name.startswith("."):
        val_split, classes = _inspect_folder(path, _FOLDER_LAYOUT)
        return DatasetInfo(name, len(classes), 224, "imagefolder", str(path), None, None, val_split, classes)
    known = ["shapes", "shapes-det", "fake", "coco", *_NAMED, *_ALIASES]
    raise DataError(f"unknown dataset {name!r}: not one of {', '.join(known)} and no folder at {path}")


def _fake_train_size(variant: str) -> int:
    """`fake:N` -> N training images (a positive integer; throughput runs that need longer epochs)."""
    if not variant.isdigit() or int(variant) < 1:
        raise DataError(f"bad dataset name fake:{variant}: expected fake:<number of training images>, e.g. fake:8192")
    return int(variant)


def _named_info(name: str, variant: str | None, data_root: str | None) -> DatasetInfo:
    entry = _NAMED[name]
    root = _resolve_root(data_root)
    if root is None:
        raise DataError(f"dataset {name!r} needs a data root: pass --data-root or set VMBENCH_DATA "
                        f"(expected <root>/{entry.layout})")
    if variant is not None and name != "cub200":
        raise DataError(f"bad dataset name {name}:{variant}: alternative splits exist for cub200 only "
                        f"(cub200:split-val<fraction>-seed<seed>)")
    if entry.kind == "imagefolder":
        path = root / entry.folder
        val_split, classes = _inspect_folder(path, f"<root>/{entry.layout}")
        return DatasetInfo(name, len(classes), entry.img_size, "imagefolder", str(path), None, None,
                           val_split, classes)
    folder = _locate(name, entry, root)
    if entry.needs_scipy and importlib.util.find_spec("scipy") is None:
        raise DataError(f"{name} at {folder}: its .mat annotations need scipy, which is not installed "
                        f"(pip install scipy)")
    if entry.kind == "cub200":
        return _cub_info(folder, variant, entry.img_size)
    classes: tuple[str, ...] = ()
    train_size = val_size = None
    num_classes = entry.num_classes
    if entry.kind == "fgvc_aircraft":
        data = folder / "data"
        classes = tuple(ln.strip() for ln in _read_lines(data / "variants.txt") if ln.strip())
        num_classes = len(classes)
        train_size = sum(1 for ln in _read_lines(data / "images_variant_trainval.txt") if ln.strip())
        val_size = sum(1 for ln in _read_lines(data / "images_variant_test.txt") if ln.strip())
    elif entry.kind == "cifar":
        train_size, val_size = 50000, 10000
    return DatasetInfo(name, num_classes, entry.img_size, entry.kind, str(folder), train_size, val_size, "test",
                       classes)


def list_datasets(data_root: str | None = None) -> list[dict]:
    """One row per dataset: {name, aliases, kind, num_classes, img_size, protocol, path, layout, found, error}.

    `path` is the folder found, else the first place it is expected (None without a data root); `layout` what
    that folder must hold; `error` why a dataset is not usable (None when found). Alternative splits found in
    cub200's folder (vmbench_splits/*.txt) get rows of their own. Reads no image.
    """
    root = _resolve_root(data_root)
    rows = [
        dict(name="shapes", aliases=[], kind="builtin", num_classes=len(SHAPE_CLASSES), img_size=SHAPES_IMG_SIZE,
             protocol="train / val", path=None,
             layout=f"generated ({SHAPES_TRAIN_SIZE} train / {SHAPES_VAL_SIZE} val, offline)", found=True, error=None),
        dict(name="fake", aliases=[], kind="synthetic", num_classes=FAKE_CLASSES, img_size=FAKE_IMG_SIZE,
             protocol="train / val", path=None,
             layout=f"random tensors (throughput work; {FAKE_TRAIN_SIZE} train / {FAKE_VAL_SIZE} val, fake:N for N "
             "train)", found=True, error=None),
        dict(name="shapes-det", aliases=[], kind="builtin-det", num_classes=len(SHAPE_CLASSES),
             img_size=SHAPES_DET_IMG_SIZE, protocol="train / val (detection: box and mask AP)", path=None,
             layout=f"generated boxes and masks ({SHAPES_DET_TRAIN_SIZE} train / {SHAPES_DET_VAL_SIZE} val, offline)",
             found=True, error=None),
    ]
    coco, coco_error = None, None
    try:
        coco = get_dataset_info("coco", data_root)
    except DataError as e:
        coco_error = str(e)
    rows.append(dict(name="coco", aliases=[], kind="coco", num_classes=coco.num_classes if coco else 80,
                     img_size=800, protocol="train2017 / val2017 (detection: box and mask AP)",
                     path=coco.path if coco else (str(root / "coco") if root is not None else None),
                     layout=f"<root>/coco/ with {COCO_LAYOUT}", found=coco is not None, error=coco_error))
    for name, entry in _NAMED.items():
        info, error = None, None
        try:
            info = get_dataset_info(name, data_root)
        except DataError as e:
            error = str(e)
        path = info.path if info else (str(_candidates(name, entry, root)[0]) if root is not None else None)
        rows.append(dict(name=name, aliases=[a for a, c in _ALIASES.items() if c == name], kind=entry.kind,
                         num_classes=info.num_classes if info else entry.num_classes, img_size=entry.img_size,
                         protocol=entry.protocol, path=path, layout=f"<root>/{entry.layout}", found=info is not None,
                         error=error))
        if info is not None and name == "cub200":
            for split_file in sorted((Path(info.path) / SPLITS_DIR).glob("val*-seed*.txt")):
                variant = f"cub200:split-{split_file.stem}"
                try:
                    v_info, v_error = get_dataset_info(variant, data_root), None
                except DataError as e:
                    v_info, v_error = None, str(e)
                rows.append(dict(name=variant, aliases=[], kind="cub200", num_classes=info.num_classes,
                                 img_size=entry.img_size,
                                 protocol=(f"{v_info.train_size} train / {v_info.val_size} val of the official "
                                           f"training images" if v_info else "alternative split"),
                                 path=str(split_file), layout="written by `vmbench data split cub200`",
                                 found=v_info is not None, error=v_error))
    return rows


def make_split(dataset: str, data_root: str | None, val_frac: float = 0.1, seed: int = 0) -> dict:
    """Write a stratified random validation split of `dataset`'s official training images (cub200 only).

    The file is <dataset folder>/vmbench_splits/val<frac>-seed<seed>.txt (e.g. CUB_200_2011/vmbench_splits/
    val0.1-seed0.txt), written atomically, in train_test_split.txt's format restricted to the official training
    images: `<image_id> <1 = train | 0 = val>` lines after `#` comment lines. The official test images are in
    neither part. A run uses it as dataset `cub200:split-val0.1-seed0` (train on the 1s, evaluate on the 0s).
    The same (val_frac, seed) always writes the same file (see `stratified_split`).

    Returns {dataset: the name to run with, path, train, val (image counts), classes}.
    """
    if dataset != "cub200":
        raise DataError(f"cannot split {dataset!r}: alternative splits are made for cub200 only")
    if not 0 < val_frac < 1:
        raise DataError(f"the validation fraction must be between 0 and 1 (exclusive), got {val_frac}")
    if seed < 0:
        raise DataError(f"the split seed must be >= 0, got {seed}")
    return write_split(Path(get_dataset_info("cub200", data_root).path), val_frac, seed)
