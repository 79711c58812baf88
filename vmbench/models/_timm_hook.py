"""Registers vmbench's VMamba variants in timm as soon as timm is imported, without importing torch here.

timm has no plugin mechanism; `vmbench.models` calls `install()`: when timm is already imported, the variants
are registered at once (`timm_vmamba`); otherwise a one-shot import hook runs that registration right after
timm's package has finished importing, whoever imports it. Until then nothing heavy is imported, so the CLI's
cold paths (`vmbench models`, `compare`) stay free of torch.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["install"]


def _register() -> None:
    try:
        importlib.import_module("vmbench.models.timm_vmamba")
    except Exception as e:  # a broken registration must not break `import timm` in the user's program
        warnings.warn(f"vmbench: VMamba models not registered in timm: {type(e).__name__}: {e}", stacklevel=2)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Finds timm's spec with the other finders and wraps its exec_module to register afterwards (one shot)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        _uninstall()  # one shot, and find_spec below must not come back here
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmImportHook)]


def install() -> None:
    """Register in timm now if timm is imported, else when it is (idempotent)."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
