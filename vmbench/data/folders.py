"""Image folders: any `<dir>/train/<class>/*` + `<dir>/val|test/<class>/*` tree by path, and ImageNet in that
layout. Entry points: inspect_folder (cheap layout check), imagefolder_datasets."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ._common import IMG_EXTENSIONS, DataError, DatasetInfo, _load_image

_FOLDER_LAYOUT = "<dir>/train/<class>/<images> and <dir>/val/<class>/<images> (or test/ instead of val/)"


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _inspect_folder(root: Path, layout: str) -> tuple[str, tuple[str, ...]]:
    """Check an ImageFolder tree cheaply (directories only). Returns (val split name, class names)."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root} (expected {layout})")
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"no train/ folder in {root} (expected {layout})")
    val_split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    if val_split is None:
        raise DataError(f"no val/ or test/ folder in {root} (expected {layout})")
    classes = _class_dirs(train)
    if not classes:
        raise DataError(f"no class folders in {train} (expected {layout})")
    val_classes = _class_dirs(root / val_split)
    if not val_classes:
        raise DataError(f"no class folders in {root / val_split} (expected {layout})")
    missing = sorted(set(val_classes) - set(classes))
    if missing:
        raise DataError(f"{root / val_split} has classes not in {train}: {', '.join(missing[:5])}"
                        f"{' …' if len(missing) > 5 else ''} (expected the same class folders in both)")
    for split_dir, names in ((train, classes), (root / val_split, val_classes)):
        empty = [c for c in names if not _has_image(split_dir / c)]
        if empty:
            raise DataError(f"class folder {split_dir / empty[0]} holds no image ({', '.join(IMG_EXTENSIONS)})"
                            f"{f'; {len(empty) - 1} more like it' if len(empty) > 1 else ''}")
    return val_split, tuple(classes)


def _has_image(folder: Path) -> bool:
    """Whether `folder` or a folder below it holds a file with an image extension (stops at the first one)."""
    try:
        with os.scandir(folder) as it:
            subdirs = []
            for e in it:
                if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS):
                    return True
                if e.is_dir():
                    subdirs.append(e.path)
    except OSError:
        return False
    return any(_has_image(Path(d)) for d in subdirs)


def imagefolder_datasets(info: DatasetInfo, train_tf: Callable | None, val_tf: Callable) -> tuple[Any, Any]:
    """(train, val) torchvision ImageFolders of info.path (train None without train_tf: its images are not
    listed); val labels follow the train split's class indices."""
    from torchvision.datasets import ImageFolder

    root = Path(info.path)
    out = []
    for split, tf in (("train", train_tf), (info.val_split or "val", val_tf)):
        if tf is None:  # val only: the training images are not listed
            out.append(None)
            continue
        try:
            ds = ImageFolder(str(root / split), transform=tf, loader=_load_image,
                             is_valid_file=lambda p: p.lower().endswith(IMG_EXTENSIONS))
        except FileNotFoundError as e:
            raise DataError(f"{root / split}: {str(e).splitlines()[0]} (expected {_FOLDER_LAYOUT})") from None
        out.append(ds)
    train, val = out
    # The training split's class folders define the label indices (listing them reads no image files).
    if train is not None:
        train_classes = train.class_to_idx
    else:
        from torchvision.datasets.folder import find_classes

        try:
            train_classes = find_classes(str(root / "train"))[1]
        except FileNotFoundError as e:
            raise DataError(f"{root / 'train'}: {str(e).splitlines()[0]} (expected {_FOLDER_LAYOUT})") from None
    if val.class_to_idx != {c: train_classes[c] for c in val.classes}:
        # Classes missing from val would shift indices; map val labels through the train class list.
        val.target_transform = _Remap(val.classes, train_classes)
    return train, val


class _Remap:
    """Target transform mapping a split's own class index to the train split's index (picklable)."""

    def __init__(self, classes, class_to_idx):
        self.table = [class_to_idx[c] for c in classes]

    def __call__(self, target: int) -> int:
        return self.table[target]
