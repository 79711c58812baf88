"""CUDA-graph replays of a model's calls: a plain `model(x)` or a training step at the speed of its GPU work.

Eager VMamba's host time is about its GPU time on a fast GPU (~1700 dispatcher ops and 100 Triton launches per
forward). `GraphReplay` records a model's call for one input signature into CUDA graphs once that signature has
come `warm` calls in a row, and serves later calls from them: an eval call without gradients replays the forward
and returns a copy of its output; a training call replays the forward, and its backward the recorded backward
(`_Replayed`, one autograd node; gradients reach `.grad` through autograd as usual). Wherever a replay could
differ from the eager call the eager forward runs (`GraphReplay.signature`); README "CUDA-graph replays of
VMamba's calls" has the rules. Entry point: `GraphReplay`, kept by VSSM as `graph_replay`.
"""
from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict

import torch
import torch.nn as nn


def _tensors(mods: list[nn.Module]) -> list[torch.Tensor]:
    return [t for m in mods for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]


def _global_hooks() -> bool:
    from torch.nn.modules import module as mod

    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks
                or mod._global_backward_pre_hooks)


def _hooked(mods) -> bool:
    """Has any module a forward or backward hook? (A replay runs no submodule's call, so none of them would run.)"""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in mods)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _Graph:
    """What both kinds of recorded call share: the static input, the model tensors read, the forward to record."""

    def __init__(self, module: nn.Module, forward, x: torch.Tensor, autocast: tuple[bool, torch.dtype]):
        self.mods = list(module.modules())
        self.tensors = _tensors(self.mods)
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.needs = [t.requires_grad for t in self.tensors]
        self.x = torch.empty_like(x)
        self.x.copy_(x)
        self.forward, (self.amp, self.amp_dtype) = forward, autocast

    def run(self) -> torch.Tensor:
        # autocast's cast cache off: a graph must not read casts that belong to the caller's autocast region
        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp, cache_enabled=False):
            return self.forward(self.x)

    def warm_up(self, call) -> None:
        """One `call()` on a side stream before capture (kernels chosen and compiled, lazy state made)."""
        side = torch.cuda.Stream(self.x.device)
        side.wait_stream(torch.cuda.current_stream(self.x.device))
        with torch.cuda.stream(side):
            call()
        torch.cuda.current_stream(self.x.device).wait_stream(side)

    def current(self) -> bool:
        """Do the recorded modules have no hooks and the recorded tensors, at the recorded addresses, needing the
        gradients they needed? (A module added or replaced since is not seen here: VSSM drops its graphs where it
        does that itself, and at every train() / eval() / to() call.)"""
        return not _hooked(self.mods) and all(
            t.data_ptr() == p and t.requires_grad == n for t, p, n in zip(self.tensors, self.ptrs, self.needs))


class _EvalGraph(_Graph):
    """A recorded no-gradient forward."""

    def __init__(self, *args):
        super().__init__(*args)
        self.warm_up(self.run)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.y = self.run()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.y.clone()  # the next replay overwrites self.y; a caller may keep what it got


class _TrainGraph(_Graph):
    """A recorded training forward and its backward (parameter gradients for any gradient of the output), as
    torch.cuda.make_graphed_callables records a callable; served through `_Replayed`, one autograd node."""

    def __init__(self, module: nn.Module, *args):
        super().__init__(module, *args)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        # Recorded through stand-ins for the parameters: new leaves on the same storage, so the graphs read the
        # parameters' current values and autograd's nodes for the real ones (alive while an earlier step's loss
        # is, and tied to the stream they were made on) take no part in the capture.
        stand_ins = {n: p.detach().requires_grad_() for n, p in named}
        inputs = list(stand_ins.values())
        self.forward = lambda x: torch.func.functional_call(module, stand_ins, (x,))

        def step():
            out = self.run()
            torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
        self.warm_up(step)
        self.fwd, self.bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.fwd):
            self.y = self.run()
        self.gy = torch.empty_like(self.y)
        with torch.cuda.graph(self.bwd, pool=self.fwd.pool()):
            self.grads = list(torch.autograd.grad(self.y, inputs, self.gy, allow_unused=True))
        self.pending = False  # a replayed forward whose autograd node is alive: its activations are still needed

    def release(self) -> None:
        self.pending = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = _Replayed.apply(self, x, *self.params)
        self.pending = True
        weakref.finalize(out.grad_fn, self.release)  # the node goes after its backward, or with the graph
        return out


