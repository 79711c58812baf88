"""Dataset registry: built-in `shapes`, random `fake`, ImageFolder trees (named or by path), CIFAR.

Two entry points for the engine:

    info = get_dataset_info("shapes", data_root)      # cheap; validates; raises DataError
    train_loader, val_loader = build_loaders(info, batch_size=32, img_size=64, seed=0)

`shapes` and `fake` yield tensors that are already normalised (ImageNet mean/std); folder datasets
go through timm's transforms, resolved from the model's pretrained cfg when one is given.
Every user mistake (missing folder, wrong layout, unreadable image) raises `DataError` with a one-line
message naming the path and the layout that was expected.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

__all__ = [
    "DataError", "DatasetInfo", "ShapesDataset", "FakeDataset", "SHAPE_CLASSES",
    "get_dataset_info", "build_loaders", "build_datasets", "list_datasets",
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
            for prefix in ("vmbench.data.DataError:", "DataError:"):
                if message.startswith(prefix):
                    message = message[len(prefix):].strip()
        super().__init__(message)


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a dataset before loading any of it."""

    name: str  # registry name, or the folder path as given
    num_classes: int
    img_size: int  # default input resolution (a run may override it)
    kind: str  # "builtin" | "synthetic" | "imagefolder" | "cifar"
    path: str | None = None  # root folder (None for generated data)
    train_size: int | None = None  # number of images, when known cheaply
    val_size: int | None = None
    val_split: str | None = None  # "val" or "test" for folder datasets
    classes: tuple[str, ...] = field(default=(), repr=False)


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


class ShapesDataset(Dataset):
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


class FakeDataset(Dataset):
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
        gen = torch.Generator().manual_seed(self._base + i)
        img = torch.randn(3, self.img_size, self.img_size, generator=gen)
        return img, int(torch.randint(self.num_classes, (1,), generator=gen))


FAKE_TRAIN_SIZE, FAKE_VAL_SIZE, FAKE_IMG_SIZE, FAKE_CLASSES = 1024, 256, 224, 1000


# --------------------------------------------------------------------------------------------------------------
# folder datasets
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Named:
    folder: str  # under data_root
    kind: str  # "imagefolder" | "cifar"
    num_classes: int
    img_size: int
    layout: str  # shown to the user


_NAMED = {
    "imagenet": _Named("imagenet", "imagefolder", 1000, 224, "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*"),
    "cub200": _Named("cub200", "imagefolder", 200, 448, "cub200/train/<class>/*.jpg and cub200/val/<class>/*"),
    "cars": _Named("cars", "imagefolder", 196, 448, "cars/train/<class>/*.jpg and cars/val/<class>/*"),
    "aircraft": _Named("aircraft", "imagefolder", 100, 448, "aircraft/train/<class>/*.jpg and aircraft/val/<class>/*"),
    "cifar10": _Named("cifar10", "cifar", 10, 32, "cifar10/cifar-10-batches-py/ (torchvision's CIFAR-10 format)"),
    "cifar100": _Named("cifar100", "cifar", 100, 32, "cifar100/cifar-100-python/ (torchvision's CIFAR-100 format)"),
}
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
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
    return val_split, tuple(classes)


def _resolve_root(data_root: str | None) -> Path | None:
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("VMBENCH_DATA")
    return Path(env).expanduser() if env else None


