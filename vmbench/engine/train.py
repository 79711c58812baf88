"""Training run of one RunSpec: train for `epochs`, evaluate after each epoch, then measure speed.

    trainer = Trainer(spec, progress=hook)     # validates the spec; does no work (ValueError subclasses)
    for metrics in trainer.epochs():           # one dict per epoch (see EPOCH_KEYS)
        store.record(metrics)
    result = trainer.finish()                  # final dict (see RESULT_KEYS)

Recipe (RunSpec fields): AdamW or SGD (timm's optimizer factory) with no weight decay on 1-d parameters,
biases and parameters flagged `_no_weight_decay` (VMamba's A_logs and Ds) or named by `model.no_weight_decay()`;
peak lr scaled linearly by the total batch (batch_size * accum_steps * world_size) over `lr_base_batch` when
that is set;
cosine learning rate updated every optimizer step (timm CosineLRScheduler) or step decay per epoch (timm
StepLRScheduler), both after an optional linear warm-up; cross-entropy with label smoothing, or soft-target
cross-entropy under mixup/cutmix (timm Mixup); gradient accumulation over `accum_steps` micro-batches;
an EMA of the weights (timm ModelEmaV3) evaluated after every epoch next to the model; bf16 autocast on
CUDA when `spec.amp`, or fp16 with a GradScaler when `amp_dtype` is fp16; `spec.compile` (torch.compile) and
`spec.channels_last` apply to training, evaluation and the final benchmark (checkpoints and the EMA keep the
uncompiled module's state). KeyboardInterrupt is never caught here.

Starting weights: `spec.weights` loads a file strictly, `spec.init` and `spec.pretrained` (timm's weights from
the local cache) load it to fine-tune — the classifier head re-created for the dataset's classes, size-dependent
weights adapted (vmbench.weights); `read_init_weights()` reads the file before anything else happens, and the
keys that did not load are part of the result (init_missing, init_unexpected, init_mismatched, init_resized).

Graceful stop: `trainer.should_stop`, when set, is polled after every optimizer step (and between epochs, and
before the final benchmark). Once it returns True the trainer saves the state after that step as `last.pt`
(with the epoch's progress, so a resume continues inside the epoch where it stopped) and raises
TrainingStopped, a KeyboardInterrupt.

Checkpoints: with `spec.checkpoint_dir` set, every finished epoch (and a graceful stop) is saved as `last.pt`
(the previous one kept as `last.prev.pt`), and as `best.pt` when the validation top-1 improves
(vmbench.checkpoint). `resume_from(path)` restores model, optimizer, schedule, GradScaler, EMA, counters, history
and every RNG state (Python, NumPy, torch CPU/CUDA, the train loader's shuffle generator), so `epochs()` goes on
with the next epoch, or inside the stopped one; with `spec.deterministic` (and no loader workers) an
interrupted-then-resumed CPU run ends with exactly the metrics of an uninterrupted one.

Data-parallel (`Trainer(spec, dist=Distributed(...))`, one process per rank, torch.distributed initialised by the
caller, `spec.world_size` processes): `spec.batch_size` is per process; the model runs wrapped in
DistributedDataParallel (after channels_last, inside torch.compile), with no gradient all-reduce on the
micro-batches before an accumulation step's last; `Trainer.model` stays the plain module (state dicts, EMA,
checkpoints, final benchmark and FLOPs). Each rank trains on its DistributedSampler share of the epoch and
evaluates every world_size-th validation image; the sums (losses, correct counts, images) are all-reduced, so
every rank yields the same full-set metrics, with train_img_s over all ranks. `should_stop` must give the same
answer on every rank (vmbench.scheduler.distributed all-reduces it). Checkpoints hold rank 0's model and every
rank's RNG states and epoch progress, and are written by rank 0 only; `finish()` returns the result on rank 0
and {} on the others, which measure nothing after training.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from . import SpecError
from .bench import (PeakMemory, measure_throughput, model_cost, recorded_scan_backend, resolve_device,
                    resolve_scan_backend)
from .evaluate import evaluate

__all__ = ["Trainer", "Distributed", "DivergedError", "TrainingStopped", "param_groups", "train_one_epoch",
           "seed_everything", "set_deterministic", "check_resume_state", "EPOCH_KEYS", "RESULT_KEYS"]

Progress = Callable[[str, int, int], None]

EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_top1", "val_top5", "val_loss", "val_images", "lr",
              "epoch_time_s", "train_img_s", "peak_mem_mb", "data_wait_s", "data_wait_frac", "step_img_s")
EMA_EPOCH_KEYS = ("ema_val_top1", "ema_val_top5", "ema_val_loss")  # added when the run keeps an EMA
EMA_RESULT_KEYS = ("ema_top1", "ema_top5")
RESULT_KEYS = ("top1", "top5", "val_loss", "train_loss", "train_time_s", "params_m", "gflops", "flops_uncovered",
               "flops_error", "img_s", "latency_ms", "bench_batch", "peak_mem_mb", "peak_mem_source",
               "scan_backend", "device", "gpu_name", "amp", "img_size", "num_classes", "epochs_done", "model",
               "dataset", "lr_peak", "compile", "channels_last", "world_size", "total_batch", "loader_workers")

# What a run records about its starting weights file (the other init_* keys report what loaded of it).
_INIT_INFO_KEYS = ("init_mode", "init_path", "init_sha256", "init_format", "init_entry", "init_tag")
# After-training throughput: fewer calls on the CPU, where one batch can take seconds.
_BENCH_CPU = dict(warmup=1, repeats=3)
_BENCH_CUDA = dict(warmup=3, repeats=5)
LR_MIN_RATIO = 0.01  # cosine floor default, as a fraction of the peak lr (RunSpec.min_lr_ratio)
WARMUP_LR_RATIO = 0.001  # warm-up start default, as a fraction of the peak lr (RunSpec.warmup_lr_ratio)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite (the caller records the run as diverged)."""


