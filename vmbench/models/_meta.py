"""Plain metadata types of the model registry (no torch / timm import)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelEntry", "UnknownModelError"]


class UnknownModelError(ValueError):
    """A model name that is neither registered in vmbench nor known to timm."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered backbone (paper numbers at 224², ImageNet-1K, where known)."""

    name: str
    family: str  # "vmamba", "vanilla_vmamba", "swin", "convnext", "res2net", "deit", "regnety", "resnet", "timm"
    source: str  # "vmbench" (our code) or "timm"
    description: str
    timm_name: str | None = None
    aliases: tuple[str, ...] = ()
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    paper_top1: float | None = None
    default_drop_path: float | None = None  # None: the builder's own default

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["aliases"] = list(self.aliases)
        return d
