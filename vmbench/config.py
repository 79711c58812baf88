"""Run specifications: plain dataclasses, validated on construction (ValueError names the field).

Nothing here imports torch, so the CLI can build and validate specs cheaply. The recipes that fill a RunSpec's
training settings: vmbench/recipe.py.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
SCAN_BACKENDS = ("auto", "torch", "triton")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "multistep")
AMP_DTYPES = ("bf16", "fp16")
TASKS = ("classification", "detection")
# COCOeval's first six stats, per IoU type: AP at IoU .50:.95, AP50, AP75, AP small / medium / large; a detection
# run reports them in percent as box_ap … mask_apl.
DETECTION_STATS = ("ap", "ap50", "ap75", "aps", "apm", "apl")
DETECTION_METRICS = tuple(f"{t}_{s}" for t in ("box", "mask") for s in DETECTION_STATS)
DET_HEADS = ("standard", "light")  # detector sizes (vmbench.engine.detection.DET_HEADS)
DETECTION_BENCH_CLASSES = 80  # `bench --task detection`: COCO's classes (the heads' size)
DEFAULT_DB = "experiments.db"


def default_db_path() -> str:
    """Database path: $VMBENCH_DB, else ./experiments.db."""
    return os.environ.get("VMBENCH_DB") or DEFAULT_DB


def default_data_root() -> str | None:
    return os.environ.get("VMBENCH_DATA") or None


def _positive(name: str, value, allow_zero: bool = False):
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
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
    num_workers: int | None = None  # DataLoader workers; None: automatic (vmbench.data.resolve_workers)
    max_train_batches: int | None = None  # cap per epoch (smoke tests)
    max_val_batches: int | None = None
    bench_batch: int | None = None  # throughput batch after training (default: batch_size)
    weights: str | None = None  # start from this file, loaded strictly (every key and shape must match)
    init: str | None = None  # fine-tune from this file: head re-created, size-dependent weights adapted
    pretrained: bool = False  # fine-tune from timm's pretrained weights, when already in the local cache
    trust_checkpoint: bool = False  # read weights files with torch.load(weights_only=False)
    label_smoothing: float = 0.1  # cross-entropy label smoothing in training (evaluation is unsmoothed)
    drop_path_rate: float | None = None  # stochastic depth; None keeps the model's default
    clip_grad: float | None = None  # max global gradient norm (None: no clipping)
    tags: list[str] = field(default_factory=list)
    deterministic: bool = False  # seed everything and use deterministic algorithms (bit-exact resume)
    checkpoint_dir: str | None = None  # where the trainer keeps last.pt / best.pt (set by the caller)
    checkpoints: bool = True  # keep last.pt / best.pt each epoch so the run can be resumed
    checkpoint_root: str | None = None  # --checkpoint-dir: where run folders go (default: beside a SQLite file)
    run_uuid: str | None = None  # the recorded run's UUID (set by the scheduler; checkpoints carry it)
    run_folder: str | None = None  # the run's own folder: checkpoints, run.log (set by the scheduler)
    compile: bool = False  # torch.compile the model for training, evaluation and the final benchmark
    channels_last: bool = False  # model and input batches in channels_last memory format
    # The whole training step (forward, loss, backward, clipping, optimizer step) captured once as a CUDA graph and
    # replayed per batch (vmbench.engine.graphed_step); cuda_graph_refusal() says where it cannot apply.
    cuda_graph: bool = False
    tensorboard: str | None = None  # folder for TensorBoard event files (one subfolder per run)
    skip_bad_images: bool = False  # skip (and count) unreadable images instead of stopping the run
    # Data-parallel processes (`--gpus`): one per GPU, or gloo processes on the CPU. batch_size is per process;
    # the total batch (batch_size * accum_steps * world_size) is what lr_base_batch scales by.
    world_size: int = 1
    # -- optimizer / schedule (defaults: the smoke behaviour, AdamW + per-step cosine) --
    optimizer: str = "adamw"  # adamw | sgd (timm create_optimizer_v2)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    lr_base_batch: int | None = None  # linear scaling: lr * batch_size * accum_steps * world_size / lr_base_batch
    scheduler: str = "cosine"  # cosine (per optimizer step) | step | multistep (per epoch)
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of the peak lr
    warmup_lr_ratio: float = 0.001  # warm-up start, as a fraction of the peak lr
    decay_epochs: float = 30.0  # step: decay every this many epochs
    decay_rate: float = 0.1  # step / multistep: multiply the lr by this at each decay
    # multistep: the epochs (counted from 0, i.e. epochs completed) from which the lr is multiplied by decay_rate
    # once more: [8, 11] trains epochs 0-7 at the peak lr, 8-10 at x0.1, 11 on at x0.01 (Mask R-CNN 1x)
    decay_milestones: list[int] | None = None
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    amp_dtype: str = "bf16"  # autocast dtype when `amp` on CUDA; fp16 uses a GradScaler
    # -- EMA of the weights (timm ModelEmaV3), evaluated separately --
    ema: bool = False
    ema_decay: float = 0.9999
    # -- batch mixing (timm Mixup + SoftTargetCrossEntropy); off when both alphas are 0 --
    mixup: float = 0.0  # mixup alpha
    cutmix: float = 0.0  # cutmix alpha
    mixup_prob: float = 1.0  # probability of mixing a batch
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    # -- image transforms (vmbench.data.Augment): image datasets only; shapes/fake refuse non-defaults --
    rand_augment: str | None = None  # timm RandAugment spec, e.g. "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.0  # random-erasing probability
    train_resize: int | None = None  # resize the shorter side to this, then random-crop img_size
    hflip: float = 0.5  # horizontal-flip probability in training
    val_resize: int | None = None  # resize the shorter side to this, then center-crop img_size
    # -- task: classification, or detection (Mask R-CNN over the backbone's feature pyramid, COCO box / mask AP) --
    task: str = "classification"
    max_size: int | None = None  # detection: cap on the longer side (default img_size * 1333 / 800)
    train_sizes: list[int] | None = None  # detection: shorter sides drawn per training image (multi-scale)
    det_head: str = "standard"  # detection: torchvision's Mask R-CNN sizes, or "light" (narrow heads, for CPUs)

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be given")
        if not self.dataset:
            raise ValueError("dataset must be given")
        _choice("task", self.task, TASKS)
        _choice("det_head", self.det_head, DET_HEADS)
        _positive("max_size", self.max_size)
        if self.train_sizes is not None and (not self.train_sizes or any(s <= 0 for s in self.train_sizes)):
            raise ValueError(f"train_sizes must be a non-empty list of sizes > 0, got {self.train_sizes}")
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
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"--gpus (world_size) must be a whole number >= 1, got {self.world_size}")
        _choice("device", self.device, DEVICES)
        _choice("scan_backend", self.scan_backend, SCAN_BACKENDS)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.drop_path_rate is not None and not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        _positive("accum_steps", self.accum_steps)
        _positive("lr_base_batch", self.lr_base_batch)
        _positive("decay_epochs", self.decay_epochs)
        if self.scheduler == "multistep" and not self.decay_milestones:
            raise ValueError("decay_milestones must be given for scheduler 'multistep' (epochs, e.g. [8, 11])")
        if self.decay_milestones is not None and (
                any(m <= 0 for m in self.decay_milestones)
                or any(b <= a for a, b in zip(self.decay_milestones, self.decay_milestones[1:]))):
            raise ValueError(f"decay_milestones must be increasing epochs > 0, got {self.decay_milestones}")
        _positive("train_resize", self.train_resize)
        _positive("val_resize", self.val_resize)
        for name in ("momentum", "min_lr_ratio", "warmup_lr_ratio", "mixup", "cutmix"):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("decay_rate", "ema_decay", "mixup_prob", "mixup_switch_prob", "random_erasing", "hflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to optimizer 'sgd' only")
        if sum((self.weights is not None, self.init is not None, bool(self.pretrained))) > 1:
            raise ValueError("give one of --weights (strict), --init (fine-tune) and --pretrained")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights file not found: {self.weights}")
        if self.init is not None and not Path(self.init).is_file():
            raise ValueError(f"--init file not found: {self.init}")
        refusal = cuda_graph_refusal(self) if self.cuda_graph else None
        if refusal:
            raise ValueError(refusal)

    @property
    def total_batch(self) -> int:
        """Images per optimizer step over all processes."""
        return self.batch_size * self.accum_steps * self.world_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cuda_graph_refusal(spec: RunSpec) -> str | None:
    """Why `spec` cannot train as a captured CUDA graph (`--cuda-graph`), or None. Checked without torch; that a
    device `auto` finds a GPU is checked when the run starts (vmbench.engine.train)."""
    if spec.compile:
        return ("--cuda-graph and --compile do not combine: torch.compile's mode='reduce-overhead' is its own CUDA "
                "graph; use one of them")
    if spec.task != "classification":
        return "--cuda-graph applies to classification only: Mask R-CNN's shapes change from batch to batch"
    if spec.world_size > 1:
        return "--cuda-graph trains in one process; it does not combine with --gpus N (DDP)"
    if spec.accum_steps != 1:
        return (f"--cuda-graph captures one batch's step: it needs accum_steps = 1, got {spec.accum_steps} "
                f"(raise --batch-size instead)")
    if spec.amp and spec.amp_dtype == "fp16":
        return ("--cuda-graph needs bf16 autocast or none: fp16's GradScaler decides on the host whether to step "
                "(use amp_dtype = 'bf16')")
    if spec.optimizer not in ("adamw", "sgd"):
        return f"--cuda-graph supports optimizers adamw and sgd, not {spec.optimizer!r}"
    if spec.device == "cpu":
        return "--cuda-graph needs a CUDA device (--device cuda, or auto on a machine with a GPU)"
    return None


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
    cuda_graph: bool = False  # time replays of the forward captured in a CUDA graph (no eager host overhead)
    num_classes: int = 1000
    tags: list[str] = field(default_factory=list)
    # detection: Mask R-CNN over MODEL's feature pyramid on res x res_w images (H x W; res_w None: square)
    task: str = "classification"
    res_w: int | None = None

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be given")
        _choice("task", self.task, TASKS)
        if self.res_w is not None and self.task != "detection":
            raise ValueError(f"--img-size {self.res}x{self.res_w}: an H x W size applies to --task detection; a "
                             "classification benchmark takes one size N")
        _positive("--img-size", self.res_w)
        if self.cuda_graph and self.compile:
            raise ValueError("--cuda-graph and --compile do not combine: torch.compile's mode='reduce-overhead' "
                             "is its own CUDA graph; use one of them")
        if self.cuda_graph and self.device == "cpu":
            raise ValueError("--cuda-graph needs --device cuda (or auto on a machine with a GPU)")
        # Named as `vmbench bench` spells them: every field here is one of its flags.
        _positive("--img-size", self.res)
        _positive("--batch-size", self.batch)
        _positive("--warmup", self.warmup, allow_zero=True)
        _positive("--repeats", self.repeats)
        _positive("num_classes", self.num_classes)
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _choice("scan_backend", self.scan_backend, SCAN_BACKENDS)

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the benchmark's input."""
        return self.res, self.res_w or self.res

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_img_size(value: str | int | None, flag: str = "--img-size") -> tuple[int, int | None] | None:
    """`N` or `HxW` (also `H×W`, `H,W`) as (N, None) or (H, W); None stays None. ValueError (one line) for
    anything else, or a size that is not a whole number > 0."""
    if value is None:
        return None
    text = str(value).strip().lower().replace("×", "x").replace(",", "x")
    parts = text.split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), (int(parts[1]) if len(parts) == 2 else None)
    raise ValueError(f"{flag} must be N or HxW (whole numbers > 0, e.g. 224 or 800x1333), got {value!r}")