class TrainingStopped(KeyboardInterrupt):
    """Training stopped at a stop request after a complete optimizer step, its state saved in `checkpoint` (None
    when the run keeps no checkpoints). A KeyboardInterrupt, so that every caller treats it as Ctrl-C."""

    def __init__(self, step: int, where: str, checkpoint: str | None):
        super().__init__(f"stopped after optimizer step {step} ({where})"
                         + ("" if checkpoint else "; no checkpoint kept"))
        self.step = step
        self.checkpoint = checkpoint


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


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run whose default process group the caller has initialised
    (torch.distributed.init_process_group: gloo on the CPU, nccl with one GPU per rank). `device` is this rank's
    device (cpu, or cuda:LOCAL_RANK). Every method is a collective: all ranks call it, in the same order."""

    rank: int
    world_size: int
    device: torch.device

    def __post_init__(self):
        assert 0 <= self.rank < self.world_size, (self.rank, self.world_size)

    def _reduce(self, values, op) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, values) -> list[float]:
        """Element-wise sum over the ranks (float64: counts up to 2**53 stay exact)."""
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values) -> list[float]:
        """Element-wise maximum over the ranks."""
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        return self.max([1.0 if flag else 0.0])[0] > 0.0

    def broadcast_(self, tensors) -> None:
        """Overwrite each of `tensors` (on this rank's device) with rank 0's, in place."""
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t, src=0)

    def gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def eval_sums(ev: dict) -> list[float]:
    """[top-1 hits, top-5 hits, loss sum, images] behind an `evaluate()` result (the counts are exact: they are
    recovered from percentages of at most a few million images)."""
    n = int(ev["images"])
    if n == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(round(ev["top1"] * n / 100.0)), float(round(ev["top5"] * n / 100.0)), ev["loss"] * n, float(n)]


def eval_from_sums(sums) -> dict:
    """The `evaluate()` result of the summed [top-1 hits, top-5 hits, loss sum, images] of several shards."""
    c1, c5, loss_sum, n = sums
    n = int(round(n))
    if n == 0:
        return dict(top1=float("nan"), top5=float("nan"), loss=float("nan"), images=0)
    return dict(top1=100.0 * c1 / n, top5=100.0 * c5 / n, loss=loss_sum / n, images=n)


def check_resume_state(state: dict, path, model_name: str, epochs: int, world_size: int,
                       run_uuid: str | None = None) -> None:
    """CheckpointError (one line) when a checkpoint written by save_checkpoint cannot continue this run: written
    by another run (its run_uuid differs from `run_uuid`), another model, more epochs done than the run has, or
    another number of data-parallel processes. Checkpoints from before run UUIDs carry none and are not checked."""
    from vmbench.checkpoint import CheckpointError

    written_for = state.get("run_uuid")
    if run_uuid is not None and written_for is not None and written_for != run_uuid:
        raise CheckpointError(f"checkpoint {path} belongs to another run (uuid {written_for}, not {run_uuid})")
    if state.get("model_name") != model_name:
        raise CheckpointError(f"checkpoint {path} is for model {state.get('model_name')!r}, not {model_name!r}")
    if not 0 <= int(state["epochs_done"]) + (state.get("partial_epoch") is not None) <= epochs:
        raise CheckpointError(f"checkpoint {path} has {state['epochs_done']} epochs done; the run has {epochs}")
    written_by = int(state.get("world_size") or 1)
    if written_by != world_size:
        raise CheckpointError(f"checkpoint {path} was written by a run of {written_by} process(es); it continues "
                              f"with the same number (--gpus {written_by}), not {world_size}")


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


class _SkipFirst:
    """A batch sampler: the batches of `inner` after its first `skip`, drawing the same shuffle as `inner`."""

    def __init__(self, inner, skip: int):
        self.inner = inner
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.inner):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def _skip_batches(loader: Iterable, skip: int) -> Iterable:
    """The rest of one epoch of `loader` after its first `skip` batches. For a DataLoader the skipped batches are
    never loaded: a twin loader over the same dataset, shuffle generator and workers draws the same permutation
    and drops the first `skip` index lists. Any other iterable is advanced by loading and dropping."""
    if skip <= 0:
        return loader
    from torch.utils.data import DataLoader

    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        return DataLoader(
            loader.dataset, batch_sampler=_SkipFirst(loader.batch_sampler, skip), num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
            generator=loader.generator, timeout=loader.timeout,
            prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
            multiprocessing_context=loader.multiprocessing_context)
    return itertools.islice(iter(loader), skip, None)


class Objective:
    """What a task does with one training batch: `objective(model, batch, device, autocast)` -> (mean loss (fp32
    scalar tensor), number of images, correct-prediction count (scalar tensor) or None when the task has no
    accuracy). The model's forward runs inside `autocast` (a context manager). Shared by classification and
    detection (vmbench.engine.detection.DetectionObjective); the loop around it (accumulation, AMP scaling,
    clipping, schedule, EMA, DDP, stops, checkpoints) is train_one_epoch's."""

    def __call__(self, model, batch, device, autocast) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        raise NotImplementedError


class ClassificationObjective(Objective):
    """Batches (images (B, 3, H, W), labels (B,)): cross-entropy with label smoothing, or soft-target
    cross-entropy under `mixup` (timm Mixup; accuracy against the unmixed labels)."""

    def __init__(self, label_smoothing: float = 0.0, mixup=None, channels_last: bool = False):
        self.label_smoothing, self.mixup, self.channels_last = label_smoothing, mixup, channels_last
        if mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.soft_ce = SoftTargetCrossEntropy()

    def __call__(self, model, batch, device, autocast):
        images, labels = batch
        images = images.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)  # targets: (B, num_classes) soft labels
        with autocast:
            logits = model(images)
        if self.mixup is not None:
            loss = self.soft_ce(logits.float(), targets)
        else:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        hits = (logits.detach().argmax(dim=1) == labels).sum()
        return loss, labels.shape[0], hits


