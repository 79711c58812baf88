"""The training step as one CUDA graph (`vmbench run --cuda-graph`): forward, loss, backward, gradient clipping and
the optimizer step are captured once and replayed for every batch, so a step costs the GPU's time without the
host's (Python, dispatch, ~1400 kernel launches for VMamba-T).

    graphed = GraphedStep(model, optimizer, ClassificationObjective(...), device, amp=True, clip_grad=None)
    loss, n_images, hits = graphed(batch)       # one optimizer step; train_one_epoch(..., graph=graphed)

How: the first WARMUP_STEPS calls are ordinary eager steps on a side stream (real training steps: Triton and cuDNN
choose their kernels, the optimizer creates its state), then the next batch is copied into static input buffers,
the step is captured (gradients set to None first, so backward allocates them in the graph's pool) and replayed;
every later call copies its batch into those buffers and replays. What stays outside the graph: moving the batch
to the GPU, mixup / cutmix (host random draws), the lr schedule, the EMA update and the loss bookkeeping.

The lr schedule takes effect through 0-d lr tensors on the GPU that the captured optimizer reads: the graph is
captured with each param group's "lr" set to its tensor, the float is put back for the scheduler, logging and
checkpoints, and before each replay the tensor is filled with the group's current float. AdamW runs with
`capturable=True` (step counters on the GPU), SGD with `fused=True` (torch's only SGD that takes an lr tensor
without reading it on the host). Clipping is clip_grad_norm_(foreach) with no host read.

Rules (config.RunSpec refuses the rest before anything runs): a CUDA device; one process (no DDP); accum_steps 1;
bf16 autocast or fp32 (fp16's GradScaler decides on the host whether to step); classification (Mask R-CNN's
shapes vary); not with torch.compile. Every batch must have the captured shape: the training loader drops a last
partial batch. Dropout and drop-path draw from the graph's own Philox offsets, so with them the random stream
differs from an eager run's (equally distributed).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from . import SpecError

__all__ = ["GraphedStep", "train_step", "capturable_optimizer_kwargs", "LrTensors", "WARMUP_STEPS"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's recipe for whole-network capture)


def capturable_optimizer_kwargs(optimizer: str) -> dict:
    """Extra keyword arguments for timm's create_optimizer_v2 so that the optimizer's step can be captured with an
    lr tensor: AdamW `capturable=True`, SGD `fused=True` (torch's SGD has no `capturable` flag; its foreach step
    turns a tensor lr into a host number)."""
    if optimizer == "adamw":
        return dict(capturable=True)
    if optimizer == "sgd":
        return dict(fused=True)
    raise SpecError(f"--cuda-graph supports optimizers adamw and sgd, not {optimizer!r}")


class LrTensors:
    """One 0-d float32 tensor per param group of `optimizer`, on `device`, holding the group's lr for a captured
    optimizer step. `sync()` copies each group's current float lr into its tensor (a fill, no host read; skipped
    when unchanged); `installed()` is a context in which the groups' "lr" are the tensors (for the capture),
    the floats put back at its end."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer = optimizer
        self.tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)
                        for g in optimizer.param_groups]
        self._last = [float(g["lr"]) for g in optimizer.param_groups]

    def sync(self) -> None:
        for i, (t, g) in enumerate(zip(self.tensors, self.optimizer.param_groups)):
            lr = float(g["lr"])
            if lr != self._last[i]:
                t.fill_(lr)
                self._last[i] = lr

    @contextlib.contextmanager
    def installed(self):
        self.sync()
        floats = [g["lr"] for g in self.optimizer.param_groups]
        for g, t in zip(self.optimizer.param_groups, self.tensors):
            g["lr"] = t
        try:
            yield
        finally:
            for g, lr in zip(self.optimizer.param_groups, floats):
                g["lr"] = lr


