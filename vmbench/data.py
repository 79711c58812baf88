"""Dataset registry: built-in `shapes`, random `fake`, and local image datasets (nothing is ever downloaded).

Entry points for the engine:

    info = get_dataset_info("cub200", data_root)      # cheap; validates the layout; raises DataError
    train_loader, val_loader = build_loaders(info, batch_size=32, img_size=448, seed=0, model_cfg=cfg)
    eval_cfg = eval_transform_info(info, 448, cfg)     # the evaluation preprocessing, to record on the run

Named datasets live under the data root (--data-root / $VMBENCH_DATA), each in the folder its official archive
(or torchvision) extracts to: `imagenet/` (ImageFolder), `CUB_200_2011/` (the official CUB-200-2011 files and
train_test_split.txt), `stanford_cars/`, `fgvc-aircraft-2013b/`, `flowers-102/`, `cifar-10-batches-py/`,
`cifar-100-python/` (torchvision's on-disk formats, read with download=False). `<root>/<name>/<that folder>`
works too. `cars` and `aircraft` are aliases of `stanford_cars` and `fgvc_aircraft`. Any other folder with
train/ and val/ (or test/) class folders is used by path. `list_datasets` says what is found and where each
one is expected. `cub200:split-val0.1-seed0` names an alternative split written by `make_split`.

`shapes` and `fake` yield tensors that are already normalised (ImageNet mean/std); image datasets go through
timm's transforms, resolved from the model's pretrained cfg when one is given (`eval_transform_info` returns
the evaluation settings actually used). Every user mistake (missing folder, wrong layout, unreadable image)
raises `DataError` with a one-line message naming the path and the layout that was expected; with
`skip_bad_images=True` unreadable images are skipped and counted instead (`SkipBadImages`,
`bad_image_count`).

Importing this module does not import torch (so `vmbench datasets` and `vmbench data split` start fast);
the functions that build data import it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import random
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

__all__ = [
    "DataError", "BadImageError", "DatasetInfo", "ShapesDataset", "FakeDataset", "SHAPE_CLASSES", "Augment",
    "get_dataset_info", "build_loaders", "build_datasets", "list_datasets", "eval_transform_info",
    "SkipBadImages", "bad_image_count", "bad_image_paths", "make_split", "stratified_split", "split_tag",
]


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
            for prefix in ("vmbench.data.BadImageError:", "BadImageError:", "vmbench.data.DataError:", "DataError:"):
                if message.startswith(prefix):
                    message = message[len(prefix):].strip()
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
    #            | "flowers102" | "cifar"
    path: str | None = None  # the dataset's own folder (None for generated data)
    train_size: int | None = None  # number of images, when known cheaply
    val_size: int | None = None
    val_split: str | None = None  # the split evaluated on: "val" / "test", or a split tag ("val0.1-seed0")
    classes: tuple[str, ...] = field(default=(), repr=False)
    split_file: str | None = None  # alternative split file (cub200:split-…), else None


# --------------------------------------------------------------------------------------------------------------
# shapes: a 10-class shape-recognition task drawn on the fly
# --------------------------------------------------------------------------------------------------------------
SHAPE_CLASSES = (
    "disk", "ring", "square", "frame", "triangle", "plus", "star", "crescent", "half_disk", "ellipse",
)
SHAPES_TRAIN_SIZE = 5000
SHAPES_VAL_SIZE = 1000
SHAPES_IMG_SIZE = 64
SHAPES_SEED = 0  # the data seed: fixed, so runs with different training seeds see the same images
_SPLIT_IDS = {"train": 1, "val": 2}
_CHUNK = 250  # images drawn per vectorised call; sample i depends only on (seed, split, i // _CHUNK, i)


def _shape_mask(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of shape class `cls` in its own frame: u, v (n, H, W), unit circumradius."""
    import torch

    r = torch.sqrt(u * u + v * v)
    name = SHAPE_CLASSES[cls]
    if name == "disk":
        return r < 0.9
    if name == "ring":
        return (r < 1.0) & (r > 0.6)
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) < 0.7
    if name == "frame":
        m = torch.maximum(u.abs(), v.abs())
        return (m < 0.8) & (m > 0.5)
    if name == "triangle":  # equilateral, circumradius 1: three half-planes at distance 0.5
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            t = math.pi / 2 + 2 * math.pi * k / 3
            inside &= (u * math.cos(t) + v * math.sin(t)) < 0.5
        return inside
    if name == "plus":
        return ((u.abs() < 0.28) & (v.abs() < 0.95)) | ((v.abs() < 0.28) & (u.abs() < 0.95))
    if name == "star":  # five points: radius oscillates between 0.4 and 1.0
        theta = torch.atan2(v, u)
        return r < 0.4 + 0.6 * torch.cos(2.5 * theta).abs().pow(4)
    if name == "crescent":
        return (r < 0.9) & (((u - 0.45) ** 2 + v * v).sqrt() > 0.7)
    if name == "half_disk":
        return (r < 1.0) & (v > 0.15)
    if name == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.42) ** 2 < 1.0
    raise AssertionError(cls)


