"""A training run's final result, `TrainerResult.finish()`: the last evaluation (classification top-1 / top-5,
or detection box / mask AP), params, GFLOPs, inference throughput on the run's device, peak training memory and
what the run was (RESULT_KEYS). Trainer (vmbench.engine.train) inherits it.
"""
from __future__ import annotations

import torch

from .bench import measure_throughput, model_cost, recorded_scan_backend

__all__ = ["TrainerResult", "RESULT_KEYS", "EMA_RESULT_KEYS"]

EMA_RESULT_KEYS = ("ema_top1", "ema_top5")
RESULT_KEYS = ("top1", "top5", "val_loss", "train_loss", "train_time_s", "params_m", "gflops", "flops_uncovered",
               "flops_error", "img_s", "latency_ms", "bench_batch", "peak_mem_mb", "peak_mem_source",
               "scan_backend", "device", "gpu_name", "amp", "img_size", "num_classes", "epochs_done", "model",
               "dataset", "lr_peak", "compile", "channels_last", "world_size", "total_batch", "loader_workers",
               "cuda_graph")

# After-training throughput: fewer calls on the CPU, where one batch can take seconds.
_BENCH_CPU = dict(warmup=1, repeats=3)
_BENCH_CUDA = dict(warmup=3, repeats=5)


class TrainerResult:
    """Trainer's last half: finish() (and its detection twin)."""

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
        if getattr(self, "graphed_step", None) is not None:  # training is over: its graph's memory goes back
            self.graphed_step.release()
        model = self.eval_model
        bench_kw = _BENCH_CUDA if self.device.type == "cuda" else _BENCH_CPU
        speed = measure_throughput(model, self.bench_batch, self.img_size, self.device,
                                   precision="amp_bf16" if self.amp else "fp32", channels_last=self.channels_last,
                                   compiled=self.compile, progress=self.progress, task="bench",
                                   cuda_graph=self.cuda_graph, **bench_kw)
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
            cuda_graph=self.cuda_graph,
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

