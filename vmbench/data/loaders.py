"""From a DatasetInfo to batches: build_datasets (train / val datasets with their transforms), build_loaders
(DataLoaders: sampler, workers, seeding) and the bad-image policy (SkipBadImages, bad_image_count)."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable

from ._common import GENERATED, BadImageError, DataError, DatasetInfo
from .builtin import FakeDataset, ShapesDataset
from .cifar import cifar_datasets
from .fgvc import cub_datasets, torchvision_fgvc_datasets
from .folders import _FOLDER_LAYOUT, imagefolder_datasets
from .registry import _NAMED
from .transforms import Augment, _timm_transforms, check_augment

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset


# --------------------------------------------------------------------------------------------------------------
# reading images; skipping unreadable ones
# --------------------------------------------------------------------------------------------------------------
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
# building datasets and loaders
# --------------------------------------------------------------------------------------------------------------
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


def _image_datasets(info: DatasetInfo, train_tf: Callable | None, val_tf: Callable) -> tuple[Any, Any]:
    layout = _NAMED[info.name].layout if info.name in _NAMED else _FOLDER_LAYOUT
    if info.kind == "cub200":
        return cub_datasets(info, train_tf, val_tf)
    if info.kind == "cifar":
        return cifar_datasets(info, train_tf, val_tf, layout)
    if info.kind in ("stanford_cars", "fgvc_aircraft", "flowers102"):
        return torchvision_fgvc_datasets(info, train_tf, val_tf, layout)
    if info.kind == "imagefolder":
        return imagefolder_datasets(info, train_tf, val_tf)
    raise AssertionError(info.kind)


def _worker_init(worker_id: int) -> None:
    import numpy as np
    import torch

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def build_loaders(info: DatasetInfo, batch_size: int, img_size: int | None = None, seed: int = 0,
                  num_workers: int = 0, model_cfg: dict | None = None, train_size: int | None = None,
                  aug: Augment = Augment(), skip_bad_images: bool = False, rank: int = 0, world_size: int = 1,
                  val_size: int | None = None, val_only: bool = False, persistent_workers: bool | None = None,
                  pin_memory: bool | None = None) -> tuple[DataLoader | None, DataLoader]:
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

    Workers: `num_workers` processes per loader (see resolve_workers for the automatic choice), kept alive
    across epochs when `persistent_workers` (default: whenever there are workers: no re-spawn and no re-drawn
    `shapes` chunks each epoch); batches land in pinned memory when `pin_memory` (default: when CUDA is
    available), so the copy to the GPU is asynchronous.

    skip_bad_images=False: an unreadable image stops the run with a DataError naming the file.
    skip_bad_images=True (image datasets): both loaders' datasets are SkipBadImages — training replaces an
    unreadable image with the next readable one, evaluation leaves it out of its batch — and
    bad_image_count(train_loader, val_loader) / bad_image_paths(...) report them, with any num_workers.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    assert 0 <= rank < world_size, (rank, world_size)
    train, val = build_datasets(info, img_size, model_cfg, seed, aug, val_only=val_only)
    if train_size is not None and train is not None:
        train = Subset(train, range(min(train_size, len(train))))
    if val_size is not None and val_size < len(val):
        val = Subset(val, range(val_size))
    if world_size > 1:
        val = Subset(val, range(rank, len(val), world_size))  # strided: no image twice, none left out
    val_collate = None
    if skip_bad_images and info.kind not in GENERATED:
        size = int(img_size or info.img_size)
        train = SkipBadImages(train, "replace") if train is not None else None
        val = SkipBadImages(val, "drop")
        val_collate = _CollateGood((3, size, size))
    # Shuffles a single process's epochs; seeds the loader's worker processes (their augmentation draws), which
    # differ between ranks.
    gen = torch.Generator().manual_seed(int(seed) + rank)
    persistent = num_workers > 0 if persistent_workers is None else bool(persistent_workers) and num_workers > 0
    common = dict(num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                  persistent_workers=persistent,
                  pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory))
    train_loader = _train_loader(train, batch_size, seed, rank, world_size, gen, common)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=val_collate,
                            **common)
    return train_loader, val_loader


# Upper bound of automatic workers per process: past ~8 decoding processes per GPU the loader outruns the step of
# every backbone here at 224² (and each worker holds a copy of the dataset's index and a prefetch queue).
MAX_AUTO_WORKERS = 8


def cpus_per_process(world_size: int = 1) -> int:
    """CPU cores this process may use (its affinity mask), shared by the `world_size` processes of one host."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, world_size))