def train_one_epoch(model, loader, optimizer, device, *, scheduler=None, start_step: int = 0,
                    label_smoothing: float = 0.0, amp: bool = False, max_batches: int | None = None,
                    clip_grad: float | None = None, progress: Progress | None = None, task: str = "train",
                    epoch: int = 1, accum_steps: int = 1, amp_dtype: str = "bf16", scaler=None, mixup=None,
                    ema=None, channels_last: bool = False, should_stop: Callable[[], bool] | None = None,
                    resume: dict | None = None, ddp=None, objective: Objective | None = None) -> dict:
    """One pass over `loader` (at most `max_batches` batches). The optimizer steps once every `accum_steps`
    micro-batches (and after the last one); the scheduler, when given, gets `step_update(num_updates)` and the
    EMA `update(model, step=num_updates)` after every optimizer step; `clip_grad` caps the global gradient norm.
    `mixup` (timm Mixup) mixes each batch and switches the loss to soft-target cross-entropy; `scaler`
    (torch.amp.GradScaler) scales the loss for fp16 autocast. Train accuracy is against the unmixed labels.
    `channels_last` puts each input batch in channels_last memory format. `ddp`: the DistributedDataParallel
    module inside `model` (None when not data-parallel); micro-batches before an optimizer step's last run under
    its `no_sync()`, so gradients are all-reduced once per step. `objective` turns a batch into the loss (see
    Objective; default: ClassificationObjective of `label_smoothing`, `mixup`, `channels_last`).

    `should_stop()` is polled after every optimizer step; once it returns True the pass ends there (`stopped`).
    `resume` (the `partial` of an earlier stopped pass, e.g. from a checkpoint) continues that pass: its first
    `resume["batches"]` batches are skipped without being loaded (the loader's shuffle generator must be back in
    its state at the start of the pass) and its sums carried on.

    Returns {train_loss (mean smoothed loss per image), train_acc (percent), images, steps (this call's optimizer
    steps), lr (last used), train_time_s, data_wait_s (time the loop waited for the loader's next batch: a fed
    run keeps it near 0), stopped, partial}; `partial` = {batches, loss_sum, correct, images, train_time_s, lr,
    data_wait_s} is the pass so far. Raises DivergedError on a non-finite loss.
    """
    device = torch.device(device)
    use_amp = bool(amp) and device.type == "cuda"
    dtype = torch.float16 if amp_dtype == "fp16" else torch.bfloat16
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    model.train()
    done = dict(resume or {})
    batches = int(done.get("batches", 0))
    sums = _StepSums(device, epoch, float(done.get("loss_sum", 0.0)), int(done.get("correct", 0)),
                     int(done.get("images", 0)))
    time_before = float(done.get("train_time_s", 0.0))
    lr = float(done.get("lr", optimizer.param_groups[-1]["lr"]))
    step, stopped = start_step, False
    optimizer.zero_grad(set_to_none=True)
    if objective is None:
        objective = ClassificationObjective(label_smoothing, mixup, channels_last)
    wait = float(done.get("data_wait_s", 0.0))
    t0 = time.perf_counter()
    batch_iter = iter(_skip_batches(loader, batches))
    for i in itertools.count(batches):
        # Fetch first, then test `total`: the loader's iterator (and its shuffle) starts even for an epoch that
        # resumes at its end, so the next epoch draws the same order as an uninterrupted run.
        t_wait = time.perf_counter()
        item = next(batch_iter, None)
        wait += time.perf_counter() - t_wait  # the step had nothing to do: the loader had no batch ready
        if item is None or i >= total:
            break
        lr = optimizer.param_groups[-1]["lr"]
        stepped = (i + 1) % accum_steps == 0 or i + 1 == total
        with ddp.no_sync() if ddp is not None and not stepped else contextlib.nullcontext():
            autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=use_amp)
            loss, n_images, hits = objective(model, item, device, autocast)
            sums.add(i, loss, hits, n_images)  # raises DivergedError on a non-finite loss (see _StepSums)
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if stepped:
            if scaler is not None:
                if clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(model, step=step)
        batches = i + 1
        if progress is not None:
            progress(task, i + 1, total)
        if stepped and should_stop is not None and should_stop():
            stopped = True
            break
    sums.settle()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time_before + time.perf_counter() - t0
    n, loss_sum, correct = sums.images, sums.loss_sum, sums.correct
    partial = dict(batches=batches, loss_sum=loss_sum, correct=correct, images=n, train_time_s=dt, lr=lr,
                   data_wait_s=wait)
    return dict(train_loss=loss_sum / max(n, 1), train_acc=100.0 * correct / max(n, 1), images=n,
                steps=step - start_step, lr=lr, train_time_s=dt, data_wait_s=wait, stopped=stopped, partial=partial)


