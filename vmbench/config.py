"""Run specifications: plain dataclasses, validated on construction (ValueError names the field).

Nothing here imports torch, so the CLI can build and validate specs cheaply.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
SCAN_BACKENDS = ("auto", "torch", "triton")
DEFAULT_DB = "experiments.db"


def default_db_path() -> str:
    """Database path: $VMBENCH_DB, else ./experiments.db."""
    return os.environ.get("VMBENCH_DB") or DEFAULT_DB


def default_data_root() -> str | None:
    return os.environ.get("VMBENCH_DATA") or None


def _positive(name: str, value, allow_zero: bool = False):
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class RunSpec:
    """One training + evaluation + benchmark run (`vmbench run`)."""

    model: str
    dataset: str
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    img_size: int | None = None  # None: the dataset's native / default size
    device: str = "auto"
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU)
    seed: int = 0
    scan_backend: str = "auto"
    data_root: str | None = None
    num_workers: int = 0
    max_train_batches: int | None = None  # cap per epoch (smoke tests)
    max_val_batches: int | None = None
    bench_batch: int | None = None  # throughput batch after training (default: batch_size)
    weights: str | None = None  # initial state dict to load (strict)
    label_smoothing: float = 0.1  # cross-entropy label smoothing in training (evaluation is unsmoothed)
    drop_path_rate: float | None = None  # stochastic depth; None keeps the model's default
    clip_grad: float | None = None  # max global gradient norm (None: no clipping)
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be given")
        if not self.dataset:
            raise ValueError("dataset must be given")
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        _positive("img_size", self.img_size)
        _positive("num_workers", self.num_workers, allow_zero=True)
        _positive("max_train_batches", self.max_train_batches)
        _positive("max_val_batches", self.max_val_batches)
        _positive("bench_batch", self.bench_batch)
        _positive("clip_grad", self.clip_grad)
        _choice("device", self.device, DEVICES)
        _choice("scan_backend", self.scan_backend, SCAN_BACKENDS)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.drop_path_rate is not None and not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights file not found: {self.weights}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BenchSpec:
    """Inference benchmark of one model (`vmbench bench`)."""

    model: str
    res: int = 224
    batch: int = 128
    precision: str = "fp32"
    device: str = "auto"
    scan_backend: str = "auto"
    warmup: int = 3
    repeats: int = 5
    channels_last: bool = False
    compile: bool = False
    num_classes: int = 1000
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be given")
        _positive("res", self.res)
        _positive("batch", self.batch)
        _positive("warmup", self.warmup, allow_zero=True)
        _positive("repeats", self.repeats)
        _positive("num_classes", self.num_classes)
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _choice("scan_backend", self.scan_backend, SCAN_BACKENDS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_recipe(name: str) -> dict:
    """A built-in recipe (recipes/NAME.toml, installed as vmbench.recipes) as a dict."""
    import tomllib
    from importlib import resources

    res = resources.files("vmbench.recipes").joinpath(f"{name}.toml")
    if not res.is_file():
        raise ValueError(f"unknown recipe {name!r}")
    return tomllib.loads(res.read_text())


def smoke_defaults(dataset: str) -> dict:
    """RunSpec fields of the smoke recipe for `dataset` (per-dataset section over the defaults)."""
    recipe = load_recipe("smoke")
    per_dataset = recipe.pop("datasets", {})
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    merged = {**recipe, **per_dataset.get(dataset, {})}
    unknown = sorted(set(merged) - fields)
    assert not unknown, f"smoke recipe has keys that are not RunSpec fields: {unknown}"
    return merged