@dataclass(frozen=True)
class ShapesStyle:
    """Nuisance factors of the `shapes` task (how hard it is)."""

    max_angle_deg: float = 15.0  # rotation drawn uniformly from [-max, max]
    scale: tuple[float, float] = (0.5, 0.7)  # circumradius range, fraction of the half-width
    distractors: int = 1  # small random shapes behind the main one
    noise: float = 0.05  # Gaussian pixel noise (images in [0, 1])


# The defaults are tuned for a CPU smoke run: a ResNet-18 reaches ~50 % top-1 after 6.4k images at 32².
# HARD_SHAPES (full rotation, smaller shapes, more clutter) stays near chance for every backbone tried at that
# budget; it is there for longer runs.
HARD_SHAPES = ShapesStyle(max_angle_deg=180.0, scale=(0.3, 0.65), distractors=3, noise=0.08)


SHAPES_STYLE = ShapesStyle()


def _draw(labels: torch.Tensor, size: int, gen: torch.Generator, style: ShapesStyle = SHAPES_STYLE) -> torch.Tensor:
    """Draw one chunk of `shapes` images: labels (n,) int64 → images (n, 3, size, size) float32 in [0, 1].

    Every factor except the shape is independent of the class: shape colour, background colour and
    gradient, position, scale, rotation, `distractors` small random shapes (drawn behind the main one),
    and Gaussian pixel noise. Foreground and background come from opposite brightness bands so the shape
    is always visible.
    """
    import torch

    n = labels.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731

    # Background: dark or light base colour plus a random linear gradient.
    light_bg = rand(n) < 0.5  # (n,)
    band = lambda light, m: torch.where(light[:, None], 0.6 + 0.4 * rand(m, 3), 0.4 * rand(m, 3))  # noqa: E731
    bg = band(light_bg, n)  # (n, 3)
    lin = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")  # (H, W), image coordinates in [-1, 1]
    grad_dir = rand(n) * 2 * math.pi
    grad = (xx[None] * torch.cos(grad_dir)[:, None, None] + yy[None] * torch.sin(grad_dir)[:, None, None])
    img = bg[:, :, None, None] + 0.12 * (rand(n, 1, 1, 1) * 2 - 1) * grad[:, None]  # (n, 3, H, W)

    def paint(cls_ids, scale, cx, cy, angle, colour):
        # cls_ids/scale/cx/cy/angle (n,), colour (n, 3): paint one shape per image, grouped by class.
        dx = xx[None] - cx[:, None, None]
        dy = yy[None] - cy[:, None, None]
        c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        u = (c * dx + s * dy) / scale[:, None, None]  # (n, H, W), shape frame
        v = (-s * dx + c * dy) / scale[:, None, None]
        mask = torch.zeros(n, size, size, dtype=torch.bool)
        for k in range(len(SHAPE_CLASSES)):
            sel = (cls_ids == k).nonzero().flatten()
            if sel.numel():
                mask[sel] = _shape_mask(k, u[sel], v[sel])
        m = mask[:, None].to(img.dtype)  # (n, 1, H, W)
        return img * (1 - m) + colour[:, :, None, None] * m

    fg_band = ~light_bg
    for _ in range(style.distractors):
        d_cls = torch.randint(len(SHAPE_CLASSES), (n,), generator=gen)
        d_scale = 0.08 + 0.08 * rand(n)
        d_cx, d_cy = rand(n) * 2 - 1, rand(n) * 2 - 1
        img = paint(d_cls, d_scale, d_cx, d_cy, rand(n) * 2 * math.pi, band(fg_band, n))

    lo, hi = style.scale
    scale = lo + (hi - lo) * rand(n)  # circumradius, as a fraction of the half-width
    reach = 1.0 - 0.8 * scale  # centre range keeps most of the shape inside the frame
    cx, cy = (rand(n) * 2 - 1) * reach, (rand(n) * 2 - 1) * reach
    angle = (rand(n) * 2 - 1) * math.radians(style.max_angle_deg)
    img = paint(labels, scale, cx, cy, angle, band(fg_band, n))

    img = img + style.noise * torch.randn(img.shape, generator=gen)
    return img.clamp_(0.0, 1.0)


_CHUNK_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # process-wide, insertion ordered
_CACHE_BYTES = 512 * 2**20  # uint8 images kept across datasets of one process (5000 × 64² ≈ 61 MB)


def _make_chunk(seed: int, split: str, img_size: int, style: ShapesStyle, c: int):
    """Chunk c of a split: (uint8 images (_CHUNK, 3, S, S), int64 labels (_CHUNK,)), balanced classes."""
    import torch

    gen = torch.Generator().manual_seed((seed * 1_000_003 + _SPLIT_IDS[split]) * 1_000_003 + c)
    labels = torch.arange(_CHUNK) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(_CHUNK, generator=gen)]
    # Small elementwise ops: one thread is as fast and does not fight the training loop for cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imgs = _draw(labels, img_size, gen, style)
    finally:
        torch.set_num_threads(threads)
    return (imgs * 255).round_().to(torch.uint8), labels


