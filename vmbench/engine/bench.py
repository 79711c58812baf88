"""Speed and memory: inference throughput, training-step throughput, and the `vmbench bench` benchmark.

Timing method (the one shared/ANCHORS.md numbers use): eval mode under inference_mode (no_grad when
compiled), random input, untimed warm-up calls, then `repeats` timed runs of `iters` calls each; the
reported latency is the median per-batch time over the runs. `timed_runs` is that loop, the one every
speed figure goes through (the CLI bench, the suite, a run's benchmark, benchmarks/peers.py). On CUDA:
cudnn.benchmark on, CUDA-event timing, peak memory from torch.cuda.max_memory_allocated (absolute, weights
included). On the CPU: time.perf_counter, peak memory as the growth of the process's peak RSS over the measurement
(VmHWM after resetting it, minus VmRSS before), or None where Linux does not offer that.
With `cuda_graph`, the step is captured once into a CUDA graph and the replays are timed: the GPU's
time for the step without the host's (Python, dispatch, kernel launches).
Every measurement records the machine's 1-minute load average before (and after) it; above
LOADED_PER_CPU per CPU the result carries a `load_warning`: other work shared the machine, img/s may be low.
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from . import SpecError

__all__ = [
    "benchmark", "measure_throughput", "train_step_throughput", "resolve_device", "resolve_scan_backend",
    "recorded_scan_backend", "load_average", "load_warning",
    "autocast_ctx", "PeakMemory", "timed_runs", "cuda_graph_replay",
]

Progress = Callable[[str, int, int], None]
# A machine whose 1-minute load average exceeds this many runnable processes per CPU is busy with other work:
# a speed measured then is flagged (the same bench measured 0.75 to 3.08 img/s on a shared 2-core machine).
LOADED_PER_CPU = 0.5
_AMP_DTYPES = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """"auto" → cuda when available, else cpu. Asking for CUDA where there is none raises SpecError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"--device cuda was requested but CUDA is not available "
                            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise SpecError(f"device must be auto, cpu or cuda; got {name!r}")


def resolve_scan_backend(requested: str, device: torch.device) -> str:
    """The selective-scan backend that will run ("torch" | "triton"); unusable requests raise SpecError."""
    from vmbench.kernels import resolve_backend

    try:
        return resolve_backend(requested, device)
    except (RuntimeError, ValueError) as e:
        raise SpecError(str(e)) from None


def recorded_scan_backend(model_name: str, backend: str) -> str | None:
    """The scan backend to record on a run of `model_name`: the resolved one for models that have a selective
    scan (VMamba), None for the others (ConvNeXt, ResNet, … never run one)."""
    from vmbench.models import uses_scan

    return backend if uses_scan(model_name) else None


