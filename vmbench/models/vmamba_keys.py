"""Official VMamba checkpoints' key names and 1x1 weight shapes mapped onto vmbench's VSSM.

`convert_in_place(model, sd, prefix)` renames the legacy keys of early official releases and reshapes 1x1
projections stored as conv weights (out, in, 1, 1) to nn.Linear's (out, in); `official_compat_hook` runs it as
VSSM's load_state_dict pre-hook. The public entry points (convert_official_state_dict, load_weights) are in
vmbench.models.vmamba.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

__all__ = ["convert_in_place", "official_compat_hook"]

# Legacy names (early official releases) -> current names; applied to keys under the model's prefix.
_LEGACY_RENAMES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)ln_1\."), r"\1norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)self_attention\."), r"\1op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)


def convert_in_place(model: nn.Module, sd: dict, prefix: str = "") -> None:
    for key in [k for k in sd if k.startswith(prefix)]:
        rest = key[len(prefix):]
        new = rest
        for pat, repl in _LEGACY_RENAMES:
            new = pat.sub(repl, new)
        if new != rest:
            sd[prefix + new] = sd.pop(key)
    # 1x1 projections saved as conv weights (out, in, 1, 1) -> nn.Linear's (out, in).
    for name, p in model.named_parameters():
        t = sd.get(prefix + name)
        if isinstance(t, torch.Tensor) and p.dim() == 2 and t.dim() == 4 and t.shape[2:] == (1, 1):
            sd[prefix + name] = t[:, :, 0, 0]


def official_compat_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    convert_in_place(module, state_dict, prefix)

