"""Detection and instance segmentation: torchvision's Mask R-CNN over a feature pyramid on any vmbench backbone,
its training objective, and COCO box / mask AP from pycocotools' COCOeval.

    det = build_detector(backbone, num_classes, min_size=800, max_size=1333)   # backbone: a create_model module
    train_one_epoch(det, loader, opt, device, objective=DetectionObjective())   # the shared training loop
    results = predict(det, val_loader, device)          # COCO-format detections (boxes, scores, RLE masks)
    metrics = coco_metrics(coco_gt, results, image_ids) # {box_ap, box_ap50, …, mask_apl} in percent

The backbone's 4-level features (vmbench.models.features) feed torchvision's FeaturePyramidNetwork (256 channels,
plus a max-pooled fifth level), as in the VMamba paper's Mask R-CNN; the detector resizes each image inside
(`min_size` shorter side, `max_size` cap on the longer; a tuple of min sizes draws one per training image: the
multi-scale 3x schedule) and normalises with ImageNet statistics.
"""
from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..config import DETECTION_METRICS, DETECTION_STATS
from .train_loop import Objective

__all__ = ["build_detector", "DET_HEADS", "is_detector_state", "det_head_of", "DetectionObjective", "predict",
           "coco_metrics", "evaluate_detection", "DETECTION_METRICS", "empty_metrics", "detection_sizes",
           "default_max_size", "detector_cost", "detector_throughput"]

Progress = Callable[[str, int, int], None]

FPN_CHANNELS = 256


# Detector sizes (RunSpec.det_head). "standard": torchvision's Mask R-CNN as the paper's table uses it (FPN 256,
# two-fc 1024 box head, four 256-channel mask convs, 2000 / 1000 proposals, 512 sampled RoIs per image).
# "light": the same architecture narrowed for CPU work on few-object images (shapes-det: 1-3 objects): FPN 64, box
# head 256, two 64-channel mask convs, 300 / 100 proposals, 64 sampled RoIs (8x fewer, each ~16x cheaper to box).
DET_HEADS = {
    "standard": dict(fpn=FPN_CHANNELS, box_rep=1024, mask_layers=(256, 256, 256, 256), maskrcnn=dict()),
    "light": dict(fpn=64, box_rep=256, mask_layers=(64, 64), maskrcnn=dict(
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=128, box_batch_size_per_image=64,
        box_detections_per_img=20)),
}


class FeaturePyramid(nn.Module):
    """Backbone features [C2..C5] -> torchvision FPN levels {"0".."3", "pool"} of `channels` channels."""

    def __init__(self, body: nn.Module, channels: int = FPN_CHANNELS):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor):
        from collections import OrderedDict

        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f.contiguous()) for i, f in enumerate(feats)))


