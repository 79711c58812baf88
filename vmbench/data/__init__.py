"""Datasets: the registry (built-in `shapes`, random `fake`, local image datasets; nothing is ever downloaded),
their transforms and loaders.

Entry points for the engine:

    info = get_dataset_info("cub200", data_root)      # cheap; validates the layout; raises DataError
    train_loader, val_loader = build_loaders(info, batch_size=32, img_size=448, seed=0, model_cfg=cfg)
    eval_cfg = eval_transform_info(info, 448, cfg)     # the evaluation preprocessing, to record on the run

One module per job: builtin (shapes, fake, shapes-det), coco (COCO-format detection folders), folders (ImageFolder trees, ImageNet), fgvc (CUB-200-2011 and its
alternative splits, Stanford Cars, FGVC-Aircraft, Flowers-102), cifar, transforms, registry (where each dataset
lives, list_datasets, make_split), loaders (datasets → DataLoaders, the bad-image policy). Every user mistake
(missing folder, wrong layout, unreadable image) raises `DataError` with a one-line message naming the path and
the expected layout. Importing this package does not import torch (`vmbench datasets` and `vmbench data split`
start fast); the functions that build data import it.
"""
from __future__ import annotations

from ._common import (DETECTION_KINDS, IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, BadImageError, DataError,
                      DatasetInfo, task_mismatch)
from .builtin import (
    FAKE_CLASSES, FAKE_IMG_SIZE, FAKE_TRAIN_SIZE, FAKE_VAL_SIZE, HARD_SHAPES, SHAPE_CLASSES, SHAPES_IMG_SIZE,
    SHAPES_SEED, SHAPES_STYLE, SHAPES_TRAIN_SIZE, SHAPES_VAL_SIZE, FakeDataset, ShapesDataset, ShapesDetDataset,
    ShapesStyle,
)
from .fgvc import SPLITS_DIR, split_tag, stratified_split
from .loaders import (SkipBadImages, bad_image_count, bad_image_paths, build_datasets, build_detection_loaders,
                      build_loaders, cpus_per_process, detection_collate, detection_source, resolve_workers)
from .registry import dataset_family, get_dataset_info, list_datasets, make_split
from .transforms import Augment, check_augment, eval_transform_info

__all__ = [
    "DataError", "BadImageError", "DatasetInfo", "ShapesDataset", "FakeDataset", "ShapesStyle", "SHAPE_CLASSES",
    "HARD_SHAPES", "SHAPES_STYLE", "SHAPES_IMG_SIZE", "SHAPES_SEED", "SHAPES_TRAIN_SIZE", "SHAPES_VAL_SIZE",
    "FAKE_CLASSES", "FAKE_IMG_SIZE", "FAKE_TRAIN_SIZE", "FAKE_VAL_SIZE", "IMAGENET_MEAN", "IMAGENET_STD",
    "IMG_EXTENSIONS", "Augment", "check_augment", "eval_transform_info", "get_dataset_info", "dataset_family",
    "list_datasets", "make_split", "stratified_split", "split_tag", "SPLITS_DIR", "build_loaders",
    "build_datasets", "SkipBadImages", "bad_image_count", "bad_image_paths", "resolve_workers", "cpus_per_process",
    "ShapesDetDataset", "build_detection_loaders", "detection_collate", "detection_source", "DETECTION_KINDS",
    "task_mismatch",
]
