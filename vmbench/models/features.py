"""Multi-scale features of a classification backbone, for dense tasks (detection, segmentation).

    model = create_model("vmamba_t", num_classes=0, **size_free_kwargs("vmamba_t"))   # + weights, as usual
    body = feature_backbone(model)        # nn.Module: (B, 3, H, W) -> [C2, C3, C4, C5], strides 4, 8, 16, 32
    body.out_channels                     # [96, 192, 384, 768] for VMamba-T

VMamba: its own patch embedding and four stages, each stage's output (before the downsampling that opens the
next stage) through a LayerNorm of its own, as the VMamba detection backbone does. timm models: timm's
FeatureListNet (what `features_only=True` builds) over the model itself, so weights loaded into the classifier
(`--init`, `--pretrained`) are the ones the features use. Any H x W: the input is zero-padded on the bottom /
right to a multiple of 32 (Swin's patch embedding needs multiples of 4, its windows are padded inside timm).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["feature_backbone", "size_free_kwargs", "VMambaFeatures", "TimmFeatures", "STRIDES"]

STRIDES = (4, 8, 16, 32)


def size_free_kwargs(model_name: str) -> dict:
    """Extra create_model arguments that let `model_name` take any input size (timm Swin: no fixed img_size)."""
    from .registry import model_entry

    entry = model_entry(model_name)
    if entry.source != "vmbench" and (entry.timm_name or "").startswith("swin"):
        return dict(strict_img_size=False)
    return {}


def _pad32(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) zero-padded at the bottom / right to multiples of 32."""
    h, w = x.shape[-2:]
    ph, pw = -h % 32, -w % 32
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class VMambaFeatures(nn.Module):
    """VMamba's stem and stages as a 4-level feature extractor: (B, 3, H, W) -> list of (B, dims[i], H/s, W/s),
    s = 4, 8, 16, 32 (H, W first padded to multiples of 32). Shares the modules of `vssm` (no copy)."""

    def __init__(self, vssm: nn.Module):
        super().__init__()
        from vmbench.kernels import LayerNorm

        self.patch_embed = vssm.patch_embed
        self.layers = vssm.layers
        backend = vssm.cfg.scan_backend
        self.out_norms = nn.ModuleList(LayerNorm(d, backend=backend) for d in vssm.cfg.dims)
        self.out_channels = list(vssm.cfg.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = _pad32(x).contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)  # (B, H/4, W/4, dims[0])
        outs = []
        for layer, norm in zip(self.layers, self.out_norms):
            y = layer.blocks(x)  # (B, h, w, C)
            outs.append(norm(y).permute(0, 3, 1, 2))  # (B, C, h, w), channels_last memory
            x = layer.downsample(y)
        return outs


class TimmFeatures(nn.Module):
    """A timm model's stride-4, 8, 16 and 32 outputs through timm's FeatureListNet (the module `features_only=True`
    builds), over the given model and its weights: (B, 3, H, W) -> list of (B, C_i, H/s, W/s)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from timm.models import FeatureListNet

        info = getattr(model, "feature_info", None)
        if not info:
            raise ValueError(f"{type(model).__name__} does not describe its feature maps (timm feature_info): it "
                             f"cannot feed a feature pyramid")
        reductions = [int(f["reduction"]) for f in info]
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"{type(model).__name__} has no feature map at stride {missing[0]} (it has "
                             f"{sorted(set(reductions))}): it cannot feed a 4-level feature pyramid")
        idx = tuple(max(i for i, r in enumerate(reductions) if r == s) for s in STRIDES)
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"  # Swin's stages emit (B, H, W, C)
        # Feature points inside a container ("stages.1") need timm's flattened module walk; top-level ones
        # ("layer2") must not have it.
        nested = any("." in str(info[i]["module"]) for i in idx)
        self.body = FeatureListNet(model, out_indices=idx, flatten_sequential=nested)
        self.out_channels = [int(info[i]["num_chs"]) for i in idx]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.body(_pad32(x))
        return [o.permute(0, 3, 1, 2) for o in outs] if self.nhwc else list(outs)


def feature_backbone(model: nn.Module) -> nn.Module:
    """The 4-level feature extractor over a backbone built by vmbench's create_model (VMamba or timm)."""
    from .vmamba import VSSM

    if isinstance(model, VSSM):
        return VMambaFeatures(model)
    return TimmFeatures(model)
