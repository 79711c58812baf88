"""vmbench's VMamba variants as timm models: `timm.create_model("vmamba_t", ...)` after `import vmbench.models`.

Importing this module registers one timm entry point per VMamba variant of vmbench's registry (same names,
same builders in `vmamba.py`), each with a pretrained_cfg (224², crop 0.875, bicubic, ImageNet mean / std,
`first_conv`, `classifier`) and built through timm's `build_model_with_cfg`, so that timm's options work:

    timm.create_model("vmamba_t", num_classes=10, drop_path_rate=0.1, scan_backend="torch")
    timm.create_model("vmamba_t", features_only=True, out_indices=(1, 2, 3))   # NCHW stage outputs
    timm.create_model("vmamba_t", pretrained=True, pretrained_cfg_overlay=dict(file="vssm_tiny.pth"))

Weights files: the official VMamba release ("model" entry, legacy key names), vmbench checkpoints ("model"),
bare state dicts and safetensors, read by timm and mapped onto the model by `checkpoint_filter_fn`; a head of
another class count is dropped and re-initialised as timm does for its own models. No weights are downloaded:
the configs name no URL, only a local `file` works.

timm (1.0.x) has no plugin / entry-point mechanism, so `vmbench.models` (which must not import torch itself)
imports this module when timm is imported (`_timm_hook`), or at once when timm already is.
"""
from __future__ import annotations

from typing import Any, Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .registry import VMAMBA_ENTRIES

__all__: list[str] = ["checkpoint_filter_fn", "default_cfgs"]  # timm's register_model appends the model names

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bicubic", fixed_input_size=False, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.0", classifier="classifier.head", license="mit", paper_ids="arXiv:2401.10166",
        paper_name="VMamba: Visual State Space Model", origin_url="https://github.com/MzeroMiko/VMamba",
        **kwargs)


default_cfgs = generate_default_cfgs({e.name: _cfg() for e in VMAMBA_ENTRIES})


def checkpoint_filter_fn(state_dict: dict, model) -> dict:
    """A weights file's state dict mapped onto `model`: DataParallel / torch.compile prefixes stripped, the
    official release's legacy names and (out, in, 1, 1) 1x1 weights converted (`convert_official_state_dict`,
    the conversion vmbench.weights applies too)."""
    from .vmamba import VSSM, convert_official_state_dict

    own = model.state_dict().keys()
    sd = dict(state_dict)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in own):
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    return convert_official_state_dict(model, sd) if isinstance(model, VSSM) else sd


def _builder(name: str) -> Callable[..., Any]:
    def build(**kwargs: Any):
        from . import vmamba  # noqa: F401  (registers vmbench's builders)
        from .registry import _BUILDERS

        return _BUILDERS[name](**kwargs)

    return build


def _create(name: str, pretrained: bool = False, **kwargs: Any):
    return build_model_with_cfg(
        _builder(name), name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs)


def _entrypoint(name: str, description: str) -> Callable[..., Any]:
    def entrypoint(pretrained: bool = False, **kwargs: Any):
        return _create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{description} (vmbench; architecture in vmbench.models.vmamba.{name})"
    return entrypoint


# One timm entry point per vmbench variant: the names and the architectures are vmbench's (registry.py metadata,
# vmamba.py builders); these only adapt them to timm's calling convention.
for _e in VMAMBA_ENTRIES:
    globals()[_e.name] = register_model(_entrypoint(_e.name, _e.description))
del _e
