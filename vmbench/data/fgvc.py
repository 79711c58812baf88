"""Fine-grained datasets: CUB-200-2011 (its official metadata files, and alternative stratified (train, val)
splits of its training images), Stanford Cars, FGVC-Aircraft and Flowers-102 (torchvision's on-disk formats,
never downloaded). Entry points: cub_datasets, torchvision_fgvc_datasets, write_split, stratified_split."""
from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ._common import DataError, DatasetInfo, _load_image, _read_lines, _torchvision, _torchvision_pair, _write_atomic

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


def write_split(folder: Path, val_frac: float, seed: int) -> dict:
    """Write the stratified split val<frac>-seed<seed> of the official training images of the CUB-200-2011 folder
    `folder` (see registry.make_split, the entry point that checks its arguments). Returns make_split's dict."""
    meta = _read_cub(folder)
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


def _cub_info(folder: Path, variant: str | None, img_size: int) -> DatasetInfo:
    meta = _read_cub(folder)
    if variant is None:
        n_train = sum(meta.is_train.values())
        return DatasetInfo("cub200", len(meta.classes), img_size, "cub200", str(folder), n_train,
                           len(meta.ids) - n_train, "test", meta.classes)
    tag = _parse_variant("cub200", variant)
    split_file = folder / SPLITS_DIR / f"{tag}.txt"
    if not split_file.is_file():
        raise DataError(f"cub200:split-{tag}: no split file {split_file} (create it with `{_split_command(tag)}`)")
    split = _read_split_file(split_file, meta)
    n_train = sum(split.values())
    return DatasetInfo(f"cub200:split-{tag}", len(meta.classes), img_size, "cub200", str(folder), n_train,
                       len(split) - n_train, tag, meta.classes, split_file=str(split_file))


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


def cub_datasets(info: DatasetInfo, train_tf: Callable | None, val_tf: Callable) -> tuple[Any, _ImageList]:
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


def torchvision_fgvc_datasets(info: DatasetInfo, train_tf: Callable | None, val_tf: Callable,
                              layout: str) -> tuple[Any, Any]:
    """(train, val) of Stanford Cars (train / test), FGVC-Aircraft (trainval / test, variant level) or Flowers-102
    (train + val / test); train None without train_tf."""
    from torchvision import datasets as tvd

    common = dict(download=False, loader=_load_image)
    if info.kind == "stanford_cars":
        return _torchvision_pair(tvd.StanfordCars, info, layout, train_tf, val_tf,
                                 dict(split="train", **common), dict(split="test", **common))
    if info.kind == "fgvc_aircraft":
        kw = dict(annotation_level="variant", **common)
        return _torchvision_pair(tvd.FGVCAircraft, info, layout, train_tf, val_tf,
                                 dict(split="trainval", **kw), dict(split="test", **kw))
    from torch.utils.data import ConcatDataset

    train_part, val = _torchvision_pair(tvd.Flowers102, info, layout, train_tf, val_tf,
                                 dict(split="train", **common), dict(split="test", **common))
    if train_part is None:
        return None, val
    tv_root = str(Path(info.path).parent)
    extra = _torchvision(lambda: tvd.Flowers102(tv_root, split="val", transform=train_tf, **common), info, layout)
    return ConcatDataset([train_part, extra]), val
