"""What a Trainer is made of, built once by `TrainerSetup.setup()`: the model (with its starting weights), the
loaders, the optimizer, the lr schedule, the GradScaler, mixup and the EMA. Trainer (vmbench.engine.train) inherits
it.

Recipe (RunSpec fields): AdamW or SGD (timm's optimizer factory) with no weight decay on 1-d parameters,
biases and parameters flagged `_no_weight_decay` (VMamba's A_logs and Ds) or named by `model.no_weight_decay()`;
peak lr scaled linearly by the total batch (batch_size * accum_steps * world_size) over `lr_base_batch` when
that is set; cosine learning rate updated every optimizer step (timm CosineLRScheduler) or step decay per epoch
(timm StepLRScheduler), both after an optional linear warm-up; timm Mixup; an EMA of the weights (timm
ModelEmaV3); a GradScaler for fp16 autocast.

Starting weights: `spec.weights` loads a file strictly, `spec.init` and `spec.pretrained` (timm's weights from
the local cache) load it to fine-tune — the classifier head re-created for the dataset's classes, size-dependent
weights adapted (vmbench.weights); `read_init_weights()` reads the file before anything else happens.
"""
from __future__ import annotations

import os
import random
from typing import Any

import torch

from . import SpecError

__all__ = ["TrainerSetup", "param_groups", "seed_everything", "set_deterministic", "LR_MIN_RATIO",
           "WARMUP_LR_RATIO"]