class ShapesDataset:
    """The built-in `shapes` task: 10 shape classes (SHAPE_CLASSES) under random colour, position, scale,
    rotation, clutter and noise; only the shape identifies the class.

    Deterministic: image i of a split depends only on (seed, split, i), so train and val (different split
    streams) never share an image and a larger `n` extends a smaller one. Classes are balanced within every
    chunk of 250 images. Images are drawn in vectorised chunks on first access and kept as uint8 (shared by the
    datasets of one process);
    __getitem__ returns (3, img_size, img_size) float32 normalised with ImageNet mean/std, and an int label.
    """

    num_classes = len(SHAPE_CLASSES)

    def __init__(self, split: str = "train", n: int | None = None, img_size: int = SHAPES_IMG_SIZE,
                 seed: int = SHAPES_SEED, style: ShapesStyle | None = None):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.img_size, self.seed = split, int(img_size), int(seed)
        self.style = style or SHAPES_STYLE
        self.n = int(n if n is not None else (SHAPES_TRAIN_SIZE if split == "train" else SHAPES_VAL_SIZE))
        import torch

        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.n

    def _chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.seed, self.split, self.img_size, self.style, c)
        hit = _CHUNK_CACHE.get(key)
        if hit is None:
            hit = _make_chunk(*key)
            _CHUNK_CACHE[key] = hit
            while len(_CHUNK_CACHE) > 1 and sum(t.numel() for t, _ in _CHUNK_CACHE.values()) > _CACHE_BYTES:
                _CHUNK_CACHE.pop(next(iter(_CHUNK_CACHE)))  # oldest first
        return hit

    def raw(self, i: int) -> tuple[torch.Tensor, int]:
        """Image i as uint8 (3, H, W) before normalisation, and its label."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        imgs, labels = self._chunk(i // _CHUNK)
        return imgs[i % _CHUNK], int(labels[i % _CHUNK])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.raw(i)
        return (img.float().div_(255) - self._mean) / self._std, label

    def targets(self) -> list[int]:
        return [self.raw(i)[1] for i in range(self.n)]


class FakeDataset:
    """Random normal images (already "normalised") and random labels, for throughput work.

    Item i is generated from a generator seeded with (seed, split, i): deterministic, nothing stored.
    """

    def __init__(self, n: int, img_size: int, num_classes: int, seed: int = 0, split: str = "train"):
        self.n, self.img_size, self.num_classes = int(n), int(img_size), int(num_classes)
        self._base = (int(seed) * 1_000_003 + _SPLIT_IDS.get(split, 3)) * 1_000_003

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        import torch

        gen = torch.Generator().manual_seed(self._base + i)
        img = torch.randn(3, self.img_size, self.img_size, generator=gen)
        return img, int(torch.randint(self.num_classes, (1,), generator=gen))


FAKE_TRAIN_SIZE, FAKE_VAL_SIZE, FAKE_IMG_SIZE, FAKE_CLASSES = 1024, 256, 224, 1000


# --------------------------------------------------------------------------------------------------------------
# local image datasets: where each one lives and how to check it cheaply
# --------------------------------------------------------------------------------------------------------------
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


_GENERATED = ("builtin", "synthetic")
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


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


# --------------------------------------------------------------------------------------------------------------
# CUB-200-2011: the official metadata files, and alternative (train, val) splits of its training images
# --------------------------------------------------------------------------------------------------------------
SPLITS_DIR = "vmbench_splits"  # alternative split files, inside the dataset's folder
_VARIANT_RE = re.compile(r"split-val(?P<frac>\d*\.?\d+(?:e-?\d+)?)-seed(?P<seed>\d+)")


@dataclass(frozen=True)
class _CubMeta:
    """CUB-200-2011's metadata: image ids in images.txt order, each with its path under images/, its 0-based
    class index (class_id - 1) and whether the official split (train_test_split.txt) puts it in training."""

    folder: Path
    ids: tuple[int, ...]
    paths: dict[int, str]
    labels: dict[int, int]
    is_train: dict[int, bool]
    classes: tuple[str, ...]  # from classes.txt when present, else each class's image folder name


def _read_id_table(path: Path, value: str) -> dict[int, str]:
    """A metadata file of `<image_id> <value>` lines → {image_id: value}; DataError naming file:line."""
    table: dict[int, str] = {}
    for n, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        if not key.isdigit() or not rest.strip():
            raise DataError(f"{path}:{n}: expected '<image_id> {value}', got {line[:60]!r}")
        table[int(key)] = rest.strip()
    return table


def _read_cub(folder: Path) -> _CubMeta:
    """Parse and cross-check images.txt, image_class_labels.txt, train_test_split.txt (and classes.txt)."""
    images = _read_id_table(folder / "images.txt", "<image_name>")
    if not images:
        raise DataError(f"{folder / 'images.txt'} lists no image (expected '<image_id> <image_name>' lines)")
    labels_txt = _read_id_table(folder / "image_class_labels.txt", "<class_id>")
    split_txt = _read_id_table(folder / "train_test_split.txt", "<is_training_image>")
    for fname, table in (("image_class_labels.txt", labels_txt), ("train_test_split.txt", split_txt)):
        missing = next((i for i in images if i not in table), None)
        if missing is not None:
            raise DataError(f"{folder / fname} has no line for image {missing} (expected one line per image "
                            f"of {folder / 'images.txt'})")
    labels, is_train = {}, {}
    for i in images:
        cid, flag = labels_txt[i], split_txt[i]
        if not cid.isdigit() or int(cid) < 1:
            raise DataError(f"{folder / 'image_class_labels.txt'}: image {i} has class {cid!r} "
                            f"(expected a class id >= 1)")
        if flag not in ("0", "1"):
            raise DataError(f"{folder / 'train_test_split.txt'}: image {i} has {flag!r} (expected 1 = train, 0 = test)")
        labels[i], is_train[i] = int(cid) - 1, flag == "1"
    num_classes = max(labels.values()) + 1
    if (folder / "classes.txt").is_file():
        names = _read_id_table(folder / "classes.txt", "<class_name>")
        classes = tuple(names.get(k + 1, str(k + 1)) for k in range(num_classes))
    else:
        first = {}
        for i in images:
            first.setdefault(labels[i], images[i].split("/")[0])
        classes = tuple(first.get(k, str(k + 1)) for k in range(num_classes))
    return _CubMeta(folder, tuple(images), images, labels, is_train, classes)


def split_tag(val_frac: float, seed: int) -> str:
    """The name of an alternative split: `val<fraction>-seed<seed>`, e.g. split_tag(0.1, 0) == "val0.1-seed0"."""
    return f"val{float(val_frac)!r}-seed{int(seed)}"


def _parse_variant(name: str, variant: str) -> str:
    """`split-val0.1-seed0` → the canonical split tag; DataError for anything else."""
    m = _VARIANT_RE.fullmatch(variant)
    frac = float(m["frac"]) if m else -1.0
    if not m or not 0 < frac < 1:
        raise DataError(f"bad dataset name {name}:{variant}: expected {name}:split-val<fraction in (0, 1)>-seed<seed>, "
                        f"e.g. {name}:split-val0.1-seed0")
    return split_tag(frac, int(m["seed"]))


def stratified_split(labels: Sequence[int], val_frac: float, seed: int) -> list[bool]:
    """Validation flags for a random split stratified by class.

    labels: (N,) class index of each sample, in a fixed order (CUB: images.txt order). Class c with n_c
    samples sends k_c = floor(val_frac * n_c + 0.5) of them to validation (round half up), at least 1 when
    n_c > 1 and at most n_c - 1, so every class keeps a training sample. Samples are drawn with
    random.Random(seed), visiting the classes in ascending order, so (labels, val_frac, seed) fixes the split.
    Returns (N,) bools, True = validation.
    """
    by_class: dict[int, list[int]] = {}
    for pos, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(pos)
    rng = random.Random(int(seed))
    is_val = [False] * len(labels)
    for c in sorted(by_class):
        members = by_class[c]
        n = len(members)
        k = min(max(math.floor(val_frac * n + 0.5), 1), n - 1) if n > 1 else 0
        for pos in rng.sample(members, k):
            is_val[pos] = True
    return is_val


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
    meta = _read_cub(Path(get_dataset_info("cub200", data_root).path))
    train_ids = [i for i in meta.ids if meta.is_train[i]]
    is_val = stratified_split([meta.labels[i] for i in train_ids], val_frac, seed)
    tag = split_tag(val_frac, seed)
    path = meta.folder / SPLITS_DIR / f"{tag}.txt"
    header = [f"# vmbench split of cub200: val_frac={float(val_frac)!r} seed={int(seed)}, stratified per class, "
              f"drawn from the official training images (train_test_split.txt == 1)",
              "# <image_id> <1 = train | 0 = val>; run it as dataset cub200:split-" + tag]
    body = [f"{i} {0 if v else 1}" for i, v in zip(train_ids, is_val)]
    _write_atomic(path, "\n".join(header + body) + "\n")
    n_val = sum(is_val)
    return dict(dataset=f"cub200:split-{tag}", path=str(path), train=len(train_ids) - n_val, val=n_val,
                classes=len({meta.labels[i] for i in train_ids}))


def _split_command(tag: str) -> str:
    """The command that writes split `tag` ("val0.1-seed0")."""
    m = re.fullmatch(r"val(.+)-seed(\d+)", tag)
    return f"vmbench data split cub200 --val-frac {m[1]} --seed {m[2]}" if m else "vmbench data split cub200"


def _read_split_file(path: Path, meta: _CubMeta) -> dict[int, bool]:
    """An alternative split file → {image_id: True for train, False for val}; it must cover exactly the
    official training images."""
    table = _read_id_table(path, "<1 = train | 0 = val>")
    official = {i for i in meta.ids if meta.is_train[i]}
    if set(table) != official or any(v not in ("0", "1") for v in table.values()):
        raise DataError(f"split file {path} does not match the training images of "
                        f"{meta.folder / 'train_test_split.txt'} (recreate it with `{_split_command(path.stem)}`)")
    return {i: table[i] == "1" for i in meta.ids if i in table}


def _cub_info(folder: Path, variant: str | None) -> DatasetInfo:
    entry = _NAMED["cub200"]
    meta = _read_cub(folder)
    if variant is None:
        n_train = sum(meta.is_train.values())
        return DatasetInfo("cub200", len(meta.classes), entry.img_size, "cub200", str(folder), n_train,
                           len(meta.ids) - n_train, "test", meta.classes)
    tag = _parse_variant("cub200", variant)
    split_file = folder / SPLITS_DIR / f"{tag}.txt"
    if not split_file.is_file():
        raise DataError(f"cub200:split-{tag}: no split file {split_file} (create it with `{_split_command(tag)}`)")
    split = _read_split_file(split_file, meta)
    n_train = sum(split.values())
    return DatasetInfo(f"cub200:split-{tag}", len(meta.classes), entry.img_size, "cub200", str(folder), n_train,
                       len(split) - n_train, tag, meta.classes, split_file=str(split_file))


# --------------------------------------------------------------------------------------------------------------
# registry look-up
# --------------------------------------------------------------------------------------------------------------
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
    base, sep, variant = name.partition(":")
    if base == "fake":
        return DatasetInfo(name, FAKE_CLASSES, FAKE_IMG_SIZE, "synthetic", None,
                           _fake_train_size(variant) if sep else FAKE_TRAIN_SIZE, FAKE_VAL_SIZE, "val")
    canonical = _ALIASES.get(base, base)
    if canonical in _NAMED:
        return _named_info(canonical, variant if sep else None, data_root)
    path = Path(name).expanduser()
    if path.exists() or os.sep in name or name.startswith("."):
        val_split, classes = _inspect_folder(path, _FOLDER_LAYOUT)
        return DatasetInfo(name, len(classes), 224, "imagefolder", str(path), None, None, val_split, classes)
    known = ["shapes", "fake", *_NAMED, *_ALIASES]
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
        return _cub_info(folder, variant)
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
    ]
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


# --------------------------------------------------------------------------------------------------------------
# reading images; skipping unreadable ones
# --------------------------------------------------------------------------------------------------------------
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


class _ImageList:
    """Images named by annotation files (CUB-200-2011): samples [(path, label)], read with `_load_image`.

    __getitem__(i) returns (transform(RGB PIL image), int label); without a transform, the PIL image.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Callable | None = None):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        img = _load_image(path)
        return (self.transform(img) if self.transform is not None else img), label