def build_detector(backbone: nn.Module, num_classes: int, min_size: int | tuple[int, ...] = 800,
                   max_size: int = 1333, head: str = "standard") -> nn.Module:
    """torchvision MaskRCNN for `num_classes` object classes (+ background) over `backbone` (a classification
    model from vmbench's create_model, weights already loaded: its classifier is not used); `head`: a DET_HEADS
    size."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    from vmbench.data import IMAGENET_MEAN, IMAGENET_STD
    from vmbench.models.features import feature_backbone

    if head not in DET_HEADS:
        raise ValueError(f"det_head must be one of {', '.join(DET_HEADS)}; got {head!r}")
    cfg = DET_HEADS[head]
    sizes = tuple(min_size) if isinstance(min_size, (tuple, list)) else (int(min_size),)
    classes = num_classes + 1  # + background
    heads = {}
    if head != "standard":  # torchvision's own heads otherwise
        c, rep, mask = cfg["fpn"], cfg["box_rep"], list(cfg["mask_layers"])
        heads = dict(box_head=TwoMLPHead(c * 7 * 7, rep), box_predictor=FastRCNNPredictor(rep, classes),
                     mask_head=MaskRCNNHeads(c, mask, 1), mask_predictor=MaskRCNNPredictor(mask[-1], mask[-1], classes))
    det = MaskRCNN(FeaturePyramid(feature_backbone(backbone), cfg["fpn"]), num_classes=None if heads else classes,
                   min_size=sizes, max_size=int(max_size), image_mean=list(IMAGENET_MEAN),
                   image_std=list(IMAGENET_STD), **heads, **cfg["maskrcnn"])
    return det


def is_detector_state(state_dict: dict) -> bool:
    """Whether a state dict is a whole detector's (build_detector: RPN and RoI heads), not a classifier's."""
    return any(k.startswith("roi_heads.") for k in state_dict) and any(k.startswith("rpn.") for k in state_dict)


def det_head_of(state_dict: dict) -> str | None:
    """The DET_HEADS size a detector state dict was built with (from its FPN width and box head), None if none."""
    fpn = state_dict.get("backbone.fpn.layer_blocks.0.0.weight")
    fc6 = state_dict.get("roi_heads.box_head.fc6.weight")
    for name, cfg in DET_HEADS.items():
        if fpn is not None and fc6 is not None and fpn.shape[0] == cfg["fpn"] and fc6.shape[0] == cfg["box_rep"]:
            return name
    return None


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]


class DetectionObjective(Objective):
    """Batches ([images (3, H_i, W_i) in [0, 1]], [targets]): the sum of Mask R-CNN's losses (RPN objectness and
    box, RoI classification and box, mask); no accuracy."""

    def __call__(self, model, batch, device, autocast):
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = _to_device(targets, device)
        with autocast:
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        return loss, len(images), None


def _rle(mask) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def predict(model: nn.Module, loader: Iterable, device: torch.device | str, amp: bool = False,
            max_batches: int | None = None, progress: Progress | None = None, task: str = "eval",
            label_to_category: dict | None = None) -> tuple[list[dict], list[int]]:
    """Run the detector over `loader` in eval mode: (COCO result dicts {image_id, category_id, bbox [x, y, w, h],
    score, segmentation (RLE of the mask thresholded at 0.5)}, image ids seen). Labels map to category ids through
    `label_to_category` (identity without it). The model's train/eval mode is restored."""
    device = torch.device(device)
    use_amp = bool(amp) and device.type == "cuda"
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    was_training = model.training
    model.eval()
    results, ids = [], []
    try:
        with torch.no_grad():
            for i, (images, targets) in enumerate(loader):
                if i >= total:
                    break
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    outputs = model([im.to(device, non_blocking=True) for im in images])
                for out, t in zip(outputs, targets):
                    img_id = int(t["image_id"])
                    ids.append(img_id)
                    boxes = out["boxes"].float().cpu()
                    masks = (out["masks"][:, 0] > 0.5).to(torch.uint8).cpu().numpy() if "masks" in out else None
                    for j in range(boxes.shape[0]):
                        x1, y1, x2, y2 = boxes[j].tolist()
                        label = int(out["labels"][j])
                        r = dict(image_id=img_id, bbox=[x1, y1, x2 - x1, y2 - y1], score=float(out["scores"][j]),
                                 category_id=(label_to_category or {}).get(label, label))
                        if masks is not None:
                            r["segmentation"] = _rle(masks[j])
                        results.append(r)
                if progress is not None:
                    progress(task, i + 1, total)
    finally:
        model.train(was_training)
    return results, ids


def empty_metrics() -> dict:
    return {k: 0.0 for k in DETECTION_METRICS}


def coco_metrics(coco_gt, results: list[dict], image_ids: list[int]) -> dict:
    """COCOeval of `results` against `coco_gt` (pycocotools COCO) over `image_ids`: {box_ap, box_ap50, box_ap75,
    box_aps, box_apm, box_apl, mask_ap, …} in percent. No detection at all gives 0 everywhere; a size range with
    no ground truth (COCOeval's -1) gives NaN."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return empty_metrics()
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
        dt = coco_gt.loadRes(results)
        for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
            if iou_type == "segm" and "segmentation" not in results[0]:
                continue
            ev = COCOeval(coco_gt, dt, iou_type)
            ev.params.imgIds = sorted(set(image_ids))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            for name, v in zip(DETECTION_STATS, ev.stats[:6]):
                out[f"{prefix}_{name}"] = 100.0 * float(v) if v >= 0 else float("nan")
    return out


def evaluate_detection(model: nn.Module, loader, device, amp: bool = False, max_batches: int | None = None,
                       progress: Progress | None = None, task: str = "eval", gather=None) -> dict:
    """predict() then coco_metrics() against the loader's dataset ground truth: {box_ap, …, mask_apl, images}.
    `gather(obj) -> [obj of every rank]` (data-parallel runs): the ranks' detections are pooled before COCOeval,
    so every rank returns the full-set metrics."""
    from vmbench.data import detection_source

    source = detection_source(loader)
    results, ids = predict(model, loader, device, amp, max_batches, progress, task,
                           getattr(source, "label_to_category", None))
    if gather is not None:
        parts = gather((results, ids))
        results = [r for p in parts for r in p[0]]
        ids = [i for p in parts for i in p[1]]
    metrics = coco_metrics(source.coco_gt(ids), results, ids) if ids else {k: float("nan") for k in DETECTION_METRICS}
    return {**metrics, "images": len(ids)}


def default_max_size(min_size: int) -> int:
    """The longer-side cap for a shorter side `min_size`: the 1x schedule's ratio (800 -> 1333)."""
    return int(round(min_size * 1333 / 800))