def _check_task(task: str, dataset, spec) -> None:
    """SpecError (one line) when the dataset or the recipe does not fit the task."""
    from vmbench.data import DETECTION_KINDS

    if task == "detection":
        if dataset.kind not in DETECTION_KINDS:
            raise SpecError(f"dataset {dataset.name} has no boxes: --task detection needs shapes-det, coco or a "
                            f"COCO-format folder (annotations/instances_{{train,val}}2017.json)")
        if getattr(spec, "mixup", 0.0) > 0 or getattr(spec, "cutmix", 0.0) > 0:
            raise SpecError("mixup/cutmix apply to classification only (set mixup=0 and cutmix=0 for --task detection)")
    elif dataset.kind in DETECTION_KINDS:
        raise SpecError(f"dataset {dataset.name} is a detection dataset: run it with --task detection")


def _loader_metrics(tr: dict) -> dict:
    """Whether the loader kept up, from a train_one_epoch result: data_wait_s (time the loop waited for batches),
    data_wait_frac (its share of the training time) and step_img_s (img/s of the steps alone, the speed a loader
    that never made the loop wait would give; train_img_s far below it means a starved run)."""
    t, wait = tr["train_time_s"], tr["data_wait_s"]
    busy = t - wait
    return dict(data_wait_s=wait, data_wait_frac=wait / t if t > 0 else None,
                step_img_s=tr["images"] / busy if busy > 0 else None)


class _StepSums:
    """The training pass's loss / accuracy sums and its non-finite-loss check, without stalling the GPU.

    Reading a step's loss on the host (`loss.item()`) waits for everything queued before it, so a loop that reads
    it every step cannot queue step i + 1 while the GPU still runs step i. Here each step's (loss, correct count)
    is copied to pinned host memory behind a CUDA event and read one step later, by which time that event has
    passed: the check costs no wait. A NaN / inf loss therefore stops the pass one step later on CUDA (after that
    step's update; the run is recorded as diverged and no checkpoint is written from it), at once on the CPU.
    """

    def __init__(self, device: torch.device, epoch: int, loss_sum: float, correct: int, images: int):
        self.cuda = device.type == "cuda"
        self.lag = 1 if self.cuda else 0
        self.epoch, self.loss_sum, self.correct, self.images = epoch, loss_sum, correct, images
        self.last_finite: float | None = None
        self.pending: collections.deque = collections.deque()

    def add(self, i: int, loss: torch.Tensor, hits: torch.Tensor | None, n_images: int) -> None:
        """Record batch i (0-based): its mean loss, correct count (None: not a classifier) and images; checks and
        adds the batches older than the lag."""
        hits = hits if hits is not None else torch.zeros((), device=loss.device)
        stats = torch.stack([loss.detach().float(), hits.detach().float()])  # the count is exact in fp32 (< 2**24)
        event = None
        if self.cuda:
            stats = stats.to("cpu", non_blocking=True)  # pinned destination: an asynchronous copy
            event = torch.cuda.Event()
            event.record()
        self.pending.append((i, n_images, stats, event))
        self.settle(self.lag)

    def settle(self, keep: int = 0) -> None:
        """Check and add the recorded batches, all but the newest `keep`."""
        while len(self.pending) > keep:
            i, b, stats, event = self.pending.popleft()
            if event is not None:
                event.synchronize()
            loss, hits = float(stats[0]), int(stats[1])
            if not math.isfinite(loss):
                self.pending.clear()
                last = "none before it" if self.last_finite is None else f"{self.last_finite:.6g}"
                raise DivergedError(f"non-finite training loss ({loss}) at epoch {self.epoch}, batch {i + 1} "
                                    f"(last finite loss: {last})")
            self.loss_sum += loss * b
            self.correct += hits
            self.images += b
            self.last_finite = loss


