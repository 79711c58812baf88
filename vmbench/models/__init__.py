"""Backbones: VMamba (our code, `vmamba.py`) and timm peers (`zoo.py`) behind one registry.

Importing this package does not import torch or timm; `create_model` does. It also makes every VMamba
variant a timm model (`timm.create_model("vmamba_t")`, `timm_vmamba.py`), registered when timm is imported.
"""
from .registry import (
    ModelEntry,
    UnknownModelError,
    check_model_name,
    create_model,
    list_models,
    model_entry,
    register_model,
    resolve_model_name,
    uses_scan,
)
from ._timm_hook import install as _install_timm_hook

_install_timm_hook()

__all__ = [
    "ModelEntry", "UnknownModelError", "create_model", "list_models", "model_entry",
    "register_model", "resolve_model_name", "check_model_name", "uses_scan",
]