def train_step(model, optimizer, objective, inputs, autocast, clip_grad: float | None = None,
               params: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on `inputs` = objective.inputs(batch): loss (forward under `autocast`), backward, clipping
    of `params` (default: the model's) to the global norm `clip_grad`, optimizer step; returns (loss detached,
    correct count). No host reads anywhere: this is what GraphedStep runs eagerly to warm up and then captures.
    The gradients must be None or zero before it (it accumulates into existing ones, as backward does)."""
    loss, hits = objective.loss(model, *inputs, autocast)
    loss.backward()
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(params if params is not None else list(model.parameters()), clip_grad,
                                       foreach=True)
    optimizer.step()
    return loss.detach(), hits


class GraphedStep:
    """One training step (forward, loss, backward, clipping, optimizer step) of `model` on a batch, replayed from a
    CUDA graph after WARMUP_STEPS eager steps (see the module docstring).

    `objective`: a ClassificationObjective (vmbench.engine.train_loop); its `inputs()` runs eagerly on each batch
    (device copy, channels_last, mixup), its `loss()` inside the graph. `optimizer`: made with
    capturable_optimizer_kwargs. `amp`: bf16 autocast (cache off, as capture requires). `clip_grad`: max global
    gradient norm, or None. Calling it returns (mean loss (fp32 0-d tensor), images, correct count (0-d tensor));
    after capture these are the graph's output buffers, overwritten by the next call."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, objective, device, *,
                 amp: bool = False, clip_grad: float | None = None, warmup: int = WARMUP_STEPS):
        device = torch.device(device)
        if device.type != "cuda":
            raise SpecError(f"--cuda-graph needs a CUDA device; this run trains on {device.type}")
        if not hasattr(objective, "inputs") or not hasattr(objective, "loss"):
            raise SpecError("--cuda-graph applies to classification only")
        for g in optimizer.param_groups:
            if not (g.get("capturable") or g.get("fused")):
                raise SpecError("--cuda-graph needs an optimizer made with capturable_optimizer_kwargs "
                                "(AdamW capturable=True or SGD fused=True)")
        self.model, self.optimizer, self.objective, self.device = model, optimizer, objective, device
        self.amp, self.clip_grad, self.warmup = bool(amp), clip_grad, int(warmup)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr = LrTensors(optimizer, device)
        self.steps = 0  # calls so far (warm-up steps included)
        self.side = torch.cuda.Stream(device)  # where the warm-up steps run
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, ...] = ()  # captured inputs: images, targets (labels or soft), labels
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None  # captured (loss, hits)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _autocast(self):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False)

    def _body(self, images, targets, labels) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(self.model, self.optimizer, self.objective, (images, targets, labels), self._autocast(),
                          self.clip_grad, self.params)

    def _eager(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """A warm-up step on a side stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side), warnings.catch_warnings():
            # AdamW(capturable=True) warns when it steps outside a capture: these steps are meant to.
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            self.optimizer.zero_grad(set_to_none=True)
            out = self._body(*inputs)
        current.wait_stream(self.side)
        return out

    def _capture(self, inputs) -> None:
        """Static input buffers holding this batch, then the graph of the step on them (not run yet)."""
        self._static = tuple(torch.empty_like(t).copy_(t) for t in inputs)
        # Backward inside the capture allocates the gradients from the graph's pool; each replay rewrites them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the loader's pin-memory thread may allocate pinned memory while this thread captures.
            with self.lr.installed(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._out = self._body(*self._static)
        except RuntimeError as e:  # an op that reads a value on the host, or one CUDA graphs do not support
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RuntimeError(f"--cuda-graph: the training step could not be captured as a CUDA graph ({first}); "
                               f"train without --cuda-graph") from e
        self.graph = graph

    def _check_shapes(self, inputs) -> None:
        for name, s, t in zip(("images", "targets", "labels"), self._static, inputs):
            if s.shape != t.shape or s.dtype != t.dtype:
                raise RuntimeError(f"--cuda-graph: a batch's {name} are {tuple(t.shape)} {t.dtype}, the captured "
                                   f"step's {tuple(s.shape)} {s.dtype}; every batch must have one shape")

    def release(self) -> None:
        """Drop the graph, its buffers and the gradients it wrote (their memory goes back to the allocator); a
        later call captures again (warm-up is not repeated)."""
        self.graph, self._static, self._out = None, (), None
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, batch) -> tuple[torch.Tensor, int, torch.Tensor]:
        images, targets, labels = self.objective.inputs(batch, self.device)
        inputs = (images, targets, labels)
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup:
            loss, hits = self._eager(inputs)
            return loss, labels.shape[0], hits
        if self.graph is None:
            self._capture(inputs)
        else:
            self._check_shapes(inputs)
            for s, t in zip(self._static, inputs):
                s.copy_(t, non_blocking=True)
        self.lr.sync()
        self.graph.replay()
        loss, hits = self._out
        return loss, labels.shape[0], hits
