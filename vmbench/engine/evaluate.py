"""Top-1 / top-5 accuracy and cross-entropy of a classifier over a loader."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

__all__ = ["evaluate"]


def evaluate(model: torch.nn.Module, loader: Iterable, device: torch.device | str, amp: bool = False,
             max_batches: int | None = None, progress: Callable[[str, int, int], None] | None = None,
             task: str = "eval") -> dict:
    """Evaluate `model` on (images, labels) batches from `loader`.

    Eval mode and inference_mode; bf16 autocast when `amp` and `device` is CUDA. At most `max_batches`
    batches. Top-k is over min(k, num_classes) classes, so top-5 is 100 % with fewer than 6 classes.
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
    try:
        with torch.inference_mode():
            for i, (images, labels) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                images = images.to(device, non_blocking=True)
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
