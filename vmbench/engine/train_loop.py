"""The training pass: `train_one_epoch(model, loader, optimizer, device, ...)` runs one epoch (or its rest after a
stop) of forward, loss, backward, optimizer step, schedule and EMA updates, with gradient accumulation, AMP
(bf16, or fp16 with a GradScaler), clipping, DDP no-sync micro-batches and graceful stops. What a batch means is an
Objective's (classification here, detection in vmbench.engine.detection); the loss is checked for NaN / inf
without stalling the GPU (_StepSums, DivergedError).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import math
import time
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["train_one_epoch", "Objective", "ClassificationObjective", "DivergedError", "Progress"]

Progress = Callable[[str, int, int], None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite (the caller records the run as diverged)."""



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

    def inputs(self, batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, targets, labels) on `device`: channels_last when asked, mixed under mixup (targets then
        (B, num_classes) soft labels; otherwise the labels themselves)."""
        images, labels = batch
        images = images.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)  # targets: (B, num_classes) soft labels
        return images, targets, labels

    def loss(self, model, images, targets, labels, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss (fp32 0-d), correct count (0-d)) of `model` on inputs from `inputs()`; no host reads (a CUDA
        graph captures it: vmbench.engine.graphed_step)."""
        with autocast:
            logits = model(images)
        if self.mixup is not None:
            loss = self.soft_ce(logits.float(), targets)
        else:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        hits = (logits.detach().argmax(dim=1) == labels).sum()
        return loss, hits

    def __call__(self, model, batch, device, autocast):
        images, targets, labels = self.inputs(batch, device)
        loss, hits = self.loss(model, images, targets, labels, autocast)
        return loss, labels.shape[0], hits


def train_one_epoch(model, loader, optimizer, device, *, scheduler=None, start_step: int = 0,
                    label_smoothing: float = 0.0, amp: bool = False, max_batches: int | None = None,
                    clip_grad: float | None = None, progress: Progress | None = None, task: str = "train",
                    epoch: int = 1, accum_steps: int = 1, amp_dtype: str = "bf16", scaler=None, mixup=None,
                    ema=None, channels_last: bool = False, should_stop: Callable[[], bool] | None = None,
                    resume: dict | None = None, ddp=None, objective: Objective | None = None,
                    graph=None) -> dict:
    """One pass over `loader` (at most `max_batches` batches). The optimizer steps once every `accum_steps`
    micro-batches (and after the last one); the scheduler, when given, gets `step_update(num_updates)` and the
    EMA `update(model, step=num_updates)` after every optimizer step; `clip_grad` caps the global gradient norm.
    `mixup` (timm Mixup) mixes each batch and switches the loss to soft-target cross-entropy; `scaler`
    (torch.amp.GradScaler) scales the loss for fp16 autocast. Train accuracy is against the unmixed labels.
    `channels_last` puts each input batch in channels_last memory format. `ddp`: the DistributedDataParallel
    module inside `model` (None when not data-parallel); micro-batches before an optimizer step's last run under
    its `no_sync()`, so gradients are all-reduced once per step. `objective` turns a batch into the loss (see
    Objective; default: ClassificationObjective of `label_smoothing`, `mixup`, `channels_last`). `graph`: a
    GraphedStep (vmbench.engine.graphed_step) that runs each batch's whole step, optimizer step included, as a
    replay of one CUDA graph (then accum_steps is 1, and there is no scaler and no DDP); the schedule, EMA, sums
    and stops stay here.

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
    assert graph is None or (accum_steps == 1 and scaler is None and ddp is None), "see graphed_step"
    if graph is None:  # a captured step keeps its gradients in the graph's buffers
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
        if graph is not None:  # forward, backward, clipping and the optimizer step: one graph replay
            loss, n_images, hits = graph(item)
            sums.add(i, loss, hits, n_images)
        else:
            with ddp.no_sync() if ddp is not None and not stepped else contextlib.nullcontext():
                autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=use_amp)
                loss, n_images, hits = objective(model, item, device, autocast)
                sums.add(i, loss, hits, n_images)  # raises DivergedError on a non-finite loss (see _StepSums)
                scaled = loss / accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if stepped and graph is None:
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
        if stepped:
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

