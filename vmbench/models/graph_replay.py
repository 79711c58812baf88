"""A model's no-gradient CUDA calls replayed from CUDA graphs: a plain `model(x)` at the speed of its GPU work.

Eager VMamba issues about 1700 dispatcher ops and 100 Triton launches per forward, and on a fast GPU its host
time is about its GPU time (benchmarks/RESULTS.md). `GraphReplay` records the forward for one input signature
into a CUDA graph once that signature has come `warm` calls in a row, then serves later calls by copying the
input into the graph's own, replaying, and returning a copy of the output: the same kernels, no host work.

It steps aside (the eager forward runs) unless every one of these holds: an input on the current CUDA device; no
gradient recorded (`torch.no_grad()` or `inference_mode`); the model in eval mode; no torch.compile / tracing /
stream capture in progress; no forward hook or pre-hook in the model (a replay would not run them). A signature is
the input's shape, strides, dtype and device with the grad mode, autocast and TF32 settings, so any of those
changing records or picks another graph (at most `keep`, the least recently used dropped). A graph is dropped when
a recorded parameter or buffer moved (`.data =`); in-place updates (load_state_dict, an optimizer step, EMA) are
read by the replay as by an eager call. VSSM drops every graph at train() / eval(), `.to()` and its own changes
(scan backend, classifier). What it cannot see is a module attribute or submodule changed from outside after the
last eval(): call `clear()` then. Graphs hold their memory until dropped; `enabled = False` turns replays off.
Entry point: `GraphReplay`, kept by VSSM as `graph_replay`.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn as nn


def _tensors(mods: list[nn.Module]) -> list[torch.Tensor]:
    return [t for m in mods for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]


def _global_hooks() -> bool:
    from torch.nn.modules import module as mod

    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks)


class _Graph:
    """One recorded forward: its static input and output and the model tensors it read."""

    def __init__(self, module: nn.Module, forward, x: torch.Tensor, autocast: tuple[bool, torch.dtype]):
        dev = x.device
        self.mods = list(module.modules())
        self.tensors = _tensors(self.mods)
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.x = torch.empty_like(x)
        self.x.copy_(x)
        enabled, dtype = autocast

        def run():
            # autocast's cast cache off: a graph must not read casts that belong to the caller's autocast region
            with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                return forward(self.x)

        side = torch.cuda.Stream(dev)  # a warm-up call off the capturing stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.y = run()

    def current(self) -> bool:
        """Do the recorded modules have no hooks and the recorded tensors, at the recorded addresses? (A module
        added or replaced since is not seen here: VSSM drops its graphs where it does that itself, and at every
        train() / eval() / to() call.)"""
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.mods) and all(
            t.data_ptr() == p for t, p in zip(self.tensors, self.ptrs))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.y.clone()  # the next replay overwrites self.y; a caller may keep what it got


class GraphReplay:
    """CUDA-graph replays of a model's no-gradient forward (see the module docstring). `warm`: calls of one input
    signature in a row before its graph is recorded; `keep`: graphs kept."""

    def __init__(self, enabled: bool = True, warm: int = 2, keep: int = 2):
        self.enabled, self.warm, self.keep = enabled, warm, keep
        self.graphs: OrderedDict = OrderedDict()
        self.last, self.seen = None, 0
        self.failed = False

    # derived state: copies of a model (EMA, deepcopy, pickling) start without graphs
    def __deepcopy__(self, memo):
        return type(self)(self.enabled, self.warm, self.keep)

    def __reduce__(self):
        return type(self), (self.enabled, self.warm, self.keep)

    def clear(self) -> None:
        """Drop every graph (and its memory); the next calls run eager until a signature is warm again."""
        self.graphs.clear()
        self.last, self.seen = None, 0

    def signature(self, module: nn.Module, x: torch.Tensor):
        """The key of `x`'s graph, or None where a replay does not apply (the eager forward runs)."""
        if not (self.enabled and not self.failed and x.is_cuda and not module.training) or torch.is_grad_enabled() \
                or x.device.index != torch.cuda.current_device() or torch.jit.is_tracing() \
                or torch.cuda.is_current_stream_capturing() or _global_hooks():
            return None
        return (tuple(x.shape), x.stride(), x.dtype, x.device, torch.is_inference_mode_enabled(),
                torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def __call__(self, module: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
        """`forward(x)`, replayed from a graph where one applies (see `signature`)."""
        sig = self.signature(module, x)
        if sig is None:
            return forward(x)
        graph = self.graphs.get(sig)
        if graph is not None:
            if graph.current():
                self.graphs.move_to_end(sig)
                return graph(x)
            del self.graphs[sig]  # hooks now, or tensors moved since it was recorded
        self.seen = self.seen + 1 if sig == self.last else 1
        self.last = sig
        if self.seen < self.warm or any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
            return forward(x)
        try:
            graph = _Graph(module, forward, x, sig[5:7])
        except Exception as e:  # an op that cannot be captured: this model stays eager
            self.failed = True
            warnings.warn(f"{type(module).__name__}: CUDA graph replays turned off, capture failed: {e}")
            return forward(x)
        self.graphs[sig] = graph
        while len(self.graphs) > self.keep:
            self.graphs.popitem(last=False)
        return graph(x)