def get_dataset_info(name: str, data_root: str | None = None) -> DatasetInfo:
    """Describe dataset `name` and check that it is there; cheap (lists directories, reads no image).

    `name` is a registry name (shapes, fake, imagenet, cub200, cars, aircraft, cifar10, cifar100) or a
    folder path in ImageFolder layout. Named folder datasets are looked up under `data_root`
    (--data-root / $VMBENCH_DATA). Raises DataError with the path and the expected layout.
    """
    if name == "shapes":
        return DatasetInfo("shapes", len(SHAPE_CLASSES), SHAPES_IMG_SIZE, "builtin", None,
                           SHAPES_TRAIN_SIZE, SHAPES_VAL_SIZE, "val", SHAPE_CLASSES)
    if name == "fake":
        return DatasetInfo("fake", FAKE_CLASSES, FAKE_IMG_SIZE, "synthetic", None, FAKE_TRAIN_SIZE,
                           FAKE_VAL_SIZE, "val")
    if name in _NAMED:
        entry = _NAMED[name]
        root = _resolve_root(data_root)
        if root is None:
            raise DataError(f"dataset {name!r} needs a data root: pass --data-root or set VMBENCH_DATA "
                            f"(expected <root>/{entry.layout})")
        path = root / entry.folder
        if entry.kind == "cifar":
            if not (path / _CIFAR_DIRS[name]).is_dir():
                raise DataError(f"{name} not found: no {path / _CIFAR_DIRS[name]} (expected <root>/{entry.layout})")
            return DatasetInfo(name, entry.num_classes, entry.img_size, "cifar", str(path), 50000, 10000, "test")
        val_split, classes = _inspect_folder(path, f"<root>/{entry.layout}")
        return DatasetInfo(name, len(classes), entry.img_size, "imagefolder", str(path), None, None,
                           val_split, classes)
    path = Path(name).expanduser()
    if path.exists() or os.sep in name or name.startswith("."):
        val_split, classes = _inspect_folder(path, _FOLDER_LAYOUT)
        return DatasetInfo(name, len(classes), 224, "imagefolder", str(path), None, None, val_split, classes)
    raise DataError(f"unknown dataset {name!r}: not one of {', '.join(['shapes', 'fake', *_NAMED])} "
                    f"and no folder at {path}")


def list_datasets(data_root: str | None = None) -> list[dict]:
    """One row per registered dataset: {name, kind, num_classes, img_size, path, layout, found, error}."""
    root = _resolve_root(data_root)
    rows = [
        dict(name="shapes", kind="builtin", num_classes=len(SHAPE_CLASSES), img_size=SHAPES_IMG_SIZE, path=None,
             layout=f"generated ({SHAPES_TRAIN_SIZE} train / {SHAPES_VAL_SIZE} val, offline)", found=True, error=None),
        dict(name="fake", kind="synthetic", num_classes=FAKE_CLASSES, img_size=FAKE_IMG_SIZE, path=None,
             layout="random tensors (throughput work)", found=True, error=None),
    ]
    for name, entry in _NAMED.items():
        path = str(root / entry.folder) if root is not None else None
        try:
            get_dataset_info(name, data_root)
            found, error = True, None
        except DataError as e:
            found, error = False, str(e)
        rows.append(dict(name=name, kind=entry.kind, num_classes=entry.num_classes, img_size=entry.img_size,
                         path=path, layout=f"<root>/{entry.layout}", found=found, error=error))
    return rows