def resolve_workers(requested: int | None, device_type: str, info: DatasetInfo, world_size: int = 1) -> int:
    """DataLoader workers per process: `requested` when given (>= 0), else the automatic choice.

    Automatic (None, `--workers auto`): on CUDA, one worker per core of this process's share of the host, at
    most MAX_AUTO_WORKERS, leaving one core to the training process itself; on the CPU, 0 for the generated sets
    (shapes, fake, shapes-det: drawing a batch costs less than handing it over from another process, and the training step
    wants every core) and half of the process's cores (at most 4) for image files, whose decoding is the slow
    part."""
    if requested is not None:
        return int(requested)
    cpus = cpus_per_process(world_size)
    if device_type == "cuda":
        return max(1, min(MAX_AUTO_WORKERS, cpus - 1))
    if info.kind in GENERATED or info.kind == "builtin-det":
        return 0
    return min(4, cpus // 2)


def detection_collate(batch: list) -> tuple[list, list]:
    """Detection batches keep their images apart (sizes differ): ([images (3, H_i, W_i)], [targets])."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def build_detection_datasets(info: DatasetInfo, img_size: int | None = None, hflip: float = 0.5,
                             val_only: bool = False) -> tuple[Any, Any]:
    """(train, val) detection datasets (items: (image (3, H, W) float32 in [0, 1], target dict), see
    ShapesDetDataset); `img_size` is the side of the generated shapes-det images (COCO images keep theirs: the
    detector resizes). Both have coco_gt() (pycocotools ground truth) and label_to_category."""
    if info.kind == "builtin-det":
        from .builtin import ShapesDetDataset

        size = int(img_size or info.img_size)
        train = None if val_only else ShapesDetDataset("train", info.train_size, size, hflip=hflip > 0)
        val = ShapesDetDataset("val", info.val_size, size)
        return train, val
    assert info.kind == "coco", info.kind
    from .coco import CocoDetection

    train = None if val_only else CocoDetection(info.path, "train", hflip=hflip > 0)
    return train, CocoDetection(info.path, "val")


def build_detection_loaders(info: DatasetInfo, batch_size: int, img_size: int | None = None, seed: int = 0,
                            num_workers: int = 0, train_size: int | None = None, val_size: int | None = None,
                            rank: int = 0, world_size: int = 1, hflip: float = 0.5, val_only: bool = False,
                            persistent_workers: bool | None = None) -> tuple[DataLoader | None, DataLoader]:
    """(train_loader, val_loader) of detection batches ([images], [targets]); sampling, seeding, DDP shares and
    workers as build_loaders. `val_loader.dataset` keeps `coco_gt()` / `label_to_category` reachable through
    `detection_source(val_loader)`."""
    import torch
    from torch.utils.data import DataLoader, Subset

    train, val = build_detection_datasets(info, img_size, hflip, val_only)
    if train_size is not None and train is not None:
        train = Subset(train, range(min(train_size, len(train))))
    if val_size is not None and val_size < len(val):
        val = Subset(val, range(val_size))
    if world_size > 1:
        val = Subset(val, range(rank, len(val), world_size))
    gen = torch.Generator().manual_seed(int(seed) + rank)
    persistent = num_workers > 0 if persistent_workers is None else bool(persistent_workers) and num_workers > 0
    common = dict(num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                  persistent_workers=persistent, pin_memory=torch.cuda.is_available(), collate_fn=detection_collate)
    train_loader = _train_loader(train, batch_size, seed, rank, world_size, gen, common)
    return train_loader, DataLoader(val, batch_size=batch_size, shuffle=False, **common)


def _train_loader(train, batch_size: int, seed: int, rank: int, world_size: int, gen, common: dict):
    """The training DataLoader (None without a training set): shuffled by `gen`, or this rank's
    DistributedSampler share with `world_size` > 1; a last partial batch is dropped when there is more than one."""
    from torch.utils.data import DataLoader, DistributedSampler

    if train is None:
        return None
    if world_size > 1:
        sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed),
                                     drop_last=True)
        return DataLoader(train, batch_size=batch_size, sampler=sampler, generator=gen,
                          drop_last=len(sampler) > batch_size, **common)
    return DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(train) > batch_size,
                      **common)


def detection_source(loader_or_dataset: Any) -> Any:
    """The detection dataset under a loader / Subset chain (the one with coco_gt())."""
    ds = getattr(loader_or_dataset, "dataset", loader_or_dataset)
    while not hasattr(ds, "coco_gt"):
        ds = ds.dataset
    return ds
