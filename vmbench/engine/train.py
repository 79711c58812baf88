"""Training run of one RunSpec: train for `epochs`, evaluate after each epoch, then measure speed.

    trainer = Trainer(spec, progress=hook)     # validates the spec; does no work (ValueError subclasses)
    for metrics in trainer.epochs():           # one dict per epoch (see EPOCH_KEYS)
        store.record(metrics)
    result = trainer.finish()                  # final dict (see RESULT_KEYS)

Trainer is this module's __init__ and epoch loop over its parts, one file each: train_setup (model, starting
weights, loaders, optimizer, lr schedule, GradScaler, mixup, EMA), train_loop (one training pass:
train_one_epoch), train_state (checkpoint save / resume), train_result (finish), train_dist (data-parallel
collectives). Their public names are importable from here too. `spec.compile` (torch.compile) and
`spec.channels_last` apply to training, evaluation and the final benchmark (checkpoints and the EMA keep the
uncompiled module's state); `spec.cuda_graph` replays each training step from one captured CUDA graph
(vmbench.engine.graphed_step) and times the final benchmark as graph replays. KeyboardInterrupt is never caught
here.

Graceful stop: `trainer.should_stop`, when set, is polled after every optimizer step (and between epochs, and
before the final benchmark). Once it returns True the trainer saves the state after that step as `last.pt`
(with the epoch's progress, so a resume continues inside the epoch where it stopped) and raises
TrainingStopped, a KeyboardInterrupt. With `spec.deterministic` (and no loader workers) an
interrupted-then-resumed CPU run ends with exactly the metrics of an uninterrupted one.

Data-parallel (`Trainer(spec, dist=Distributed(...))`, one process per rank, torch.distributed initialised by the
caller, `spec.world_size` processes): `spec.batch_size` is per process; the model runs wrapped in
DistributedDataParallel (after channels_last, inside torch.compile), with no gradient all-reduce on the
micro-batches before an accumulation step's last; `Trainer.model` stays the plain module (state dicts, EMA,
checkpoints, final benchmark and FLOPs). Each rank trains on its DistributedSampler share of the epoch and
evaluates every world_size-th validation image; the sums are all-reduced, so every rank yields the same
full-set metrics, with train_img_s over all ranks. `should_stop` must give the same answer on every rank
(vmbench.scheduler.distributed all-reduces it). `finish()` returns the result on rank 0 and {} on the others.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import SpecError
from .bench import PeakMemory, resolve_device, resolve_scan_backend
from .evaluate import evaluate
from .train_dist import Distributed, eval_from_sums, eval_sums
from .train_loop import (ClassificationObjective, DivergedError, Objective, Progress, _loader_metrics,
                         _StepSums, train_one_epoch)  # noqa: F401 (_StepSums: for tests)
from .train_result import EMA_RESULT_KEYS, RESULT_KEYS, TrainerResult
from .train_setup import (LR_MIN_RATIO, WARMUP_LR_RATIO, TrainerSetup, _check_task, param_groups,
                          seed_everything, set_deterministic)
from .train_state import TrainerState, check_resume_state

__all__ = ["Trainer", "Distributed", "DivergedError", "TrainingStopped", "param_groups", "train_one_epoch",
           "seed_everything", "set_deterministic", "check_resume_state", "EPOCH_KEYS", "RESULT_KEYS",
           "Objective", "ClassificationObjective", "eval_sums", "eval_from_sums", "EMA_EPOCH_KEYS", "EMA_RESULT_KEYS",
           "LR_MIN_RATIO", "WARMUP_LR_RATIO"]

EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_top1", "val_top5", "val_loss", "val_images", "lr",
              "epoch_time_s", "train_img_s", "peak_mem_mb", "data_wait_s", "data_wait_frac", "step_img_s")
EMA_EPOCH_KEYS = ("ema_val_top1", "ema_val_top5", "ema_val_loss")  # added when the run keeps an EMA


class TrainingStopped(KeyboardInterrupt):
    """Training stopped at a stop request after a complete optimizer step, its state saved in `checkpoint` (None
    when the run keeps no checkpoints). A KeyboardInterrupt, so that every caller treats it as Ctrl-C."""

    def __init__(self, step: int, where: str, checkpoint: str | None):
        super().__init__(f"stopped after optimizer step {step} ({where})"
                         + ("" if checkpoint else "; no checkpoint kept"))
        self.step = step
        self.checkpoint = checkpoint


class Trainer(TrainerSetup, TrainerState, TrainerResult):
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
        self.cuda_graph = bool(getattr(spec, "cuda_graph", False))  # the training step as a CUDA graph
        if self.cuda_graph and self.device.type != "cuda":
            raise SpecError(f"--cuda-graph needs a CUDA device; this run would train on {self.device.type} "
                            f"(no GPU found)")
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
        self.graphed_step = None  # GraphedStep (vmbench.engine.graphed_step) with spec.cuda_graph, after setup
        self.train_sampler = None  # the DistributedSampler (data-parallel runs): set_epoch before each epoch
        self._partial: dict | None = None  # progress inside the next epoch, from a mid-epoch checkpoint
        self._epoch_loader_state: torch.Tensor | None = None  # shuffle generator at the current epoch's start
        self.history: list[dict] = []
        self.epochs_done = 0
        self.train_time_s = 0.0
        self._peak_mem: tuple[float | None, str | None] = (None, None)
        self._step = 0
        self.best_top1: float | None = None


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
                    objective=self._objective(), graph=self.graphed_step)
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

    def run(self) -> tuple[list[dict], dict]:
        """All epochs then finish(): (per-epoch metrics, result)."""
        history = list(self.epochs())
        return history, self.finish()