def autocast_ctx(device: torch.device, precision: str, cache: bool = True):
    """Autocast for "amp_bf16" / "amp_fp16" on `device`; a null context for "fp32". `cache=False` turns off
    autocast's cache of cast weights (required inside a CUDA graph capture)."""
    if precision not in _AMP_DTYPES:
        raise SpecError(f"precision must be one of {', '.join(_AMP_DTYPES)}; got {precision!r}")
    dtype = _AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def cuda_graph_replay(step: Callable[[], None], device: torch.device,
                      before_capture: Callable[[], None] | None = None):
    """`step` captured into a CUDA graph; returns the graph's replay. Warm-up calls run on a side stream first
    (kernels compiled, cuDNN algorithms chosen, lazy state allocated), as capture requires. Replaying launches
    the captured kernels with no Python or dispatcher work: the time of the GPU work alone."""
    if device.type != "cuda":
        raise SpecError(f"a CUDA graph needs a CUDA device; got {device.type}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the process's peak RSS (VmHWM) to its current RSS
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory over a window: `with PeakMemory(device, delta) as pm: ...; pm.mb, pm.source`.

    CUDA: max_memory_allocated (absolute), source "cuda_max_allocated". CPU: peak RSS of the process during
    the window, source "cpu_peak_rss" (absolute) or "cpu_peak_rss_delta" (growth over the RSS at entry,
    when `delta`); mb None and source None where the peak cannot be reset (non-Linux).
    """

    def __init__(self, device: torch.device, delta: bool = False):
        self.device, self.delta = torch.device(device), delta
        self.mb: float | None = None
        self.source: str | None = None
        self._ok = False
        self._rss0 = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._ok = True
        else:
            self._rss0 = _proc_status_kb("VmRSS") or 0
            self._ok = _reset_rss_peak() and _proc_status_kb("VmHWM") is not None
        return self

    def read(self) -> float | None:
        """Peak so far in MiB (also sets .mb and .source)."""
        if not self._ok:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb, self.source = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        else:
            hwm = _proc_status_kb("VmHWM") or 0
            if self.delta:
                self.mb, self.source = max(0, hwm - self._rss0) / 1024, "cpu_peak_rss_delta"
            else:
                self.mb, self.source = hwm / 1024, "cpu_peak_rss"
        return self.mb

    def __exit__(self, *exc):
        if exc[0] is None:
            self.read()
        return False


def load_average() -> float | None:
    """The machine's 1-minute load average (os.getloadavg), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def load_warning(load: float | None, cpus: int | None = None) -> str | None:
    """A one-line warning when `load` (1-minute load average) says other work shared the machine; else None."""
    cpus = cpus or os.cpu_count() or 1
    if load is None or load <= LOADED_PER_CPU * cpus:
        return None
    return (f"the machine was busy while measuring (load average {load:.2f} on {cpus} CPUs): other processes "
            "shared it, so img/s may be low; measure again on an idle machine to compare")


def _load_fields(load_before: float | None) -> dict:
    """{load_avg_1m, load_avg_1m_after, cpu_count, load_warning?} of a measurement that started at
    `load_before`. The warning looks at the load before measuring: afterwards it includes the benchmark's own
    threads."""
    cpus = os.cpu_count() or 1
    warning = load_warning(load_before, cpus)
    return dict(load_avg_1m=load_before, load_avg_1m_after=load_average(), cpu_count=cpus,
                **({"load_warning": warning} if warning else {}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(step: Callable[[], None], device: torch.device, warmup: int = 3, repeats: int = 5, iters: int = 10,
               progress: Progress | None = None, task: str = "bench", warmup_s: float = 0.0
               ) -> tuple[float, list[float]]:
    """The one timing loop of vmbench (`vmbench bench`, the paper suite, the training run's benchmark and
    benchmarks/peers.py): `step` called once (its seconds returned apart: compilation, cuDNN's search), then
    untimed at least `warmup` times and for at least `warmup_s` seconds, then `repeats` timed runs of `iters`
    calls each. CUDA: CUDA-event timing, the device synchronised before every run; CPU: time.perf_counter.
    Returns (first-call seconds, per-call milliseconds of each timed run)."""
    total = 1 + warmup + repeats
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(task, done, total)

    t0 = time.perf_counter()
    step()
    _sync(device)
    first_call_s = time.perf_counter() - t0
    tick()
    t0, n = time.perf_counter(), 0
    while n < warmup or time.perf_counter() - t0 < warmup_s:
        step()
        n += 1
        if n <= warmup:
            tick()
        if n % 10 == 0:
            _sync(device)  # a time-based warm-up must not only queue work
    _sync(device)
    per_call_ms = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                step()
            end.record()
            end.synchronize()
            per_call_ms.append(start.elapsed_time(end) / iters)
        else:
            t = time.perf_counter()
            for _ in range(iters):
                step()
            per_call_ms.append((time.perf_counter() - t) * 1e3 / iters)
        tick()
    return first_call_s, per_call_ms


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device):
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _input(batch: int, res: int, device: torch.device, channels_last: bool, in_chans: int = 3) -> torch.Tensor:
    x = torch.randn(batch, in_chans, res, res, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def measure_throughput(model: torch.nn.Module, batch: int, res: int, device: torch.device | str,
                       precision: str = "fp32", warmup: int = 3, repeats: int = 5, iters: int | None = None,
                       channels_last: bool = False, compiled: bool = False, in_chans: int = 3,
                       progress: Progress | None = None, task: str = "bench", cuda_graph: bool = False) -> dict:
    """Inference speed of `model` (already on `device`) on random (batch, 3, res, res) input.

    `iters` calls per timed run (default 10 on CUDA, 1 on the CPU). The model is put in eval mode and its
    previous mode restored; its parameters are frozen for the measurement (`vmbench.kernels.frozen_parameters`,
    as in an evaluation pass). `cuda_graph`: the forward is captured once into a CUDA graph and the graph is
    timed (no host work per call; warm-up and capture come first, untimed; `first_call_s` is the first
    replay). Returns {img_s, latency_ms (median per batch), latencies_ms (each run), first_call_s,
    peak_mem_mb, peak_mem_source, batch, res, precision, iters, repeats, warmup, load_avg_1m (before),
    load_avg_1m_after, cpu_count, load_warning (only when the machine was busy)}.
    """
    device = torch.device(device)
    iters = iters or (10 if device.type == "cuda" else 1)
    load_before = load_average()
    was_training = model.training
    model.eval()
    x = _input(batch, res, device, channels_last, in_chans)
    grad_ctx = torch.no_grad if compiled else torch.inference_mode

    def step():
        with grad_ctx(), autocast_ctx(device, precision, cache=not cuda_graph):
            model(x)

    from vmbench.kernels import frozen_parameters

    try:
        with _cudnn_benchmark(device), PeakMemory(device, delta=device.type != "cuda") as pm, frozen_parameters():
            run = cuda_graph_replay(step, device) if cuda_graph else step
            first_call_s, ms = timed_runs(run, device, warmup, repeats, iters, progress, task)
    finally:
        model.train(was_training)
    latency = statistics.median(ms)
    return dict(img_s=batch * 1e3 / latency, latency_ms=latency, latencies_ms=ms, first_call_s=first_call_s,
                peak_mem_mb=pm.mb, peak_mem_source=pm.source, batch=batch, res=res, precision=precision,
                iters=iters, repeats=repeats, warmup=warmup, **_load_fields(load_before))


def train_step_throughput(model: torch.nn.Module, batch: int, res: int, device: torch.device | str,
                          precision: str = "amp_bf16", warmup: int = 3, repeats: int = 5,
                          iters: int | None = None, channels_last: bool = False, in_chans: int = 3,
                          progress: Progress | None = None, task: str = "train step", cuda_graph: bool = False
                          ) -> dict:
    """Training-step speed: forward + cross-entropy + backward under `precision`, no optimizer step
    (the method of the "train img/s" columns in shared/ANCHORS.md). Gradients are dropped between calls
    (`cuda_graph`: the forward and backward are captured once, after the gradients were dropped, and each
    replay writes them anew).

    Returns the keys of `measure_throughput`; peak memory covers activations and gradients.
    """
    device = torch.device(device)
    iters = iters or (10 if device.type == "cuda" else 1)
    load_before = load_average()
    was_training = model.training
    model.train()
    x = _input(batch, res, device, channels_last, in_chans)
    target: list[torch.Tensor] = []

    def step():
        if not cuda_graph:
            model.zero_grad(set_to_none=True)
        with autocast_ctx(device, precision, cache=not cuda_graph):
            out = model(x)
        if not target:
            target.append(torch.randint(out.shape[-1], (batch,), device=device,
                                        generator=torch.Generator(device=device).manual_seed(0)))
        F.cross_entropy(out.float(), target[0]).backward()

    try:
        with _cudnn_benchmark(device), PeakMemory(device, delta=device.type != "cuda") as pm:
            run = cuda_graph_replay(step, device, lambda: model.zero_grad(set_to_none=True)) if cuda_graph else step
            first_call_s, ms = timed_runs(run, device, warmup, repeats, iters, progress, task)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    latency = statistics.median(ms)
    return dict(img_s=batch * 1e3 / latency, latency_ms=latency, latencies_ms=ms, first_call_s=first_call_s,
                peak_mem_mb=pm.mb, peak_mem_source=pm.source, batch=batch, res=res, precision=precision,
                iters=iters, repeats=repeats, warmup=warmup, **_load_fields(load_before))


def model_cost(model_name: str, num_classes: int, res: int, model: torch.nn.Module | None = None,
               **create_kw) -> dict:
    """Params and FLOPs of a model at batch 1 × res, counted on the CPU with the torch scan backend.

    `model` is reused when given (it must be on the CPU with the torch backend); otherwise a fresh CPU
    instance is built. Returns {params_m, gflops, flops_uncovered (sorted op names), flops_error}.
    """
    from vmbench.models import create_model

    from .flops import count_flops, count_params

    cpu_model = model if model is not None else create_model(model_name, num_classes=num_classes,
                                                             scan_backend="torch", img_size=res, **create_kw)
    out = dict(params_m=count_params(cpu_model) / 1e6, gflops=None, flops_uncovered=[], flops_error=None)
    was_training = cpu_model.training
    cpu_model.eval()
    try:
        flops, uncovered = count_flops(cpu_model, res, batch=1, device="cpu", fast=True)
        out["gflops"] = flops / 1e9
        out["flops_uncovered"] = sorted(uncovered)
    except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError) as e:
        # A model the FLOP counter cannot trace still gets its speed measured; the reason is kept.
        out["flops_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        cpu_model.train(was_training)
    return out


def benchmark(spec, progress: Progress | None = None) -> dict:
    """Inference benchmark of `spec` (a BenchSpec): params, GFLOPs, img/s, latency, peak memory.

    Validates the model name, device and scan backend first (ValueError subclasses), then builds the model
    with random weights. Returns {model, params_m, gflops, flops_uncovered, flops_error, img_s, latency_ms,
    latencies_ms, first_call_s, peak_mem_mb, peak_mem_source, device, gpu_name, torch_threads, precision, res,
    batch, num_classes, scan_backend (resolved; None for a model without a scan), channels_last, compile,
    cuda_graph, warmup, repeats, iters, load_avg_1m, cpu_count, load_warning (a busy machine only)}.
    """
    from vmbench.models import create_model, resolve_model_name

    name = resolve_model_name(spec.model)
    device = resolve_device(spec.device)
    backend = resolve_scan_backend(spec.scan_backend, device)
    autocast_ctx(device, spec.precision)  # validates the precision name
    if getattr(spec, "cuda_graph", False) and device.type != "cuda":
        raise SpecError(f"--cuda-graph needs a CUDA device; the benchmark would run on {device.type}")

    model = create_model(name, num_classes=spec.num_classes, scan_backend=backend, img_size=spec.res)
    cost = model_cost(name, spec.num_classes, spec.res, model=model if backend == "torch" else None)
    model.to(device)
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if spec.compile else model
    speed = measure_throughput(run_model, spec.batch, spec.res, device, spec.precision, warmup=spec.warmup,
                               repeats=spec.repeats, channels_last=spec.channels_last, compiled=spec.compile,
                               progress=progress, task="bench", cuda_graph=getattr(spec, "cuda_graph", False))
    return dict(
        model=name, **cost,
        img_s=speed["img_s"], latency_ms=speed["latency_ms"], latencies_ms=speed["latencies_ms"],
        first_call_s=speed["first_call_s"], peak_mem_mb=speed["peak_mem_mb"],
        peak_mem_source=speed["peak_mem_source"], device=device.type,
        gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        torch_threads=torch.get_num_threads(), precision=spec.precision, res=spec.res, batch=spec.batch,
        num_classes=spec.num_classes, scan_backend=recorded_scan_backend(name, backend),
        channels_last=spec.channels_last,
        compile=spec.compile, cuda_graph=getattr(spec, "cuda_graph", False), warmup=spec.warmup,
        repeats=spec.repeats, iters=speed["iters"],
        **{k: speed[k] for k in ("load_avg_1m", "load_avg_1m_after", "cpu_count", "load_warning") if k in speed},
    )