LR_MIN_RATIO = 0.01  # cosine floor default, as a fraction of the peak lr (RunSpec.min_lr_ratio)
WARMUP_LR_RATIO = 0.001  # warm-up start default, as a fraction of the peak lr (RunSpec.warmup_lr_ratio)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic() -> None:
    """Deterministic kernels only (an op without one raises), cuDNN deterministic and not autotuned."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False



def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and no-decay parameters (ndim <= 1, biases, `_no_weight_decay`
    flags, names returned by `model.no_weight_decay()`)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (p.ndim <= 1 or name.endswith(".bias") or getattr(p, "_no_weight_decay", False)
                or name in skip or name.rsplit(".", 1)[-1] in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=no_decay, weight_decay=0.0), dict(params=decay, weight_decay=weight_decay)]


def _check_task(task: str, dataset, spec) -> None:
    """SpecError (one line) when the dataset or the recipe does not fit the task."""
    from vmbench.data import task_mismatch

    why = task_mismatch(dataset, task, "run")
    if why:
        raise SpecError(why)
    if task == "detection" and (getattr(spec, "mixup", 0.0) > 0 or getattr(spec, "cutmix", 0.0) > 0):
        raise SpecError("mixup/cutmix apply to classification only (set mixup=0 and cutmix=0 for --task detection)")


class TrainerSetup:
    """Trainer's construction half: reading and loading the starting weights, and setup(). Uses the attributes
    Trainer.__init__ sets (spec, model_name, dataset, device, scan_backend, img_size, amp, lr, …)."""

    def read_init_weights(self) -> dict[str, Any] | None:
        """Read the starting weights file (spec.weights / spec.init / --pretrained), once; return what to record
        about it ({init_mode, init_path, init_sha256, init_format, init_entry[, init_tag]}), or None without one.
        Raises ValueError (unreadable file, weights_only refusal, no state dict) before any model is built."""
        if self.init_mode is None or self.init_info is not None:
            return self.init_info
        from vmbench.weights import read_weights

        try:
            self._init_weights = read_weights(self.init_path, trust=bool(getattr(self.spec, "trust_checkpoint", False)))
        except ValueError as e:
            raise SpecError(str(e)) from None
        info = {"init_mode": self.init_mode, **self._init_weights.describe("init_")}
        if self.init_tag:
            info["init_tag"] = self.init_tag
        self.init_info = info
        return info

    def _load_init_weights(self, model: torch.nn.Module) -> None:
        from vmbench.weights import load_finetune, load_strict

        self.read_init_weights()
        weights, self._init_weights = self._init_weights, None  # the state dict is not kept after loading
        try:
            if self.init_mode == "strict":
                load_strict(model, weights)
                self.init_report = {"init_loaded": len(model.state_dict())}
            else:
                self.init_report = load_finetune(model, weights).results("init_")
        except ValueError as e:
            raise SpecError(str(e)) from None

    def _build_detector(self, create_model) -> torch.nn.Module:
        """Mask R-CNN over this run's backbone (vmbench.engine.detection): --init / --pretrained weights load into
        the classification backbone first (its head re-created, as in classification fine-tuning), --weights
        strictly into the whole detector."""
        from vmbench.models.features import size_free_kwargs

        from .detection import build_detector, detection_sizes

        self.det_sizes = detection_sizes(self.spec, self.dataset)
        backbone = create_model(self.model_name, num_classes=self.dataset.num_classes, scan_backend=self.scan_backend,
                                drop_path_rate=self.drop_path_rate, **size_free_kwargs(self.model_name))
        if self.init_mode == "finetune":
            self._load_init_weights(backbone)
        model = build_detector(backbone, self.dataset.num_classes, self.det_sizes[0], self.det_sizes[1],
                               head=getattr(self.spec, "det_head", "standard"))
        if self.init_mode == "strict":
            self._load_init_weights(model)
        return model

    def setup(self) -> None:
        """Build model, loaders, optimizer and schedule (called by epochs()/finish() when needed)."""
        if self.model is not None:
            return
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler, StepLRScheduler

        from vmbench.data import build_loaders, eval_transform_info, resolve_workers
        from vmbench.models import create_model

        spec = self.spec
        assert self.dist is not None or self.world_size == 1, "a data-parallel spec trains only as one of its ranks"
        if getattr(spec, "deterministic", False):
            set_deterministic()
        seed_everything(spec.seed)
        if self.detection:
            model = self._build_detector(create_model)
        else:
            model = create_model(self.model_name, num_classes=self.dataset.num_classes,
                                 scan_backend=self.scan_backend, drop_path_rate=self.drop_path_rate,
                                 img_size=self.img_size)
            if self.init_mode is not None:
                self._load_init_weights(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.dist is None:
            self.run_model = torch.compile(self.model) if self.compile else self.model
            self.eval_model = self.run_model
        else:
            from torch.nn.parallel import DistributedDataParallel

            # DDP broadcasts rank 0's parameters and buffers: every rank starts from the same weights.
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.run_model = torch.compile(self.ddp) if self.compile else self.ddp
            # Evaluation runs each rank's shard through the plain module: no DDP collectives, whose count would
            # have to match across ranks with unequal shards.
            self.eval_model = torch.compile(self.model) if self.compile else self.model
            if self.rank:  # dropout, drop-path, mixup and augmentation draws differ between ranks
                seed_everything(spec.seed + self.rank)
        model_cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        # The validation cap is a prefix of the val split, so that any number of ranks evaluates the same images.
        val_size = spec.max_val_batches * spec.batch_size if spec.max_val_batches is not None else None
        self.loader_workers = resolve_workers(spec.num_workers, self.device.type, self.dataset, self.world_size)
        if self.detection:
            from vmbench.data import build_detection_loaders

            self.train_loader, self.val_loader = build_detection_loaders(
                self.dataset, spec.batch_size, self.img_size, seed=spec.seed, num_workers=self.loader_workers,
                rank=self.rank, world_size=self.world_size, val_size=val_size, hflip=spec.hflip)
        else:
            self.train_loader, self.val_loader = build_loaders(
                self.dataset, spec.batch_size, self.img_size, seed=spec.seed, num_workers=self.loader_workers,
                model_cfg=model_cfg, aug=self.augment, skip_bad_images=spec.skip_bad_images, rank=self.rank,
                world_size=self.world_size, val_size=val_size)
        from torch.utils.data.distributed import DistributedSampler

        sampler = getattr(self.train_loader, "sampler", None)
        self.train_sampler = sampler if isinstance(sampler, DistributedSampler) else None
        if self.detection:
            self.eval_transform = dict(min_size=self.det_sizes[2], max_size=self.det_sizes[1],
                                       train_min_size=self.det_sizes[0], hflip=spec.hflip)
        else:
            self.eval_transform = eval_transform_info(self.dataset, self.img_size, model_cfg, self.augment)
        batches = len(self.train_loader)
        if spec.max_train_batches is not None:
            batches = min(batches, spec.max_train_batches)
        self.steps_per_epoch = max(1, -(-batches // self.accum_steps))  # optimizer steps per epoch
        opt = getattr(spec, "optimizer", "adamw")
        opt_kw = (dict(momentum=spec.momentum, nesterov=spec.nesterov) if opt == "sgd"
                  else dict(betas=tuple(getattr(spec, "betas", (0.9, 0.999)))))
        if self.cuda_graph:  # a step a CUDA graph can capture, its lr read from a GPU tensor
            from .graphed_step import capturable_optimizer_kwargs

            opt_kw.update(capturable_optimizer_kwargs(opt))
        self.optimizer = create_optimizer_v2(param_groups(model, spec.weight_decay), opt=opt, lr=self.lr,
                                             weight_decay=spec.weight_decay, **opt_kw)
        min_ratio = getattr(spec, "min_lr_ratio", LR_MIN_RATIO)
        warm_ratio = getattr(spec, "warmup_lr_ratio", WARMUP_LR_RATIO)
        if getattr(spec, "scheduler", "cosine") == "step":
            # Stepped per epoch (t in epochs); warm-up in whole epochs.
            self.scheduler = StepLRScheduler(
                self.optimizer, decay_t=spec.decay_epochs, decay_rate=spec.decay_rate,
                warmup_t=int(round(spec.warmup_epochs)), warmup_lr_init=self.lr * warm_ratio, t_in_epochs=True)
            self._per_step = False
        elif spec.scheduler == "multistep":
            # Per epoch, × decay_rate from each of decay_milestones on. timm's MultiStepLRScheduler applies a
            # milestone m from t = m - 1, so each is passed as m + 1; warm-up epochs do not shift them.
            from timm.scheduler import MultiStepLRScheduler

            self.scheduler = MultiStepLRScheduler(
                self.optimizer, decay_t=[m + 1 for m in spec.decay_milestones], decay_rate=spec.decay_rate,
                warmup_t=int(round(spec.warmup_epochs)), warmup_lr_init=self.lr * warm_ratio, warmup_prefix=False,
                t_in_epochs=True)
            self._per_step = False
        else:
            total = max(1, self.steps_per_epoch * spec.epochs)
            warmup = int(round(spec.warmup_epochs * self.steps_per_epoch))
            self.scheduler = CosineLRScheduler(
                self.optimizer, t_initial=max(1, total - warmup), lr_min=self.lr * min_ratio, warmup_t=warmup,
                warmup_lr_init=self.lr * warm_ratio, warmup_prefix=True, t_in_epochs=False)
            self._per_step = True
        self.scaler = (torch.amp.GradScaler("cuda") if self.amp and self.amp_dtype == "fp16" else None)
        self.mixup = None
        if self.use_mixup:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix, prob=spec.mixup_prob,
                               switch_prob=spec.mixup_switch_prob, label_smoothing=self.label_smoothing,
                               num_classes=self.dataset.num_classes)
        self.ema = None
        if getattr(spec, "ema", False):
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=spec.ema_decay)
        if self.cuda_graph:
            from .graphed_step import GraphedStep

            self.graphed_step = GraphedStep(self.run_model, self.optimizer, self._objective(), self.device,
                                            amp=self.amp, clip_grad=spec.clip_grad)