class SkipBadImages:
    """A map-style image dataset whose unreadable images (BadImageError) are skipped and counted.

    mode "replace" (training): item i is replaced by the next readable item (i+1, i+2, …, wrapping around), so
    every batch keeps its size (mixup, BatchNorm and drop_last see full batches).
    mode "drop" (evaluation): item i becomes None and build_loaders' collate leaves it out of its batch, so
    accuracy is over the readable images and none is counted twice. A batch with no readable image at all comes
    out as images (0, 3, H, W) and labels (0,).

    Counting works with any num_workers: one shared-memory flag per item (multiprocessing.RawArray) is set by
    whichever process failed to read it (the main process with num_workers=0, else a DataLoader worker; the
    flags travel with the dataset to fork, spawn and forkserver workers). `bad_count()` is therefore the number
    of distinct unreadable items seen so far, however many epochs or workers hit each one; an item already
    flagged is not read again. `bad_paths()` names them (items a worker flagged are re-read once in the calling
    process to get their path).
    """

    def __init__(self, dataset: Any, mode: str = "replace"):
        from multiprocessing import RawArray

        if mode not in ("replace", "drop"):
            raise ValueError(f"mode must be 'replace' or 'drop', got {mode!r}")
        self.dataset, self.mode = dataset, mode
        self._flags = RawArray("B", max(len(dataset), 1))  # (len(dataset),) uint8: 1 = unreadable
        self._paths: dict[int, str] = {}  # filled in the process that saw the error

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        n = len(self.dataset)
        for k in range(n if self.mode == "replace" else 1):
            j = (i + k) % n
            if self._flags[j]:
                continue
            try:
                return self.dataset[j]
            except BadImageError as e:
                self._flags[j] = 1
                if e.path:
                    self._paths[j] = e.path
        if self.mode == "drop":
            return None
        raise DataError(f"no readable image left: all {n} images of the dataset failed to load, "
                        f"e.g. {(self.bad_paths() or ['?'])[0]}")

    def bad_count(self) -> int:
        """Distinct unreadable items seen so far (all processes)."""
        return bytes(self._flags).count(1)

    def bad_paths(self) -> list[str]:
        """Paths of the unreadable items seen so far, in dataset order."""
        out = []
        for j, flag in enumerate(bytes(self._flags)):
            if not flag:
                continue
            if j not in self._paths:
                try:
                    self.dataset[j]
                    self._paths[j] = f"item {j} (readable now)"
                except BadImageError as e:
                    self._paths[j] = e.path or f"item {j}"
            out.append(self._paths[j])
        return out