def _load_image(path: str):
    """PIL loader for folder datasets: an unreadable file raises DataError naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


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


def _timm_transforms(img_size: int, model_cfg: dict | None, aug: Augment = Augment()):
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as T

    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, pretrained_cfg=dict(model_cfg or {}))
    common = dict(input_size=cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])
    if aug.train_resize:
        from timm.data import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        steps = [T.Resize(aug.train_resize), T.RandomCrop(img_size), T.RandomHorizontalFlip(aug.hflip)]
        if aug.rand_augment:
            steps.append(rand_augment_transform(aug.rand_augment, {"img_mean": tuple(round(255 * m) for m in cfg["mean"])}))
        steps += [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
        if aug.random_erasing > 0:
            steps.append(RandomErasing(aug.random_erasing, mode="pixel", device="cpu"))
        train_tf = T.Compose(steps)
    else:
        train_tf = create_transform(**common, is_training=True, hflip=aug.hflip, auto_augment=aug.rand_augment,
                                    re_prob=aug.random_erasing)
    if aug.val_resize:
        val_tf = T.Compose([T.Resize(aug.val_resize), T.CenterCrop(img_size), T.ToTensor(),
                            T.Normalize(cfg["mean"], cfg["std"])])
    else:
        val_tf = create_transform(**common, crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode", "center"),
                                  is_training=False)
    return train_tf, val_tf


def check_augment(info: DatasetInfo, aug: Augment) -> None:
    """Generated tensor datasets (shapes, fake) take no image transforms: refuse a recipe that sets them."""
    changed = aug.changed()
    if changed and info.kind in ("builtin", "synthetic"):
        raise DataError(f"{info.name} is generated tensors; image augmentation ({', '.join(changed)}) applies to "
                        f"image datasets only (reset it with --set, e.g. --set {changed[0]}=...)")


def build_datasets(info: DatasetInfo, img_size: int | None = None, model_cfg: dict | None = None,
                   seed: int = 0, aug: Augment = Augment()) -> tuple[Dataset, Dataset]:
    """(train, val) datasets for `info` at `img_size` (default: info.img_size), with `aug`'s transforms."""
    check_augment(info, aug)
    size = int(img_size or info.img_size)
    if info.kind == "builtin":
        return (ShapesDataset("train", info.train_size, size), ShapesDataset("val", info.val_size, size))
    if info.kind == "synthetic":
        return (FakeDataset(info.train_size, size, info.num_classes, seed, "train"),
                FakeDataset(info.val_size, size, info.num_classes, seed, "val"))
    train_tf, val_tf = _timm_transforms(size, model_cfg, aug)
    if info.kind == "cifar":
        from torchvision import datasets

        cls = datasets.CIFAR10 if info.name == "cifar10" else datasets.CIFAR100
        try:
            return (cls(info.path, train=True, transform=train_tf, download=False),
                    cls(info.path, train=False, transform=val_tf, download=False))
        except (RuntimeError, OSError, ValueError) as e:
            raise DataError(f"cannot load {info.name} from {info.path}: {str(e).splitlines()[0]}") from None
    if info.kind == "imagefolder":
        from torchvision.datasets import ImageFolder

        root = Path(info.path)
        out = []
        for split, tf in (("train", train_tf), (info.val_split or "val", val_tf)):
            try:
                ds = ImageFolder(str(root / split), transform=tf, loader=_load_image,
                                 is_valid_file=lambda p: p.lower().endswith(IMG_EXTENSIONS))
            except FileNotFoundError as e:
                raise DataError(f"{root / split}: {str(e).splitlines()[0]} (expected {_FOLDER_LAYOUT})") from None
            out.append(ds)
        train, val = out
        if val.class_to_idx != {c: train.class_to_idx[c] for c in val.classes}:
            # Classes missing from val would shift indices; map val labels through the train class list.
            val.target_transform = _Remap(val.classes, train.class_to_idx)
        return train, val
    raise AssertionError(info.kind)


class _Remap:
    """Target transform mapping a split's own class index to the train split's index (picklable)."""

    def __init__(self, classes, class_to_idx):
        self.table = [class_to_idx[c] for c in classes]

    def __call__(self, target: int) -> int:
        return self.table[target]


def _worker_init(worker_id: int) -> None:
    import random

    import numpy as np

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def build_loaders(info: DatasetInfo, batch_size: int, img_size: int | None = None, seed: int = 0,
                  num_workers: int = 0, model_cfg: dict | None = None,
                  train_size: int | None = None, aug: Augment = Augment()) -> tuple[DataLoader, DataLoader]:
    """(train_loader, val_loader). Train shuffles with a generator seeded by `seed` and drops the last
    partial batch (when there is more than one batch); val keeps order. `train_size` takes a prefix
    of the train split (e.g. a small subset to overfit)."""
    train, val = build_datasets(info, img_size, model_cfg, seed, aug)
    if train_size is not None:
        train = torch.utils.data.Subset(train, range(min(train_size, len(train))))
    gen = torch.Generator().manual_seed(int(seed))
    common = dict(num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                  persistent_workers=False, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen,
                              drop_last=len(train) > batch_size, **common)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, drop_last=False, **common)
    return train_loader, val_loader