def detection_sizes(spec, dataset) -> tuple[int | tuple[int, ...], int, int]:
    """(min_size for training — a tuple for multi-scale —, max_size, evaluation shorter side) of a detection
    RunSpec: img_size (default: the dataset's; shapes-det draws its images at that size) is the evaluation's
    shorter side, max_size its cap on the longer one (default: img_size * 1333 / 800, the 1x ratio), train_sizes
    the shorter sides drawn per training image when set (multi-scale training)."""
    size = int(spec.img_size or dataset.img_size)
    max_size = int(getattr(spec, "max_size", None) or default_max_size(size))
    train_sizes = getattr(spec, "train_sizes", None)
    train_min = tuple(int(s) for s in train_sizes) if train_sizes else size
    return train_min, max_size, size


def detector_cost(model_name: str, num_classes: int, hw: tuple[int, int], drop_path_rate=None,
                  head: str = "standard") -> dict:
    """Params of the whole Mask R-CNN and FLOPs of its backbone + FPN at one (H, W) image, batch 1, on the CPU
    (the RPN and RoI heads depend on the proposals and are not counted). Keys: params_m, gflops, flops_scope,
    flops_res ("HxW"), flops_uncovered, flops_error."""
    from vmbench.models import create_model
    from vmbench.models.features import feature_backbone, size_free_kwargs

    from .flops import count_flops, count_params

    backbone = create_model(model_name, num_classes=num_classes, scan_backend="torch",
                            **size_free_kwargs(model_name)).eval()
    det = build_detector(backbone, num_classes, min_size=min(hw), max_size=max(hw), head=head)
    out = dict(params_m=count_params(det) / 1e6, gflops=None, flops_scope="backbone+fpn",
               flops_res=f"{hw[0]}x{hw[1]}", flops_uncovered=[], flops_error=None)
    try:
        from vmbench.models.vmamba import VSSM

        if isinstance(backbone, VSSM):  # the four stages, block by block (fast), then the pyramid on its inputs
            bb_flops, uncovered = count_flops(backbone, hw, fast=True)
            bb_flops -= backbone.cfg.dims[-1] * backbone.num_classes  # the classifier's Linear is not used
        else:
            bb_flops, uncovered = count_flops(_Tupled(feature_backbone(backbone)), hw)
        with torch.no_grad():
            feats = det.backbone.body(torch.zeros(1, 3, *hw))
        fpn_flops, fpn_unc = count_flops(_FpnOnly(det.backbone.fpn, feats), hw)
        out["gflops"] = (bb_flops + fpn_flops) / 1e9
        out["flops_uncovered"] = sorted(set(uncovered) | set(fpn_unc))
    except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError) as e:
        out["flops_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return out


class _Tupled(nn.Module):
    """A feature extractor with a tuple output (what fvcore's tracer takes)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return tuple(self.body(x))


class _FpnOnly(nn.Module):
    """The FPN over fixed backbone features (the input image is ignored): its own FLOPs."""

    def __init__(self, fpn, feats):
        super().__init__()
        self.fpn, self.feats = fpn, [f.contiguous() for f in feats]

    def forward(self, x):
        from collections import OrderedDict

        return tuple(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.feats))).values())


def detector_throughput(model: nn.Module, batch: int, hw: tuple[int, int], device, amp: bool = False,
                        warmup: int = 1, repeats: int = 3) -> dict:
    """Inference img/s of a detector on `batch` random (3, H, W) images (the model's own resize applies), timed
    by vmbench's one timing loop (engine.bench.timed_runs): `warmup` untimed calls (at least one: the first),
    then the median of `repeats` timed calls. Returns {img_s, latency_ms}."""
    import statistics

    from .bench import timed_runs

    device = torch.device(device)
    use_amp = bool(amp) and device.type == "cuda"
    images = [torch.rand(3, *hw, device=device) for _ in range(batch)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            _, ms = timed_runs(lambda: model(images), device, warmup=max(warmup - 1, 0), repeats=repeats, iters=1)
    finally:
        model.train(was_training)
    t = statistics.median(ms) / 1000.0
    return dict(img_s=batch / t, latency_ms=1000.0 * t)
