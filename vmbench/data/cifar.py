"""CIFAR-10 / CIFAR-100 in torchvision's python-pickle format (read with download=False).
Entry point: cifar_datasets."""
from __future__ import annotations

from typing import Any, Callable

from ._common import DatasetInfo, _torchvision_pair


def cifar_datasets(info: DatasetInfo, train_tf: Callable | None, val_tf: Callable, layout: str) -> tuple[Any, Any]:
    """(train, test) of info.name ("cifar10" | "cifar100"); train None without train_tf."""
    from torchvision import datasets as tvd

    cls = tvd.CIFAR10 if info.name == "cifar10" else tvd.CIFAR100
    return _torchvision_pair(cls, info, layout, train_tf, val_tf, dict(train=True, download=False),
                             dict(train=False, download=False))
