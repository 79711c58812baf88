"""Engine: training, evaluation and benchmarking as functions of a spec.

Nothing here prints or touches the results store: functions return plain dicts (and `Trainer.epochs()`
yields one metrics dict per epoch); the caller records them and owns the progress display, passing a hook
`progress(task: str, completed: int, total: int)`.

    from vmbench.engine import Trainer, evaluate, benchmark, measure_throughput, train_step_throughput

Importing this package is cheap; the submodules (torch, timm) load on first use of a name.
"""
from __future__ import annotations

import importlib

__all__ = [
    "SpecError", "Trainer", "evaluate", "benchmark", "measure_throughput", "train_step_throughput",
    "resolve_device",
]


class SpecError(ValueError):
    """A run/bench spec that cannot run here (device not available, scan backend unusable, …)."""


_LAZY = {
    "Trainer": "train",
    "evaluate": "evaluate",
    "benchmark": "bench",
    "measure_throughput": "bench",
    "train_step_throughput": "bench",
    "resolve_device": "bench",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
