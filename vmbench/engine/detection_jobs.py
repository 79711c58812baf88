"""`vmbench eval --task detection` and `vmbench bench --task detection`: a detector checkpoint's COCO box / mask AP
on a detection dataset, and a detector's inference speed and peak memory at one H × W.

    job = DetectionWeightsEval(spec)    # an EvalSpec with task="detection": validates, does no work
    job.prepare()                       # reads the file (a detector's, written by `run --task detection`), loader
    result = job.run(progress)          # {box_ap, …, mask_apl, images, …}
    result = detection_benchmark(spec)  # a BenchSpec with task="detection": params, GFLOPs, img/s, peak memory
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from . import SpecError
from .bench import PeakMemory, recorded_scan_backend, resolve_device, resolve_scan_backend
from .detection import (DETECTION_METRICS, build_detector, default_max_size, det_head_of, detector_cost,
                        detector_throughput, evaluate_detection)

__all__ = ["DetectionWeightsEval", "detection_benchmark"]

Progress = Callable[[str, int, int], None]


class DetectionWeightsEval:
    """A detector checkpoint (`run --task detection`'s best.pt / last.pt, or a bare detector state dict) on a
    detection dataset's validation split; the interface of evaluate.WeightsEval.

    `__init__` checks the model, the dataset (it must have boxes), device and scan backend; `prepare()` reads the
    file and refuses one that is not a detector's (a classification checkpoint: SpecError, one line), builds
    the Mask R-CNN of the file's head size (DET_HEADS, read from its shapes) over MODEL, loads it strictly and
    builds the loader. The evaluation's shorter side is --img-size, else the checkpoint's, else the dataset's;
    the longer side is capped at 1333/800 of it.
    """

    def __init__(self, spec):
        from vmbench.data import get_dataset_info, task_mismatch
        from vmbench.models import resolve_model_name

        self.spec = spec
        self.model_name = resolve_model_name(spec.model)
        self.dataset = get_dataset_info(spec.dataset, spec.data_root)
        why = task_mismatch(self.dataset, "detection", "evaluate")
        if why:
            raise SpecError(why)
        given = [flag for flag, on in (("--val-resize", spec.val_resize is not None),
                                        ("--channels-last", spec.channels_last),
                                        ("--skip-bad-images", spec.skip_bad_images)) if on]
        if given:
            raise SpecError(f"{', '.join(given)}: classification evaluation only (the detector resizes its inputs)")
        self.device = resolve_device(spec.device)
        self.scan_backend = resolve_scan_backend(spec.scan_backend, self.device)
        self.amp = bool(spec.amp) and self.device.type == "cuda"
        self.model: torch.nn.Module | None = None
        self.info: dict[str, Any] = {}

    def prepare(self) -> dict[str, Any]:
        """Read and load the weights, build the loader; return `info` (weights_*, img_size, max_size, det_head,
        eval_transform). Raises ValueError (SpecError / DataError) for a wrong file, model or dataset."""
        from vmbench.data import build_detection_loaders, resolve_workers
        from vmbench.models import create_model
        from vmbench.models.features import size_free_kwargs
        from vmbench.weights import load_strict

        from .evaluate import read_eval_weights

        spec = self.spec
        weights = read_eval_weights(spec, self.model_name, detector=True)
        meta = weights.meta
        head = det_head_of(weights.state_dict)
        if head is None:
            raise SpecError(f"{weights.path}: a detector of a size vmbench does not build (its FPN / box head)")
        min_size = int(spec.img_size or meta.get("img_size") or self.dataset.img_size)
        max_size = default_max_size(min_size)
        backbone = create_model(self.model_name, num_classes=self.dataset.num_classes,
                                scan_backend=self.scan_backend, **size_free_kwargs(self.model_name))
        model = build_detector(backbone, self.dataset.num_classes, min_size, max_size, head=head)
        try:
            load_strict(model, weights)
        except ValueError as e:
            raise SpecError(str(e)) from None
        weights.state_dict = {}
        self.model = model.to(self.device)
        workers = resolve_workers(spec.num_workers, self.device.type, self.dataset)
        val_size = spec.max_val_batches * spec.batch_size if spec.max_val_batches is not None else None
        _, self.loader = build_detection_loaders(self.dataset, spec.batch_size, min_size, num_workers=workers,
                                                 val_size=val_size, val_only=True)
        self.img_size, self.det_head = min_size, head
        self.info = {**weights.describe("weights_"), "img_size": min_size, "max_size": max_size, "det_head": head,
                     "eval_transform": dict(min_size=min_size, max_size=max_size)}
        return self.info

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        """Evaluate; returns {box_ap, box_ap50, …, mask_apl (percent), images, eval_time_s, params_m, task, model,
        dataset, num_classes, img_size, det_head, device, scan_backend, amp, weights_*}."""
        if self.model is None:
            self.prepare()
        t0 = time.perf_counter()
        ev = evaluate_detection(self.model, self.loader, self.device, self.amp, progress=progress, task="eval")
        dt = time.perf_counter() - t0
        return dict(**{k: ev.get(k) for k in DETECTION_METRICS}, images=ev["images"], eval_time_s=dt,
                    params_m=sum(p.numel() for p in self.model.parameters()) / 1e6, task="detection",
                    model=self.model_name, dataset=self.dataset.name, num_classes=self.dataset.num_classes,
                    img_size=self.img_size, det_head=self.det_head, device=self.device.type,
                    scan_backend=recorded_scan_backend(self.model_name, self.scan_backend), amp=self.amp,
                    **{k: v for k, v in self.info.items() if k.startswith("weights_")})


def detection_benchmark(spec, progress: Progress | None = None) -> dict:
    """Inference speed of MODEL's Mask R-CNN (random weights, spec.num_classes classes: the CLI gives COCO's 80) on
    `spec.batch` random images of H × W = spec.hw (a BenchSpec with task="detection"; the detector's resize keeps
    that size): img/s and latency (median of spec.repeats calls after spec.warmup), peak memory over the timed calls
    (CUDA: allocated; CPU: RSS growth), params of the whole detector and GFLOPs of backbone + FPN at that size."""
    from vmbench.models import create_model, resolve_model_name
    from vmbench.models.features import size_free_kwargs

    from .bench import _load_fields, autocast_ctx, load_average

    name = resolve_model_name(spec.model)
    device = resolve_device(spec.device)
    backend = resolve_scan_backend(spec.scan_backend, device)
    autocast_ctx(device, spec.precision)  # validates the precision name
    if spec.precision == "amp_fp16" or spec.channels_last or spec.compile or spec.cuda_graph:
        raise SpecError("bench --task detection measures fp32 or amp_bf16 eager inference: --precision amp_fp16, "
                        "--channels-last, --compile and --cuda-graph do not apply")
    hw = spec.hw
    classes = spec.num_classes
    cost = detector_cost(name, classes, hw)
    backbone = create_model(name, num_classes=classes, scan_backend=backend, **size_free_kwargs(name))
    det = build_detector(backbone, classes, min_size=min(hw), max_size=max(hw))
    det.to(device)
    load_before = load_average()
    with PeakMemory(device, delta=device.type != "cuda") as pm:
        speed = detector_throughput(det, spec.batch, hw, device, amp=spec.precision == "amp_bf16",
                                    warmup=spec.warmup, repeats=spec.repeats)
    if progress is not None:
        progress("bench", 1, 1)
    return dict(
        model=name, task="detection", **cost, img_s=speed["img_s"], latency_ms=speed["latency_ms"],
        peak_mem_mb=pm.mb, peak_mem_source=pm.source, device=device.type,
        gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        torch_threads=torch.get_num_threads(), precision=spec.precision, res=hw[0], res_w=hw[1],
        batch=spec.batch, num_classes=classes,
        scan_backend=recorded_scan_backend(name, backend), channels_last=False, compile=False, cuda_graph=False,
        warmup=spec.warmup, repeats=spec.repeats, iters=1, **_load_fields(load_before))
