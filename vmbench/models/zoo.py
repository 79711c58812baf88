"""timm peers: the backbones the VMamba paper compares against, under short names.

`PEERS` is plain metadata (no torch import); `create_timm_model` builds one with
timm, always with random init (`pretrained=False`: vmbench never downloads).
Paper numbers are each model's own published ImageNet-1K figures at 224².
"""
from __future__ import annotations

from typing import Any

from ._meta import ModelEntry

__all__ = ["PEERS", "create_timm_model"]


def _peer(name, family, timm_name, description, params=None, gflops=None, top1=None, aliases=()):
    return ModelEntry(name, family, "timm", description, timm_name=timm_name, aliases=tuple(aliases),
                      paper_params_m=params, paper_gflops=gflops, paper_top1=top1)


PEERS: tuple[ModelEntry, ...] = (
    _peer("swin_t", "swin", "swin_tiny_patch4_window7_224", "Swin-T (window 7)", 28.3, 4.5, 81.2, ("swin_tiny",)),
    _peer("swin_s", "swin", "swin_small_patch4_window7_224", "Swin-S (window 7)", 49.6, 8.7, 83.2, ("swin_small",)),
    _peer("swin_b", "swin", "swin_base_patch4_window7_224", "Swin-B (window 7)", 87.8, 15.4, 83.5, ("swin_base",)),
    _peer("convnext_t", "convnext", "convnext_tiny", "ConvNeXt-T", 28.6, 4.5, 82.1),
    _peer("convnext_s", "convnext", "convnext_small", "ConvNeXt-S", 50.2, 8.7, 83.1),
    _peer("convnext_b", "convnext", "convnext_base", "ConvNeXt-B", 88.6, 15.4, 83.8),
    _peer("res2net50", "res2net", "res2net50_26w_4s", "Res2Net-50 26w x 4s", 25.7, 4.2, 78.0),
    _peer("res2net50_48w_2s", "res2net", "res2net50_48w_2s", "Res2Net-50 48w x 2s", 25.3, 4.2),
    _peer("res2net50_14w_8s", "res2net", "res2net50_14w_8s", "Res2Net-50 14w x 8s", 25.1, 4.2),
    _peer("res2net50_26w_6s", "res2net", "res2net50_26w_6s", "Res2Net-50 26w x 6s", 37.1, 6.3),
    _peer("res2net50_26w_8s", "res2net", "res2net50_26w_8s", "Res2Net-50 26w x 8s", 48.4, 8.3),
    _peer("res2net101_26w_4s", "res2net", "res2net101_26w_4s", "Res2Net-101 26w x 4s", 45.2, 8.1),
    _peer("deit_s", "deit", "deit_small_patch16_224", "DeiT-S/16", 22.0, 4.6, 79.8, ("deit_small",)),
    _peer("deit_b", "deit", "deit_base_patch16_224", "DeiT-B/16", 86.0, 17.5, 81.8, ("deit_base",)),
    _peer("regnety_4g", "regnety", "regnety_040", "RegNetY-4GF", 21.0, 4.0, 80.0),
    _peer("regnety_8g", "regnety", "regnety_080", "RegNetY-8GF", 39.0, 8.0, 81.7),
    _peer("regnety_16g", "regnety", "regnety_160", "RegNetY-16GF", 84.0, 16.0, 82.9),
    _peer("resnet50", "resnet", "resnet50", "ResNet-50 (timm's resnet50 definition)", 25.6, 4.1),
)

def _takes_img_size(timm_name: str) -> bool:
    return timm_name.startswith(("swin", "deit", "vit", "eva", "beit", "cait", "xcit", "pvt", "twins"))


def create_timm_model(
    timm_name: str,
    num_classes: int = 1000,
    drop_path_rate: float | None = None,
    img_size: int | None = None,
    **kw: Any,
):
    """Build a timm model with random init (never downloads).

    `img_size` is forwarded to transformer-style models that size position
    embeddings / attention windows at build time, so small test inputs work;
    for Swin the window shrinks to fit the final stage when needed.
    """
    import timm

    if kw.pop("pretrained", False):
        raise ValueError("vmbench builds timm models with random init; load weights with --weights instead")
    args: dict[str, Any] = dict(kw)
    if drop_path_rate is not None:
        args["drop_path_rate"] = drop_path_rate
    if img_size is not None and _takes_img_size(timm_name):
        args["img_size"] = img_size
        if timm_name.startswith("swin") and "window_size" not in args:
            # Swin's stage-4 map is img_size/32; its window must not exceed it.
            default_window = 12 if "window12" in timm_name else 7
            args["window_size"] = max(1, min(default_window, img_size // 32))
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **args)
