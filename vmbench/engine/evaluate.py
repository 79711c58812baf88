"""Top-1 / top-5 accuracy and cross-entropy of a classifier over a loader, and of a weights file on a dataset.

    evaluate(model, loader, device)            # a model in memory
    job = WeightsEval(spec)                    # `vmbench eval`: validates the EvalSpec; does no work
    job.prepare()                              # reads + loads the weights, builds the loader (ValueError)
    result = job.run(progress)                 # evaluates (see WeightsEval.run)
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from . import SpecError
from .bench import recorded_scan_backend

__all__ = ["evaluate", "WeightsEval", "read_eval_weights"]

Progress = Callable[[str, int, int], None]


def evaluate(model: torch.nn.Module, loader: Iterable, device: torch.device | str, amp: bool = False,
             max_batches: int | None = None, progress: Progress | None = None, task: str = "eval",
             channels_last: bool = False) -> dict:
    """Evaluate `model` on (images, labels) batches from `loader`.

    Eval mode and inference_mode, parameters frozen for the pass (`vmbench.kernels.frozen_parameters`); bf16
    autocast when `amp` and `device` is CUDA; input batches in channels_last
    memory format when `channels_last`. At most `max_batches` batches. Top-k is over min(k, num_classes) classes,
    so top-5 is 100 % with fewer than 6 classes.
    Returns {top1, top5 (percent), loss (mean unsmoothed cross-entropy per image), images}; an empty loader
    gives NaNs and images 0. The model's previous train/eval mode is restored.
    """
    device = torch.device(device)
    use_amp = bool(amp) and device.type == "cuda"
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = max_batches or 0
    if max_batches is not None:
        total = min(total, max_batches) if total else max_batches
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = 0
    # A torch.compile'd module (it has `_orig_mod`) runs under no_grad: inference-mode tensors would make it
    # recompile, and cannot meet its training graph afterwards.
    grad_ctx = torch.no_grad if hasattr(model, "_orig_mod") else torch.inference_mode
    from vmbench.kernels import frozen_parameters

    try:
        with grad_ctx(), frozen_parameters():  # no parameter changes during a pass
            for i, (images, labels) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                if images.shape[0] == 0:  # every image of the batch was unreadable and skipped
                    continue
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(images)
                logits = logits.float()  # (B, num_classes)
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
                k = min(5, logits.shape[1])
                topk = logits.topk(k, dim=1).indices  # (B, k)
                hit = topk == labels[:, None]
                correct1 += int(hit[:, 0].sum())
                correct5 += int(hit.any(dim=1).sum())
                n += labels.shape[0]
                if progress is not None:
                    progress(task, i + 1, total)
    finally:
        model.train(was_training)
    if n == 0:
        return dict(top1=float("nan"), top5=float("nan"), loss=float("nan"), images=0)
    return dict(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, images=n)


def read_eval_weights(spec, model_name: str, detector: bool):
    """The weights file of an evaluation (EvalSpec), read; SpecError (one line) when it does not read, holds the
    other task's weights (a detector's for a classification evaluation, or the reverse), or is a vmbench checkpoint
    of another model than `model_name`."""
    from vmbench.weights import read_weights

    from .detection import is_detector_state

    try:
        weights = read_weights(spec.weights, ema=spec.ema, trust=spec.trust_checkpoint)
    except ValueError as e:
        raise SpecError(str(e)) from None
    if is_detector_state(weights.state_dict) != detector:
        raise SpecError(f"{weights.path} holds classification weights (no RPN / RoI heads), not a detector's: "
                        "evaluate it without --task detection" if detector else
                        f"{weights.path} is a detector's (Mask R-CNN) checkpoint: evaluate it with --task detection")
    meta = weights.meta
    if weights.format == "vmbench" and meta.get("model_name") not in (None, model_name):
        raise SpecError(f"{weights.path} is a checkpoint of {meta['model_name']}, not {model_name}")
    return weights


class WeightsEval:
    """`vmbench eval`: one weights file (vmbench.weights formats) on a dataset's validation split.

    `__init__` checks the model name, dataset, device and scan backend (ValueError subclasses) and does no work;
    `prepare()` reads the file (weights_only unless `spec.trust_checkpoint`), builds the model for the dataset's
    classes, loads the weights strictly and builds the validation loader — every failure a ValueError, so the
    caller can record nothing until it succeeds; `run()` evaluates.

    A vmbench checkpoint brings its run's input size and val_resize (used unless the spec gives its own) and must
    be for the same model. `spec.ema` evaluates the file's EMA weights.
    """

    def __init__(self, spec):
        from vmbench.data import Augment, check_augment, get_dataset_info
        from vmbench.models import resolve_model_name

        from .bench import resolve_device, resolve_scan_backend

        self.spec = spec
        self.model_name = resolve_model_name(spec.model)
        self.dataset = get_dataset_info(spec.dataset, spec.data_root)
        self.device = resolve_device(spec.device)
        self.scan_backend = resolve_scan_backend(spec.scan_backend, self.device)
        self.amp = bool(spec.amp) and self.device.type == "cuda"
        check_augment(self.dataset, Augment(val_resize=spec.val_resize))
        self.model: torch.nn.Module | None = None
        self.info: dict[str, Any] = {}  # what to record before the evaluation: weights_*, img_size, eval_transform

    def prepare(self) -> dict[str, Any]:
        """Read and load the weights, build the loader; return `info` (weights_path, weights_sha256,
        weights_format, weights_entry, img_size, val_resize, eval_transform). Raises ValueError (SpecError /
        DataError) for anything wrong with the file, its fit to the model, or the data."""
        from vmbench.data import Augment, build_loaders, check_augment, eval_transform_info, resolve_workers
        from vmbench.models import create_model
        from vmbench.weights import load_strict

        spec = self.spec
        weights = read_eval_weights(spec, self.model_name, detector=False)
        meta = weights.meta
        img_size = int(spec.img_size or meta.get("img_size") or self.dataset.img_size)
        val_resize = spec.val_resize if spec.val_resize is not None else meta.get("val_resize")
        aug = Augment(val_resize=val_resize)
        check_augment(self.dataset, aug)
        model = create_model(self.model_name, num_classes=self.dataset.num_classes, scan_backend=self.scan_backend,
                             img_size=img_size)
        try:
            load_strict(model, weights)
        except ValueError as e:
            raise SpecError(str(e)) from None
        weights.state_dict = {}  # loaded: free the file's copy
        self.model = model.to(self.device)
        if spec.channels_last:
            self.model.to(memory_format=torch.channels_last)
        model_cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        workers = resolve_workers(spec.num_workers, self.device.type, self.dataset)
        _, self.loader = build_loaders(self.dataset, spec.batch_size, img_size, num_workers=workers,
                                      model_cfg=model_cfg, aug=aug, skip_bad_images=spec.skip_bad_images,
                                      val_only=True)
        self.img_size = img_size
        self.info = {**weights.describe("weights_"), "img_size": img_size, "val_resize": val_resize,
                     "eval_transform": eval_transform_info(self.dataset, img_size, model_cfg, aug)}
        return self.info

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        """Evaluate; returns {top1, top5 (percent), val_loss, images, eval_time_s, params_m, model, dataset,
        num_classes, img_size, device, scan_backend, amp, channels_last, weights_path, weights_sha256,
        weights_format, weights_entry}."""
        if self.model is None:
            self.prepare()
        t0 = time.perf_counter()
        ev = evaluate(self.model, self.loader, self.device, self.amp, max_batches=self.spec.max_val_batches,
                      progress=progress, task="eval", channels_last=self.spec.channels_last)
        dt = time.perf_counter() - t0
        params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
        skipped = {}
        if self.spec.skip_bad_images:
            from vmbench.data import bad_image_count

            skipped = dict(bad_images=bad_image_count(self.loader))
        return dict(top1=ev["top1"], top5=ev["top5"], val_loss=ev["loss"], images=ev["images"], eval_time_s=dt,
                    params_m=params_m, model=self.model_name, dataset=self.dataset.name,
                    num_classes=self.dataset.num_classes, img_size=self.img_size, device=self.device.type,
                    scan_backend=recorded_scan_backend(self.model_name, self.scan_backend), amp=self.amp,
                    channels_last=bool(self.spec.channels_last),
                    **skipped, **{k: v for k, v in self.info.items() if k.startswith("weights_")})