@dataclass
class EvalSpec:
    """Evaluation of one weights file on a dataset's validation split (`vmbench eval`)."""

    model: str
    dataset: str
    weights: str  # vmbench checkpoint, official VMamba release, timm/HF state dict (.pth/.bin/.safetensors)
    ema: bool = False  # evaluate the file's EMA weights instead of the model's
    trust_checkpoint: bool = False  # torch.load(weights_only=False): the file may run pickled code
    img_size: int | None = None  # None: a vmbench checkpoint's own, else the dataset's
    val_resize: int | None = None  # resize the shorter side, then center-crop img_size (image datasets)
    batch_size: int = 64
    device: str = "auto"
    amp: bool = False  # bf16 autocast on CUDA
    scan_backend: str = "auto"
    data_root: str | None = None
    num_workers: int | None = None  # None: automatic (vmbench.data.resolve_workers)
    max_val_batches: int | None = None
    channels_last: bool = False
    skip_bad_images: bool = False  # leave unreadable images out (counted) instead of stopping
    tags: list[str] = field(default_factory=list)
    task: str = "classification"  # detection: a detector checkpoint (`run --task detection`), COCO box / mask AP

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must be given")
        if not self.dataset:
            raise ValueError("dataset must be given")
        _choice("task", self.task, TASKS)
        if not self.weights:
            raise ValueError("--weights must be given")
        if not Path(self.weights).is_file():
            raise ValueError(f"weights file not found: {self.weights}")
        # Named as `vmbench eval` spells them: every field here is one of its flags.
        _positive("--img-size", self.img_size)
        _positive("--val-resize", self.val_resize)
        _positive("--batch-size", self.batch_size)
        _positive("--workers", self.num_workers, allow_zero=True)
        _positive("--max-val-batches", self.max_val_batches)
        _choice("device", self.device, DEVICES)
        _choice("scan_backend", self.scan_backend, SCAN_BACKENDS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
