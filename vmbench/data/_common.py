"""What every dataset module shares: the user-facing errors, DatasetInfo, ImageNet statistics, reading an image
file or a metadata text file, and writing a file atomically. Imports no torch."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GENERATED = ("builtin", "synthetic")  # DatasetInfo.kind of the generated tensor datasets (shapes, fake)
DETECTION_KINDS = ("builtin-det", "coco")  # DatasetInfo.kind of the detection datasets (shapes-det, COCO format)


def task_mismatch(info: DatasetInfo, task: str, verb: str) -> str | None:
    """Why a dataset does not fit a task (a detection dataset needs --task detection and only it), as one line
    naming `verb` (run / evaluate), or None."""
    if task == "detection" and info.kind not in DETECTION_KINDS:
        return (f"dataset {info.name} has no boxes: --task detection needs shapes-det, coco or a COCO-format folder "
                "(annotations/instances_{train,val}2017.json)")
    if task != "detection" and info.kind in DETECTION_KINDS:
        return f"dataset {info.name} is a detection dataset: {verb} it with --task detection"
    return None


class DataError(ValueError):
    """A dataset the user named cannot be used (missing, wrong layout, unreadable file).

    The message is always one line. When the error was raised inside a DataLoader worker, torch re-raises it
    in the main process with the worker's traceback folded into the message; the constructor keeps only the
    original one-line message.
    """

    def __init__(self, message: str = ""):
        message = str(message)
        if "Original Traceback" in message:
            lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
            message = lines[-1] if lines else message
            message = re.sub(r"^(?:[\w.]+\.)?(?:BadImageError|DataError):", "", message).strip()
        super().__init__(message)


class BadImageError(DataError):
    """An image file that cannot be opened or decoded; `path` names it (None when re-raised from a worker)."""

    def __init__(self, message: str = "", path: str | None = None):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a dataset before loading any of it."""

    name: str  # registry name (aliases resolved, split variants canonical), or the folder path as given
    num_classes: int
    img_size: int  # default input resolution (a run may override it)
    kind: str  # "builtin" | "synthetic" | "imagefolder" | "cub200" | "stanford_cars" | "fgvc_aircraft"
    #            | "flowers102" | "cifar" | "builtin-det" | "coco" (the last two: detection, DETECTION_KINDS)
    path: str | None = None  # the dataset's own folder (None for generated data)
    train_size: int | None = None  # number of images, when known cheaply
    val_size: int | None = None
    val_split: str | None = None  # the split evaluated on: "val" / "test", or a split tag ("val0.1-seed0")
    classes: tuple[str, ...] = field(default=(), repr=False)
    split_file: str | None = None  # alternative split file (cub200:split-…), else None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder + rename: readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e} (the dataset folder must be writable)") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise DataError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def _load_image(path: str | os.PathLike):
    """PIL loader for image-file datasets: the image as RGB; an unreadable file raises BadImageError naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                # 16-bit grey: PIL's convert("RGB") clips at 255 (an all-white image); scale to 8 bits first.
                import numpy as np

                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise BadImageError(f"cannot read image {path}: {type(e).__name__}: {detail} (--skip-bad-images skips "
                            "such files)", path=str(path)) from None


def _torchvision(make: Callable[[], Any], info: DatasetInfo, layout: str) -> Any:
    """Construct a torchvision dataset; its errors become one-line DataErrors naming the dataset folder."""
    try:
        return make()
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as e:
        # First sentence only: torchvision goes on to suggest download=True, and vmbench never downloads.
        detail = str(e).splitlines()[0].split(". ")[0].rstrip(".") if str(e) else ""
        raise DataError(f"cannot load {info.name} from {info.path}: {type(e).__name__}: {detail} "
                        f"(expected <root>/{layout})") from None


def _torchvision_pair(cls, info: DatasetInfo, layout: str, train_tf: Callable | None, val_tf: Callable,
                      train_kw: dict, val_kw: dict) -> tuple[Any, Any]:
    """(train, val) torchvision datasets of class `cls` read from the folder above info.path (torchvision's root
    holds the dataset's own folder); train is None without a train transform (evaluation only)."""
    tv_root = str(Path(info.path).parent)
    train = _torchvision(lambda: cls(tv_root, transform=train_tf, **train_kw), info, layout) if train_tf else None
    return train, _torchvision(lambda: cls(tv_root, transform=val_tf, **val_kw), info, layout)