def _skipping(sources: tuple) -> list[SkipBadImages]:
    found = []
    for s in sources:
        ds = s if isinstance(s, SkipBadImages) else getattr(s, "dataset", None)
        if isinstance(ds, SkipBadImages):
            found.append(ds)
    return found


def bad_image_count(*sources: Any) -> int:
    """Distinct unreadable images skipped so far by DataLoaders (or datasets) built with skip_bad_images=True;
    0 for the others. E.g. bad_image_count(train_loader, val_loader) after training."""
    return sum(ds.bad_count() for ds in _skipping(sources))


def bad_image_paths(*sources: Any) -> list[str]:
    """The paths behind bad_image_count(*sources)."""
    return [p for ds in _skipping(sources) for p in ds.bad_paths()]


class _CollateGood:
    """Collate for SkipBadImages(mode="drop"): leaves out the None items. shape: (3, H, W) of one image, for
    the batch where no image was readable."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def __call__(self, batch: list) -> Any:
        import torch
        from torch.utils.data import default_collate

        good = [b for b in batch if b is not None]
        if good:
            return default_collate(good)
        return torch.empty((0, *self.shape)), torch.empty(0, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """A recipe's image transforms; they apply to image-file datasets (ImageFolder, CIFAR).

    rand_augment: timm RandAugment spec (e.g. "rand-m9-mstd0.5-inc1") or None; random_erasing: probability;
    hflip: horizontal-flip probability; train_resize / val_resize: resize the shorter side to this, then
    random-crop (train) / center-crop (val) the input size — the fine-grained protocol (512 -> 448).
    Without a resize, training uses timm's random-resized crop and evaluation the model's crop_pct.
    """

    rand_augment: str | None = None
    random_erasing: float = 0.0
    hflip: float = 0.5
    train_resize: int | None = None
    val_resize: int | None = None

    def changed(self) -> list[str]:
        """Names of the fields that differ from the defaults."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


