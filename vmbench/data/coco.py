"""Detection / instance-segmentation data in COCO format: `annotations/instances_{train,val}2017.json` beside the
image folders `train2017/` and `val2017/`, read with pycocotools (the named `coco` dataset, or any folder in that
layout by path), and the ground truth of the built-in `shapes-det` as a COCO object for COCOeval.

Entry points: inspect_coco (cheap layout check), CocoDetection (items as ShapesDetDataset's), shapes_det_coco.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from ._common import DataError, _load_image

COCO_LAYOUT = ("annotations/instances_train2017.json, annotations/instances_val2017.json, train2017/ and val2017/ "
               "(the COCO 2017 layout)")
SPLIT_FILES = {"train": ("annotations/instances_train2017.json", "train2017"),
               "val": ("annotations/instances_val2017.json", "val2017")}


def is_coco_folder(folder: Path) -> bool:
    return (folder / "annotations").is_dir() and not (folder / "train").is_dir()


def inspect_coco(folder: Path) -> tuple[str, ...]:
    """Check a COCO-format folder; return its category names in category-id order (labels 1..K). Reads the val
    annotation file's categories (json; the training file is not read)."""
    for rel in (*SPLIT_FILES["train"], *SPLIT_FILES["val"]):
        if not (folder / rel).exists():
            raise DataError(f"no {folder / rel} (expected {folder}/ with {COCO_LAYOUT})")
    ann = folder / SPLIT_FILES["val"][0]
    try:
        with open(ann, encoding="utf-8") as f:
            cats = json.load(f).get("categories") or []
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {ann}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not cats:
        raise DataError(f"{ann} has no categories (expected a COCO instances file)")
    return tuple(str(c.get("name", c["id"])) for c in sorted(cats, key=lambda c: c["id"]))


def _quiet_coco(ann_file: str | None = None, dataset: dict | None = None):
    """A pycocotools COCO object, without its progress prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        if dataset is None:
            return COCO(ann_file)
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        return coco


class CocoDetection:
    """One split of a COCO-format folder. Items: (image (3, H, W) float32 in [0, 1], target) as ShapesDetDataset's,
    with image_id the COCO image id, labels 1..K in category-id order, crowd annotations left out of the targets
    (COCOeval still reads them from the annotation file). Training keeps only images with at least one box;
    evaluation keeps every image. `hflip`: mirror with probability 0.5."""

    def __init__(self, folder: str | Path, split: str, hflip: bool = False):
        folder = Path(folder)
        ann, images = SPLIT_FILES[split]
        try:
            self.coco = _quiet_coco(str(folder / ann))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"cannot read {folder / ann}: {type(e).__name__}: {e}") from None
        self.images = folder / images
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_to_category = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self._label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.getImgIds())
        if split == "train":
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids
        self.hflip = bool(hflip)

    def __len__(self) -> int:
        return len(self.ids)

    def coco_gt(self, ids=None):
        """The split's annotation file as a pycocotools COCO object (every image; COCOeval picks `ids`)."""
        return self.coco

    def __getitem__(self, i: int) -> tuple[Any, dict]:
        import numpy as np
        import torch
        from torchvision.transforms.functional import pil_to_tensor

        img_id = self.ids[i]
        info = self.coco.imgs[img_id]
        img = pil_to_tensor(_load_image(self.images / info["file_name"])).float().div_(255)  # (3, H, W)
        h, w = img.shape[-2:]
        anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0) and a["bbox"][2] > 0
                and a["bbox"][3] > 0]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = (torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])) if anns
                 else torch.zeros(0, h, w, dtype=torch.uint8))
        labels = torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64)
        if self.hflip and bool(torch.rand(()) < 0.5):
            img, masks = img.flip(-1), masks.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        target = dict(boxes=boxes, labels=labels, masks=masks, image_id=int(img_id),
                      area=torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
                      iscrowd=torch.zeros(len(anns), dtype=torch.int64))
        return img, target


def shapes_det_coco(dataset, ids=None) -> Any:
    """The ground truth of a ShapesDetDataset's items `ids` (default: all; unflipped) as a pycocotools COCO object:
    categories 1..10 = SHAPE_CLASSES, masks as RLE, areas in mask pixels."""
    import numpy as np
    from pycocotools import mask as mask_utils

    images, anns = [], []
    h, w = dataset.size
    for i in (sorted(set(ids)) if ids is not None else range(len(dataset))):
        _, t = dataset.draw(i) if dataset.hflip else dataset[i]  # the unflipped item (cached)
        images.append(dict(id=i, height=h, width=w, file_name=f"{i}.png"))
        for j in range(t["labels"].shape[0]):
            x1, y1, x2, y2 = t["boxes"][j].tolist()
            rle = mask_utils.encode(np.asfortranarray(t["masks"][j].numpy()))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=int(t["labels"][j]), iscrowd=0,
                             bbox=[x1, y1, x2 - x1, y2 - y1], area=float(t["area"][j]), segmentation=rle))
    cats = [dict(id=k + 1, name=name) for k, name in enumerate(dataset.classes)]
    return _quiet_coco(dataset=dict(images=images, annotations=anns, categories=cats))