class Trainer:
    """Train + evaluate + benchmark one RunSpec. See the module docstring for the protocol.

    `__init__` checks everything a user can get wrong and raises a ValueError subclass
    (UnknownModelError, DataError, SpecError) before any model is built or data is read; `--pretrained` weights
    missing from the local cache are such a mistake too. `should_stop` (a callable, None by default) asks for a
    graceful stop; see the module docstring. `dist`: this process's rank in a data-parallel run of
    `spec.world_size` processes (None: a single process); see the module docstring.
    """

    def __init__(self, spec, progress: Progress | None = None, dist: Distributed | None = None):
        from vmbench.data import Augment, check_augment, get_dataset_info
        from vmbench.models import resolve_model_name

        self.spec = spec
        self.progress = progress
        self.dist = dist
        self.world_size = int(getattr(spec, "world_size", 1))
        assert dist is None or dist.world_size == self.world_size, (dist, self.world_size)
        self.rank = dist.rank if dist is not None else 0
        self.is_main = self.rank == 0  # writes checkpoints; measures after training
        self.model_name = resolve_model_name(spec.model)
        self.dataset = get_dataset_info(spec.dataset, spec.data_root)
        self.device = resolve_device(spec.device)
        if dist is not None:
            assert dist.device.type == self.device.type, (dist.device, self.device)
            self.device = dist.device
        self.scan_backend = resolve_scan_backend(spec.scan_backend, self.device)
        self.img_size = int(spec.img_size or self.dataset.img_size)
        self.amp = bool(spec.amp) and self.device.type == "cuda"
        self.bench_batch = int(spec.bench_batch or spec.batch_size)
        self.label_smoothing = float(getattr(spec, "label_smoothing", 0.1))
        self.drop_path_rate = getattr(spec, "drop_path_rate", None)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise SpecError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        self.task = getattr(spec, "task", "classification")
        self.detection = self.task == "detection"
        _check_task(self.task, self.dataset, spec)
        self.augment = Augment(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(Augment)})
        if not self.detection:
            check_augment(self.dataset, self.augment)
        self.accum_steps = int(getattr(spec, "accum_steps", 1))
        self.amp_dtype = getattr(spec, "amp_dtype", "bf16")
        self.use_mixup = getattr(spec, "mixup", 0.0) > 0 or getattr(spec, "cutmix", 0.0) > 0
        if self.use_mixup and spec.batch_size % 2:
            raise SpecError(f"mixup/cutmix need an even batch_size, got {spec.batch_size}")
        base = getattr(spec, "lr_base_batch", None)
        self.total_batch = spec.batch_size * self.accum_steps * self.world_size  # images per optimizer step
        self.lr = spec.lr * self.total_batch / base if base else spec.lr
        self.compile = bool(getattr(spec, "compile", False))
        self.channels_last = bool(getattr(spec, "channels_last", False))
        self.init_mode: str | None = None  # "strict" (spec.weights) | "finetune" (spec.init / spec.pretrained)
        self.init_path: str | None = None
        self.init_tag: str | None = None  # timm name.tag of --pretrained weights
        if getattr(spec, "weights", None):
            self.init_mode, self.init_path = "strict", spec.weights
        elif getattr(spec, "init", None):
            self.init_mode, self.init_path = "finetune", spec.init
        elif getattr(spec, "pretrained", False):
            from vmbench.weights import cached_pretrained

            self.init_mode = "finetune"
            self.init_path, self.init_tag = cached_pretrained(self.model_name)
        self._init_weights = None  # vmbench.weights.Weights, read by read_init_weights()
        self.init_info: dict[str, Any] | None = None  # init_mode, init_path, init_sha256, … (for the run's params)
        self.init_report: dict[str, Any] | None = None  # init_loaded, init_missing, … (after setup)
        self.should_stop: Callable[[], bool] | None = None
        self.model: torch.nn.Module | None = None  # the module itself (state dicts, EMA, checkpoints)
        self.run_model: torch.nn.Module | None = None  # what trains: the module, or its DDP / torch.compile wrapper
        self.eval_model: torch.nn.Module | None = None  # what evaluates and is benchmarked (never DDP)
        self.ddp: torch.nn.Module | None = None  # the DistributedDataParallel wrapper (data-parallel runs)
        self.train_sampler = None  # the DistributedSampler (data-parallel runs): set_epoch before each epoch
        self._partial: dict | None = None  # progress inside the next epoch, from a mid-epoch checkpoint
        self._epoch_loader_state: torch.Tensor | None = None  # shuffle generator at the current epoch's start
        self.history: list[dict] = []
        self.epochs_done = 0
        self.train_time_s = 0.0
        self._peak_mem: tuple[float | None, str | None] = (None, None)
        self._step = 0
        self.best_top1: float | None = None

    # -- setup -----------------------------------------------------------------------------------------------
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

    # -- training ----------------------------------------------------------------------------------------------
    def epochs(self) -> Iterator[dict]:
        """Train the remaining epochs; yield {epoch, train_loss, train_acc, val_top1, val_top5, val_loss,
        val_images, lr, epoch_time_s, train_img_s, peak_mem_mb} after each one (accuracies in percent; over all
        ranks of a data-parallel run)."""
        self.setup()
        spec = self.spec
        generator = getattr(self.train_loader, "generator", None)
        while self.epochs_done < spec.epochs:
            e = self.epochs_done + 1
            partial, self._partial = self._partial, None
            if partial is None:
                self._check_stop(f"before epoch {e}")  # the previous epoch's checkpoint is the current state
            self._epoch_loader_state = generator.get_state() if generator is not None else None
            if self.train_sampler is not None:
                self.train_sampler.set_epoch(e)  # this epoch's permutation: the same on every rank, and on resume
            t0 = time.perf_counter() - (partial["epoch_time_s"] if partial else 0.0)
            with PeakMemory(self.device) as pm:
                tr = train_one_epoch(
                    self.run_model, self.train_loader, self.optimizer, self.device,
                    scheduler=self.scheduler if self._per_step else None,
                    start_step=self._step, label_smoothing=self.label_smoothing, amp=self.amp,
                    max_batches=spec.max_train_batches, clip_grad=spec.clip_grad, progress=self.progress,
                    task=f"epoch {e}/{spec.epochs} train", epoch=e, accum_steps=self.accum_steps,
                    amp_dtype=self.amp_dtype, scaler=self.scaler, mixup=self.mixup, ema=self.ema,
                    channels_last=self.channels_last, should_stop=self.should_stop, resume=partial, ddp=self.ddp,
                    objective=self._objective())
                self._step += tr["steps"]
                if tr["stopped"]:
                    self._stop_inside_epoch(e, {**tr["partial"], "epoch_time_s": time.perf_counter() - t0})
                if not self._per_step:
                    self.scheduler.step(e)  # lr for the next epoch
                self._sync_buffers()
                ev = self._evaluate(self.eval_model, f"epoch {e}/{spec.epochs} eval")
                ema_ev = None
                if self.ema is not None:
                    ema_ev = self._evaluate(self.ema.module, f"epoch {e}/{spec.epochs} eval EMA")
            dt = time.perf_counter() - t0
            peak_mb = pm.mb
            if self.dist is not None:  # one run's numbers: sums over the ranks, the slowest rank's times
                p = tr["partial"]
                loss_sum, correct, images = self.dist.sum([p["loss_sum"], p["correct"], p["images"]])
                tr = {**tr, "train_loss": loss_sum / max(images, 1), "train_acc": 100.0 * correct / max(images, 1),
                      "images": int(images)}
                tr["train_time_s"], dt, peak, tr["data_wait_s"] = self.dist.max(
                    [tr["train_time_s"], dt, peak_mb if peak_mb is not None else -1.0, tr["data_wait_s"]])
                peak_mb = peak if peak >= 0 else None
            self.epochs_done = e
            self.train_time_s += dt
            if peak_mb is not None and (self._peak_mem[0] is None or peak_mb > self._peak_mem[0]):
                self._peak_mem = (peak_mb, pm.source)
            common = dict(epoch=e, train_loss=tr["train_loss"], val_images=ev["images"], lr=tr["lr"],
                          epoch_time_s=dt,
                          train_img_s=tr["images"] / tr["train_time_s"] if tr["train_time_s"] > 0 else None,
                          peak_mem_mb=peak_mb, **_loader_metrics(tr))
            if self.detection:  # box / mask AP (percent) where classification has top-1 / top-5
                from .detection import DETECTION_METRICS

                metrics = {**common, **{k: ev[k] for k in DETECTION_METRICS if k in ev}}
                if ema_ev is not None:
                    metrics.update({f"ema_{k}": ema_ev[k] for k in DETECTION_METRICS if k in ema_ev})
            else:
                metrics = dict(common, train_acc=tr["train_acc"], val_top1=ev["top1"], val_top5=ev["top5"],
                               val_loss=ev["loss"])
                if ema_ev is not None:
                    metrics.update(ema_val_top1=ema_ev["top1"], ema_val_top5=ema_ev["top5"],
                                   ema_val_loss=ema_ev["loss"])
            self.history.append(metrics)
            score = self._score(ev)
            improved = self.best_top1 is None or score > self.best_top1
            if improved:
                self.best_top1 = score
            if getattr(spec, "checkpoint_dir", None):
                self.save_checkpoint(spec.checkpoint_dir, best=improved)
            yield metrics

    def _objective(self) -> Objective:
        """The task's batch -> loss step for train_one_epoch."""
        if self.detection:
            from .detection import DetectionObjective

            return DetectionObjective()
        return ClassificationObjective(self.label_smoothing, self.mixup, self.channels_last)

    def _score(self, ev: dict) -> float:
        """The number best.pt maximises: validation top-1, or box AP for detection (NaN counts as worst)."""
        v = ev["box_ap"] if self.detection else ev["top1"]
        return v if v == v else float("-inf")

    def _sync_buffers(self) -> None:
        """Data-parallel: rank 0's buffers (BatchNorm statistics) on every rank, the EMA's too. Each rank's last
        forward updated its own; the ranks then evaluate exactly the model rank 0 checkpoints."""
        if self.dist is None:
            return
        self.dist.broadcast_(self.model.buffers())
        if self.ema is not None:
            self.dist.broadcast_(self.ema.module.buffers())

    def _evaluate(self, model: torch.nn.Module, task: str) -> dict:
        """evaluate() of `model` on the validation loader; over all ranks' shards in a data-parallel run.
        Detection: {box_ap, …, mask_apl, images} from COCOeval over every rank's detections."""
        if self.detection:
            from .detection import evaluate_detection

            return evaluate_detection(model, self.val_loader, self.device, self.amp,
                                      max_batches=self.spec.max_val_batches, progress=self.progress, task=task,
                                      gather=self.dist.gather if self.dist is not None else None)
        ev = evaluate(model, self.val_loader, self.device, self.amp, max_batches=self.spec.max_val_batches,
                      progress=self.progress, task=task, channels_last=self.channels_last)
        if self.dist is None:
            return ev
        return eval_from_sums(self.dist.sum(eval_sums(ev)))

    # -- graceful stop ---------------------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def _check_stop(self, where: str) -> None:
        """Raise TrainingStopped when a stop was asked for; the newest checkpoint already holds this state."""
        if not self._stop_requested():
            return
        folder = getattr(self.spec, "checkpoint_dir", None)
        last = None
        if folder and self.is_main:  # the other ranks' message is not shown
            from vmbench.checkpoint import latest_good

            found = latest_good(folder)
            last = str(found) if found is not None else None
        raise TrainingStopped(self._step, where, last)

    def _stop_inside_epoch(self, epoch: int, partial: dict) -> None:
        """Save the state after the optimizer step the epoch stopped at (with its progress) and raise
        TrainingStopped."""
        folder = getattr(self.spec, "checkpoint_dir", None)
        path = None
        if folder:
            self.save_checkpoint(folder, partial=partial)
            from vmbench.checkpoint import LAST

            path = str(Path(folder) / LAST)
        total = len(self.train_loader)
        if self.spec.max_train_batches is not None:
            total = min(total, self.spec.max_train_batches)
        raise TrainingStopped(self._step, f"epoch {epoch}, batch {partial['batches']}/{total}", path)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _rank_state(self, partial: dict | None) -> dict:
        """This rank's own part of a checkpoint: its RNG states and its progress inside a stopped epoch."""
        from vmbench.checkpoint import rng_state

        rng = rng_state(getattr(self.train_loader, "generator", None))
        if partial is not None:
            rng["loader"] = self._epoch_loader_state
        return dict(rng=rng, partial_epoch=dict(partial) if partial is not None else None)

    def checkpoint_state(self, partial: dict | None = None, ranks: list[dict] | None = None) -> dict:
        """Everything resume_from needs, as weights_only-loadable values. `partial`: the progress of an epoch
        stopped inside (train_one_epoch's `partial` plus `epoch_time_s`); the shuffle generator is then saved as
        it was at that epoch's start, so that a resume draws the same order and skips the batches done.
        `ranks`: every rank's _rank_state in a data-parallel run (rank 0's is also the top-level rng and
        partial_epoch)."""
        mine = ranks[self.rank] if ranks is not None else self._rank_state(partial)
        return dict(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            epochs_done=self.epochs_done, step=self._step, history=[dict(m) for m in self.history],
            best_top1=self.best_top1, train_time_s=self.train_time_s, peak_mem=list(self._peak_mem),
            model_name=self.model_name, dataset=self.dataset.name, num_classes=self.dataset.num_classes,
            img_size=self.img_size, val_resize=getattr(self.spec, "val_resize", None),
            partial_epoch=mine["partial_epoch"], rng=mine["rng"], world_size=self.world_size, ranks=ranks,
            run_uuid=getattr(self.spec, "run_uuid", None),
            init={**(self.init_info or {}), **(self.init_report or {})} or None)

    def save_checkpoint(self, folder, best: bool = False, partial: dict | None = None) -> None:
        """`last.pt` in `folder` (previous kept as `last.prev.pt`), and `best.pt` too when `best`. `partial`: see
        checkpoint_state. Data-parallel: called on every rank (it gathers their states); rank 0 writes."""
        from vmbench.checkpoint import BEST, LAST, save_checkpoint

        ranks = self.dist.gather(self._rank_state(partial)) if self.dist is not None else None
        if not self.is_main:
            return
        state = self.checkpoint_state(partial, ranks)
        save_checkpoint(Path(folder) / LAST, state, keep_prev=True)
        if best:
            save_checkpoint(Path(folder) / BEST, state)

    def resume_from(self, path) -> None:
        """Restore a checkpoint written by save_checkpoint; epochs() then continues with the next epoch (each rank
        of a data-parallel run with its own RNG states and progress). Raises CheckpointError (a ValueError) when
        the file does not load or does not fit this run (check_resume_state)."""
        from vmbench.checkpoint import CheckpointError, load_checkpoint, set_rng_state

        self.setup()
        state = load_checkpoint(path)
        check_resume_state(state, path, self.model_name, self.spec.epochs, self.world_size,
                           run_uuid=getattr(self.spec, "run_uuid", None))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, KeyError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {path} does not fit this run: {msg}") from None
        ranks = state.get("ranks")
        mine = ranks[self.rank] if ranks else dict(rng=state["rng"], partial_epoch=state.get("partial_epoch"))
        self.epochs_done = int(state["epochs_done"])
        self._step = int(state["step"])
        self.history = [dict(m) for m in state["history"]]
        self.best_top1 = state.get("best_top1")
        self.train_time_s = float(state.get("train_time_s", 0.0))
        partial = mine["partial_epoch"]
        self._partial = dict(partial) if partial is not None else None
        if state.get("init"):  # the starting weights the run was begun with, and what loaded of them
            init = dict(state["init"])
            self.init_info = {k: v for k, v in init.items() if k in _INIT_INFO_KEYS}
            self.init_report = {k: v for k, v in init.items() if k not in _INIT_INFO_KEYS}
        peak = state.get("peak_mem") or [None, None]
        self._peak_mem = (peak[0], peak[1])
        set_rng_state(mine["rng"], getattr(self.train_loader, "generator", None))

    # -- final result ----------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Final accuracy (last epoch's evaluation; a fresh one when no epoch ran), params, GFLOPs, inference
        throughput at `bench_batch` on the run's device, peak training memory. Keys: RESULT_KEYS.
        Data-parallel: called on every rank; rank 0 alone measures speed and FLOPs and returns the result, the
        others return {}."""
        self.setup()
        self._check_stop("before the final benchmark")
        if self.detection:
            return self._finish_detection()
        if self.history:
            last = self.history[-1]
            top1, top5, val_loss, train_loss = last["val_top1"], last["val_top5"], last["val_loss"], last["train_loss"]
        else:
            self._sync_buffers()
            ev = self._evaluate(self.eval_model, "eval")
            top1, top5, val_loss, train_loss = ev["top1"], ev["top5"], ev["loss"], None
        ema_res = {}
        if self.ema is not None:
            if self.history:
                ema_res = dict(ema_top1=self.history[-1]["ema_val_top1"], ema_top5=self.history[-1]["ema_val_top5"])
            else:
                ev = self._evaluate(self.ema.module, "eval EMA")
                ema_res = dict(ema_top1=ev["top1"], ema_top5=ev["top5"])
        skipped = {}
        if self.spec.skip_bad_images:
            from vmbench.data import bad_image_count, bad_image_paths

            if self.dist is None:
                skipped = dict(bad_images=bad_image_count(self.train_loader, self.val_loader))
            else:  # ranks may have met the same training image: count distinct paths
                seen = self.dist.gather(bad_image_paths(self.train_loader, self.val_loader))
                skipped = dict(bad_images=len(set().union(*seen)))
        if not self.is_main:
            return {}
        model = self.eval_model
        bench_kw = _BENCH_CUDA if self.device.type == "cuda" else _BENCH_CPU
        speed = measure_throughput(model, self.bench_batch, self.img_size, self.device,
                                   precision="amp_bf16" if self.amp else "fp32", channels_last=self.channels_last,
                                   compiled=self.compile, progress=self.progress, task="bench", **bench_kw)
        reuse = self.device.type == "cpu" and self.scan_backend == "torch"
        cost = model_cost(self.model_name, self.dataset.num_classes, self.img_size,
                          model=self.model if reuse else None)
        peak_mb, peak_src = self._peak_mem
        return dict(
            top1=top1, top5=top5, val_loss=val_loss, train_loss=train_loss, train_time_s=self.train_time_s,
            params_m=cost["params_m"], gflops=cost["gflops"], flops_uncovered=cost["flops_uncovered"],
            flops_error=cost["flops_error"], img_s=speed["img_s"], latency_ms=speed["latency_ms"],
            bench_batch=self.bench_batch, peak_mem_mb=peak_mb, peak_mem_source=peak_src,
            scan_backend=recorded_scan_backend(self.model_name, self.scan_backend), device=self.device.type,
            gpu_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            amp=self.amp, img_size=self.img_size, num_classes=self.dataset.num_classes,
            epochs_done=self.epochs_done, model=self.model_name, dataset=self.dataset.name, lr_peak=self.lr,
            compile=self.compile, channels_last=self.channels_last, world_size=self.world_size,
            total_batch=self.total_batch, eval_transform=self.eval_transform, loader_workers=self.loader_workers,
            **ema_res, **skipped, **(self.init_info or {}),
            **(self.init_report or {}),
        )

    def _finish_detection(self) -> dict:
        """finish() of a detection run: the last epoch's (or a fresh) box / mask AP, detector params, backbone + FPN
        GFLOPs and inference img/s at the evaluation size (a square of the shorter side for shapes-det; for COCO
        the 1x test size max_size x min_size), peak training memory."""
        from .detection import DETECTION_METRICS, detector_cost, detector_throughput

        if self.history:
            ap = {k: self.history[-1].get(k) for k in DETECTION_METRICS}
            train_loss = self.history[-1]["train_loss"]
            ema_ap = {k: self.history[-1][f"ema_{k}"] for k in DETECTION_METRICS if f"ema_{k}" in self.history[-1]}
        else:
            self._sync_buffers()
            ev = self._evaluate(self.eval_model, "eval")
            ap, train_loss = {k: ev.get(k) for k in DETECTION_METRICS}, None
            ema_ap = {}
            if self.ema is not None:
                ev = self._evaluate(self.ema.module, "eval EMA")
                ema_ap = {k: ev[k] for k in DETECTION_METRICS if k in ev}
        if not self.is_main:
            return {}
        min_size, max_size = self.det_sizes[2], self.det_sizes[1]
        hw = (min_size, min_size) if self.dataset.kind == "builtin-det" else (min_size, max_size)
        bench_kw = _BENCH_CUDA if self.device.type == "cuda" else _BENCH_CPU
        speed = detector_throughput(self.eval_model, self.bench_batch, hw, self.device, self.amp, **bench_kw)
        cost = detector_cost(self.model_name, self.dataset.num_classes, hw,
                             head=getattr(self.spec, "det_head", "standard"))
        peak_mb, peak_src = self._peak_mem
        return dict(
            **ap, **{f"ema_{k}": v for k, v in ema_ap.items()}, task="detection", train_loss=train_loss,
            train_time_s=self.train_time_s, **cost, img_s=speed["img_s"], latency_ms=speed["latency_ms"],
            bench_batch=self.bench_batch, peak_mem_mb=peak_mb, peak_mem_source=peak_src,
            scan_backend=self.scan_backend, device=self.device.type,
            gpu_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            amp=self.amp, img_size=min_size, num_classes=self.dataset.num_classes, epochs_done=self.epochs_done,
            model=self.model_name, dataset=self.dataset.name, lr_peak=self.lr, compile=self.compile,
            world_size=self.world_size, total_batch=self.total_batch, eval_transform=self.eval_transform,
            loader_workers=self.loader_workers, **(self.init_info or {}), **(self.init_report or {}))

    def run(self) -> tuple[list[dict], dict]:
        """All epochs then finish(): (per-epoch metrics, result)."""
        history = list(self.epochs())
        return history, self.finish()