def _eval_settings(img_size: int, model_cfg: dict | None, aug: Augment) -> dict:
    """The evaluation preprocessing for an image dataset: the model's pretrained cfg (timm's resolve_data_config)
    with the recipe's val_resize, if any, in place of crop_pct. See eval_transform_info."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, pretrained_cfg=dict(model_cfg or {}))
    if aug.val_resize:
        crop_pct, crop_mode, resize = img_size / aug.val_resize, "center", int(aug.val_resize)
    else:
        crop_pct, crop_mode = float(cfg["crop_pct"]), cfg.get("crop_mode") or "center"
        resize = math.floor(img_size / crop_pct)
    return dict(input_size=[int(v) for v in cfg["input_size"]], interpolation=str(cfg["interpolation"]),
                crop_pct=float(crop_pct), crop_mode=crop_mode, resize=resize,
                mean=[float(v) for v in cfg["mean"]], std=[float(v) for v in cfg["std"]])


def eval_transform_info(info: DatasetInfo, img_size: int | None = None, model_cfg: dict | None = None,
                        aug: Augment = Augment()) -> dict:
    """The evaluation preprocessing that build_loaders / build_datasets apply for the same arguments, JSON-able,
    to record on the result:

        {input_size: [3, H, W], interpolation: "bicubic" | "bilinear" | …, crop_pct: float,
         crop_mode: "center" | "squash" | "border", resize: int (edge size before the crop: the shorter side in
         "center" mode; floor(H / crop_pct), or the recipe's val_resize), mean: [3 floats], std: [3 floats]}

    interpolation, crop_pct and mean/std come from the model's pretrained cfg (timm defaults without one); the
    recipe's val_resize replaces crop_pct (crop_pct = H / val_resize). Generated datasets (shapes, fake) are
    tensors with no resize or crop: those keys are None; mean/std are ImageNet's for shapes, None for fake.
    """
    size = int(img_size or info.img_size)
    if info.kind in _GENERATED:
        stats = info.kind == "builtin"
        return dict(input_size=[3, size, size], interpolation=None, crop_pct=None, crop_mode=None, resize=None,
                    mean=list(IMAGENET_MEAN) if stats else None, std=list(IMAGENET_STD) if stats else None)
    return _eval_settings(size, model_cfg, aug)


def _timm_transforms(img_size: int, model_cfg: dict | None, aug: Augment = Augment()):
    """(train, eval) transforms: PIL image → (3, img_size, img_size) float32, normalised."""
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    ev = _eval_settings(img_size, model_cfg, aug)
    common = dict(input_size=tuple(ev["input_size"]), interpolation=ev["interpolation"], mean=ev["mean"],
                  std=ev["std"])
    if aug.train_resize:
        from timm.data import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        steps = [T.Resize(aug.train_resize), T.RandomCrop(img_size), T.RandomHorizontalFlip(aug.hflip)]
        if aug.rand_augment:
            img_mean = tuple(round(255 * m) for m in ev["mean"])
            steps.append(rand_augment_transform(aug.rand_augment, {"img_mean": img_mean}))
        steps += [T.ToTensor(), T.Normalize(ev["mean"], ev["std"])]
        if aug.random_erasing > 0:
            steps.append(RandomErasing(aug.random_erasing, mode="pixel", device="cpu"))
        train_tf = T.Compose(steps)
    else:
        train_tf = create_transform(**common, is_training=True, hflip=aug.hflip, auto_augment=aug.rand_augment,
                                    re_prob=aug.random_erasing)
    if aug.val_resize:
        val_tf = T.Compose([T.Resize(aug.val_resize, interpolation=str_to_interp_mode(ev["interpolation"])),
                            T.CenterCrop(img_size), T.ToTensor(), T.Normalize(ev["mean"], ev["std"])])
    else:
        val_tf = create_transform(**common, crop_pct=ev["crop_pct"], crop_mode=ev["crop_mode"], is_training=False)
    return train_tf, val_tf


def check_augment(info: DatasetInfo, aug: Augment) -> None:
    """Generated tensor datasets (shapes, fake) take no image transforms: refuse a recipe that sets them."""
    changed = aug.changed()
    if changed and info.kind in _GENERATED:
        raise DataError(f"{info.name} is generated tensors; image augmentation ({', '.join(changed)}) applies to "
                        f"image datasets only (reset it with --set, e.g. --set {changed[0]}=...)")


# --------------------------------------------------------------------------------------------------------------
# building datasets and loaders
# --------------------------------------------------------------------------------------------------------------
def _torchvision(make: Callable[[], Any], info: DatasetInfo) -> Any:
    """Construct a torchvision dataset; its errors become one-line DataErrors naming the dataset folder."""
    try:
        return make()
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as e:
        # First sentence only: torchvision goes on to suggest download=True, and vmbench never downloads.
        detail = str(e).splitlines()[0].split(". ")[0].rstrip(".") if str(e) else ""
        raise DataError(f"cannot load {info.name} from {info.path}: {type(e).__name__}: {detail} "
                        f"(expected <root>/{_NAMED[info.name].layout})") from None


def _cub_datasets(info: DatasetInfo, train_tf: Callable | None, val_tf: Callable) -> tuple[Any, _ImageList]:
    meta = _read_cub(Path(info.path))
    if info.split_file:
        split = _read_split_file(Path(info.split_file), meta)
        train_ids = [i for i in meta.ids if split.get(i) is True]
        val_ids = [i for i in meta.ids if split.get(i) is False]
    else:
        train_ids = [i for i in meta.ids if meta.is_train[i]]
        val_ids = [i for i in meta.ids if not meta.is_train[i]]
    images = meta.folder / "images"

    def samples(ids):
        return [(str(images / meta.paths[i]), meta.labels[i]) for i in ids]

    train = _ImageList(samples(train_ids), meta.classes, train_tf) if train_tf is not None else None
    return train, _ImageList(samples(val_ids), meta.classes, val_tf)


def build_datasets(info: DatasetInfo, img_size: int | None = None, model_cfg: dict | None = None,
                   seed: int = 0, aug: Augment = Augment(), skip_bad_images: bool = False,
                   val_only: bool = False) -> tuple[Dataset | None, Dataset]:
    """(train, val) datasets for `info` at `img_size` (default: info.img_size), with `aug`'s transforms;
    `val_only=True` gives (None, val) without listing the training images (evaluation of a large dataset).

    Items are (image (3, S, S) float32 normalised, int label). The evaluated split is info.val_split (the
    official test split for cub200, stanford_cars, fgvc_aircraft, flowers102 and CIFAR). An unreadable image
    raises DataError naming it when read; with skip_bad_images=True image datasets come wrapped in
    SkipBadImages instead (train "replace", val "drop": its None items need build_loaders' collate).
    """
    check_augment(info, aug)
    size = int(img_size or info.img_size)
    if info.kind == "builtin":
        train, val = ShapesDataset("train", info.train_size, size), ShapesDataset("val", info.val_size, size)
    elif info.kind == "synthetic":
        train, val = (FakeDataset(info.train_size, size, info.num_classes, seed, "train"),
                      FakeDataset(info.val_size, size, info.num_classes, seed, "val"))
    else:
        train_tf, val_tf = _timm_transforms(size, model_cfg, aug)
        train, val = _image_datasets(info, None if val_only else train_tf, val_tf)
        if skip_bad_images:
            train = SkipBadImages(train, "replace") if train is not None else None
            val = SkipBadImages(val, "drop")
    return (None if val_only else train), val


def _image_datasets(info: DatasetInfo, train_tf: Callable, val_tf: Callable) -> tuple[Any, Any]:
    if info.kind == "cub200":
        return _cub_datasets(info, train_tf, val_tf)
    if info.kind in ("cifar", "stanford_cars", "fgvc_aircraft", "flowers102"):
        from torchvision import datasets as tvd

        tv_root = str(Path(info.path).parent)  # torchvision's root holds the dataset's own folder

        def pair(cls, train_kw, val_kw):
            train = _torchvision(lambda: cls(tv_root, transform=train_tf, **train_kw), info) if train_tf else None
            return train, _torchvision(lambda: cls(tv_root, transform=val_tf, **val_kw), info)

        if info.kind == "cifar":
            cls = tvd.CIFAR10 if info.name == "cifar10" else tvd.CIFAR100
            return pair(cls, dict(train=True, download=False), dict(train=False, download=False))
        common = dict(download=False, loader=_load_image)
        if info.kind == "stanford_cars":
            return pair(tvd.StanfordCars, dict(split="train", **common), dict(split="test", **common))
        if info.kind == "fgvc_aircraft":
            kw = dict(annotation_level="variant", **common)
            return pair(tvd.FGVCAircraft, dict(split="trainval", **kw), dict(split="test", **kw))
        from torch.utils.data import ConcatDataset

        train_part, val = pair(tvd.Flowers102, dict(split="train", **common), dict(split="test", **common))
        if train_part is None:
            return None, val
        extra = _torchvision(lambda: tvd.Flowers102(tv_root, split="val", transform=train_tf, **common), info)
        return ConcatDataset([train_part, extra]), val
    if info.kind == "imagefolder":
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
    raise AssertionError(info.kind)


class _Remap:
    """Target transform mapping a split's own class index to the train split's index (picklable)."""

    def __init__(self, classes, class_to_idx):
        self.table = [class_to_idx[c] for c in classes]

    def __call__(self, target: int) -> int:
        return self.table[target]


def _worker_init(worker_id: int) -> None:
    import numpy as np
    import torch

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def build_loaders(info: DatasetInfo, batch_size: int, img_size: int | None = None, seed: int = 0,
                  num_workers: int = 0, model_cfg: dict | None = None, train_size: int | None = None,
                  aug: Augment = Augment(), skip_bad_images: bool = False, rank: int = 0, world_size: int = 1,
                  val_size: int | None = None, val_only: bool = False) -> tuple[DataLoader | None, DataLoader]:
    """(train_loader, val_loader) of (images (B, 3, S, S) float32, labels (B,) int64) batches; with
    `val_only=True`, (None, val_loader) and the training split is never listed (evaluation).

    Train shuffles with a generator seeded by `seed` and drops the last partial batch (when there is more than
    one batch); val keeps order. `train_size` takes a prefix of the train split (e.g. a small subset to overfit),
    `val_size` a prefix of the val split. Evaluation preprocessing follows `model_cfg` (see eval_transform_info,
    which returns it).

    Data-parallel (`world_size` > 1, this process being `rank`): the train loader's sampler is a
    DistributedSampler giving this rank its share of each epoch's permutation (seeded by `seed`; call
    `train_loader.sampler.set_epoch(epoch)` before each epoch; the < world_size samples that do not divide
    evenly are left out of that epoch); the val loader holds images rank, rank + world_size, … of the val split,
    so the ranks together evaluate every image exactly once (sum their counts to get the full-set metrics).

    skip_bad_images=False: an unreadable image stops the run with a DataError naming the file.
    skip_bad_images=True (image datasets): both loaders' datasets are SkipBadImages — training replaces an
    unreadable image with the next readable one, evaluation leaves it out of its batch — and
    bad_image_count(train_loader, val_loader) / bad_image_paths(...) report them, with any num_workers.
    """
    import torch
    from torch.utils.data import DataLoader, Subset
    from torch.utils.data.distributed import DistributedSampler

    assert 0 <= rank < world_size, (rank, world_size)
    train, val = build_datasets(info, img_size, model_cfg, seed, aug, val_only=val_only)
    if train_size is not None and train is not None:
        train = Subset(train, range(min(train_size, len(train))))
    if val_size is not None and val_size < len(val):
        val = Subset(val, range(val_size))
    if world_size > 1:
        val = Subset(val, range(rank, len(val), world_size))  # strided: no image twice, none left out
    val_collate = None
    if skip_bad_images and info.kind not in _GENERATED:
        size = int(img_size or info.img_size)
        train = SkipBadImages(train, "replace") if train is not None else None
        val = SkipBadImages(val, "drop")
        val_collate = _CollateGood((3, size, size))
    # Shuffles a single process's epochs; seeds the loader's worker processes (their augmentation draws), which
    # differ between ranks.
    gen = torch.Generator().manual_seed(int(seed) + rank)
    common = dict(num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                  persistent_workers=False, pin_memory=torch.cuda.is_available())
    if train is None:
        train_loader = None
    elif world_size > 1:
        sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed),
                                     drop_last=True)
        train_loader = DataLoader(train, batch_size=batch_size, sampler=sampler, generator=gen,
                                  drop_last=len(sampler) > batch_size, **common)
    else:
        train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen,
                                  drop_last=len(train) > batch_size, **common)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=val_collate,
                            **common)
    return train_loader, val_loader
