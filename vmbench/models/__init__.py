"""Backbones: VMamba (our code, `vmamba.py`) and timm peers (`zoo.py`) behind one registry.

Importing this package does not import torch or timm; `create_model` does.
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

__all__ = [
    "ModelEntry", "UnknownModelError", "create_model", "list_models", "model_entry",
    "register_model", "resolve_model_name", "check_model_name", "uses_scan",
]