class _Replayed(torch.autograd.Function):
    """The training graph as one autograd node: forward replays the recorded forward, backward the recorded
    backward and returns copies of its gradient buffers (one multi-tensor op), which the next replay overwrites:
    `.grad` or a caller of torch.autograd.grad may keep what it got."""

    @staticmethod
    def forward(ctx, graph: _TrainGraph, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.graph = graph
        graph.x.copy_(x)
        graph.fwd.replay()
        return graph.y.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable  # a replay is not differentiable again: create_graph raises
    def backward(ctx, gy: torch.Tensor):
        graph = ctx.graph
        graph.gy.copy_(gy)
        graph.bwd.replay()
        if not _keeps_graph():  # the activations are done with unless a retain_graph backward may come again
            graph.release()
        return (None, None, *_copies(graph.grads))


def _copies(tensors: list) -> list:
    """New tensors equal to `tensors` (None kept), made by one multi-tensor op."""
    made = iter(torch._foreach_mul([t for t in tensors if t is not None], 1.0))
    return [None if t is None else next(made) for t in tensors]


def _keeps_graph() -> bool:
    """Was this backward called with retain_graph? (True where torch cannot tell: the safe answer.)"""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else bool(keep())


MOVES = 8  # graphs dropped because the model's tensors moved before replays are turned off for the model


class GraphReplay:
    """CUDA-graph replays of a model's calls (see the module docstring). `warm`: calls of one input signature in a
    row before its graph is recorded; `keep`: graphs kept."""

    def __init__(self, enabled: bool = True, warm: int = 2, keep: int = 2):
        self.enabled, self.warm, self.keep = enabled, warm, keep
        self.graphs: OrderedDict = OrderedDict()
        self.last, self.seen = None, 0
        self.failed, self.moved = False, 0

    # derived state: copies of a model (EMA, deepcopy, pickling) start without graphs
    def __deepcopy__(self, memo):
        return type(self)(self.enabled, self.warm, self.keep)

    def __reduce__(self):
        return type(self), (self.enabled, self.warm, self.keep)

    def clear(self) -> None:
        """Drop every graph (and its memory, once no pending backward needs it); the next calls run eager until a
        signature is warm again."""
        self.graphs.clear()
        self.last, self.seen = None, 0

    def signature(self, module: nn.Module, x: torch.Tensor):
        """The key of `x`'s graphs (shape, strides, dtype, device, grad mode, autocast and TF32 settings), or None
        where a replay does not apply and the eager forward runs: replays off or turned off by a failed capture;
        an input off the current CUDA device or its default stream (side-stream warm-ups of other graph captures);
        tracing or a capture in progress; global module hooks; a torch.distributed process group (DDP, FSDP) or a
        DataParallel replica; eval mode with gradients or training without; in training, an input that needs a
        gradient or gradient checkpointing. (Module hooks and parameters needing no gradient are checked where a
        graph is recorded or replayed.)"""
        if not (self.enabled and not self.failed and x.is_cuda) or x.device.index != torch.cuda.current_device() \
                or torch.jit.is_tracing() or torch.cuda.is_current_stream_capturing() or _global_hooks() \
                or torch.cuda.current_stream() != torch.cuda.default_stream() \
                or getattr(module, "_is_replica", False) or _distributed():
            return None
        grad = torch.is_grad_enabled()
        if module.training != grad:  # eval calls without gradients, training calls with them
            return None
        if grad and (x.requires_grad or getattr(module, "grad_checkpointing", False)):
            return None
        return (tuple(x.shape), x.stride(), x.dtype, x.device, grad, torch.is_inference_mode_enabled(),
                torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def __call__(self, module: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
        """`forward(x)`, replayed from a graph where one applies (see `signature`)."""
        sig = self.signature(module, x)
        if sig is None:
            return forward(x)
        graph = self.graphs.get(sig)
        if graph is not None:
            if getattr(graph, "pending", False):  # the last replay's backward has not run: its activations stay
                return forward(x)
            if graph.current():
                self.graphs.move_to_end(sig)
                return graph(x)
            del self.graphs[sig]  # hooks now, or tensors moved since it was recorded
            self.moved += 1
            if self.moved > MOVES:  # parameters that move at every call: recording again would only cost
                self.failed = True
                warnings.warn(f"{type(module).__name__}: CUDA graph replays turned off, its parameters keep moving")
                return forward(x)
        self.seen = self.seen + 1 if sig == self.last else 1
        self.last = sig
        if self.seen < self.warm or _hooked(module.modules()) or (
                sig[4] and not any(p.requires_grad for p in module.parameters())):  # training with nothing to train
            return forward(x)
        try:
            graph = (_TrainGraph if sig[4] else _EvalGraph)(module, forward, x, sig[6:8])
        except Exception as e:  # an op that cannot be captured: this model stays eager
            self.failed = True
            warnings.warn(f"{type(module).__name__}: CUDA graph replays turned off, capture failed: {e}")
            return forward(x)
        self.graphs[sig] = graph
        while len(self.graphs) > self.keep:
            self.graphs.popitem(last=False)
        return graph(x)
