"""Generated datasets, nothing on disk: `shapes` (10 shape classes drawn on the fly, deterministic) and `fake`
(random tensors for throughput work). Entry points: ShapesDataset, FakeDataset."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._common import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import torch

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
# shapes-det: the same shapes as boxes and instance masks (detection / instance segmentation)
# --------------------------------------------------------------------------------------------------------------
SHAPES_DET_TRAIN_SIZE = 2000
SHAPES_DET_VAL_SIZE = 200
SHAPES_DET_IMG_SIZE = 128
SHAPES_DET_MAX_OBJECTS = 3
_MIN_VISIBLE_PX = 12  # an object occluded down to fewer pixels is not annotated


class ShapesDetDataset:
    """The built-in `shapes-det` task: 1 to SHAPES_DET_MAX_OBJECTS shapes (SHAPE_CLASSES) per image, each with its
    box and instance mask, on the `shapes` backgrounds (colour band, gradient, noise); later shapes occlude earlier
    ones and the masks are what stays visible.

    Deterministic: item i depends only on (seed, split, i); drawn on first access and kept (uint8) while the split
    fits in the shapes cache's budget. `size` is (H, W) or one int for square images.
    __getitem__ returns (image (3, H, W) float32 in [0, 1] — the detector normalises —, target) with target =
    {boxes (k, 4) float32 x1 y1 x2 y2 in pixels, labels (k,) int64 in 1..10 (0 is the background), masks (k, H, W)
    uint8, image_id int (= i), area (k,) float32 mask pixels, iscrowd (k,) int64 zeros}. `hflip` (training) mirrors
    image, boxes and masks with probability 0.5 (drawn from torch's global generator, as transforms do).
    """

    num_classes = len(SHAPE_CLASSES)
    classes = SHAPE_CLASSES

    def __init__(self, split: str = "train", n: int | None = None, size: int | tuple[int, int] = SHAPES_DET_IMG_SIZE,
                 seed: int = SHAPES_SEED, hflip: bool = False):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.seed, self.hflip = split, int(seed), bool(hflip)
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.n = int(n if n is not None else (SHAPES_DET_TRAIN_SIZE if split == "train" else SHAPES_DET_VAL_SIZE))
        # Drawn items kept as uint8 (image + up to 3 masks: ~6 bytes a pixel) when the split fits in _CACHE_BYTES.
        self._cache: dict[int, tuple] = {}
        self._cacheable = self.n * self.size[0] * self.size[1] * 6 <= _CACHE_BYTES

    def __len__(self) -> int:
        return self.n

    def coco_gt(self, ids=None):
        """The ground truth of items `ids` (default: all) as a pycocotools COCO object (image id = item index)."""
        from .coco import shapes_det_coco

        return shapes_det_coco(self, ids)

    def draw(self, i: int) -> tuple[torch.Tensor, dict]:
        """Item i without the flip: (image (3, H, W) float32 in [0, 1], target)."""
        import torch

        if not 0 <= i < self.n:
            raise IndexError(i)
        h, w = self.size
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + 10 + _SPLIT_IDS[self.split]) * 1_000_003) + i)
        rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        unit = min(h, w) / 2  # pixels per shape-frame unit
        yy = (torch.arange(h, dtype=torch.float32) + 0.5 - h / 2) / unit  # (H,)
        xx = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2) / unit  # (W,)
        yy, xx = torch.meshgrid(yy, xx, indexing="ij")  # (H, W)
        light_bg = bool(rand(()) < 0.5)
        band = lambda light: 0.6 + 0.4 * rand(3) if light else 0.4 * rand(3)  # noqa: E731
        grad_dir = float(rand(())) * 2 * math.pi
        grad = xx * math.cos(grad_dir) + yy * math.sin(grad_dir)
        img = band(light_bg)[:, None, None] + 0.12 * (float(rand(())) * 2 - 1) * grad[None]  # (3, H, W)
        k = int(torch.randint(1, SHAPES_DET_MAX_OBJECTS + 1, (), generator=gen))
        labels = torch.randint(len(SHAPE_CLASSES), (k,), generator=gen)
        masks = []
        half_w, half_h = w / 2 / unit, h / 2 / unit
        for j in range(k):
            scale = 0.25 + 0.3 * float(rand(()))  # circumradius in frame units (the short side is 2)
            cx = (float(rand(())) * 2 - 1) * max(half_w - scale, 0.0)
            cy = (float(rand(())) * 2 - 1) * max(half_h - scale, 0.0)
            angle = (float(rand(())) * 2 - 1) * math.pi
            c, s = math.cos(angle), math.sin(angle)
            u = (c * (xx - cx) + s * (yy - cy)) / scale
            v = (-s * (xx - cx) + c * (yy - cy)) / scale
            m = _shape_mask(int(labels[j]), u[None], v[None])[0]  # (H, W) bool
            for prev in masks:
                prev &= ~m  # occluded by the new shape
            masks.append(m)
            img = torch.where(m[None], band(not light_bg)[:, None, None], img)
        img = (img + 0.05 * torch.randn(img.shape, generator=gen)).clamp_(0.0, 1.0)
        keep = [j for j in range(k) if int(masks[j].sum()) >= _MIN_VISIBLE_PX]
        mask_t = torch.stack([masks[j] for j in keep]).to(torch.uint8) if keep else torch.zeros(0, h, w, dtype=torch.uint8)
        return img, _target(mask_t, labels[keep] + 1, i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        import torch

        hit = self._cache.get(i)
        if hit is None:
            img, target = self.draw(i)
            hit = ((img * 255).round_().to(torch.uint8), target)
            if self._cacheable:
                self._cache[i] = hit
        img, target = hit[0].float().div_(255), hit[1]
        if self.hflip and bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
            target = _target(target["masks"].flip(-1), target["labels"], i)
        return img, target


def _target(masks: torch.Tensor, labels: torch.Tensor, image_id: int) -> dict:
    """A detection target from instance masks (k, H, W) uint8 and labels (k,): boxes are the masks' extents."""
    import torch

    k = masks.shape[0]
    boxes = torch.zeros(k, 4)
    for j in range(k):
        ys, xs = torch.nonzero(masks[j], as_tuple=True)
        boxes[j] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return dict(boxes=boxes, labels=labels.to(torch.int64), masks=masks, image_id=int(image_id),
                area=masks.flatten(1).sum(1).float(), iscrowd=torch.zeros(k, dtype=torch.int64))
