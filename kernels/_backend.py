"""Backend choice for the VMamba kernels: "auto" | "torch" | "triton".

No silent fallback: asking for "triton" where it cannot run raises. "auto"
picks Triton for CUDA tensors when Triton imports, the torch twins otherwise;
callers record the resolved name on the run.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of ints. Launchers use these two instead of triton.cdiv / triton.next_power_of_2, which are
    constexpr-function wrappers costing microseconds per host call (benchmarks/host_path.py)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def rows_view(t: torch.Tensor) -> torch.Tensor:
    """(R, C) view of (..., C) with column stride 1 for the row-wise kernels (a copy only when no such view exists)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] == 1 else t2.contiguous()


def graph_capture() -> bool:
    """True while torch.compile / torch.export or torch.jit.trace is capturing a graph: the Triton ops must
    then go through their registered dispatcher ops (one node each). Plain eager calls skip the dispatcher
    and call the launchers through a torch.autograd.Function: the same kernels, less host time per call."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def needs_grad(*tensors) -> bool:
    """Will autograd differentiate through an op on these tensors (None entries ignored)? When not, the eager
    paths launch without an autograd node and skip what only a backward reads."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_direct = threading.local()


@contextlib.contextmanager
def direct_launch():
    """Inside: `traceable` hands out the raw @triton.jit kernels. The eager autograd.Functions launch
    there; outside (the registered ops' bodies), kernels go through `torch.library.wrap_triton`, whose
    traceable wrapper lets torch.compile see the launch but in eager mode costs a higher-order-op
    dispatch per launch (~0.3 ms of host time measured on an H100 host, more than most of our kernels)."""
    prev = getattr(_direct, "on", False)
    _direct.on = True
    try:
        yield
    finally:
        _direct.on = prev


def traceable(kernel):
    """The launchable form of a compiled @triton.jit kernel (see direct_launch)."""
    return kernel if getattr(_direct, "on", False) else torch.library.wrap_triton(kernel)


class _Interpreted:
    """An interpreted kernel (Triton's CPU interpreter) whose launches on FakeTensors do nothing.

    torch.compile propagates FakeTensors (shapes, no data) through every op of a graph it captures; for the
    registered Triton ops that runs their bodies, where on a GPU `wrap_triton` records a launch without running
    it. The interpreter reads the data, so here a launch with a FakeTensor argument is skipped (the outputs were
    allocated by the launcher, with the right shapes): torch.compile(backend="eager") then captures the Triton
    path on the CPU (tests/test_compile.py). Any other tensor subclass (AOTAutograd's FunctionalTensor) still
    reaches the interpreter and fails: an interpreted kernel is never silently left out of a traced graph."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            from torch._subclasses.fake_tensor import FakeTensor

            if any(isinstance(a, FakeTensor) for a in (*args, *kwargs.values())):
                return None
            return launch(*args, **kwargs)
        return run


def interpreted(kernel):
    """`kernel` (an interpreted Triton kernel) in the launchable form that skips FakeTensor launches."""
    return _Interpreted(kernel)


def launch_or_apply(op, launch, fn, *args):
    """The three ways a Triton op with an autograd.Function runs: its registered op `op` while a graph is captured,
    `launch(*args)` directly when nothing needs a gradient (no autograd node), `fn.apply(*args)` otherwise."""
    if graph_capture():
        return op(*args)
    if not needs_grad(*args):
        with direct_launch():
            return launch(*args)
    return fn.apply(*args)


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device | str | None = None) -> bool:
    """Can Triton kernels run on tensors of `device` (default: CUDA if present)?"""
    if not triton_importable():
        return False
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return triton_interpret()


@torch.compiler.assume_constant_result
def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map a requested backend to the one that will run ("torch" or "triton").

    A constant to torch.compile (`assume_constant_result`): the answer depends only on the arguments and the
    machine, so the compiled code neither traces this function (Triton's import, the environment) nor
    guards on what it read."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available(dev):
            why = "Triton is not installed" if not triton_importable() else (
                f"tensors are on {dev.type}; Triton needs CUDA (or TRITON_INTERPRET=1 on the CPU)")
            raise RuntimeError(f"scan backend 'triton' was requested but cannot run: {why}")
        return "triton"
    return "triton" if dev.type == "cuda" and triton_available(dev) else "torch"
