"""Parameter and FLOP counts in the VMamba paper's convention.

FLOPs are fvcore's (one multiply-add = one flop; LayerNorm counted as 5 per element;
two-operand einsums counted exactly rather than from numpy's rounded estimate),
plus a handle for the selective scan: 9·B·L·D·N, + B·D·L for the D skip (D = K*d_inner
channels over all four directions). The scan is one traced node in either backend
(`vmbench.kernels.selective_scan.SCAN_TRACE_NAMES`). Ops the paper treats as free
(flip, exp, neg, SiLU, and the cross-scan / cross-merge layout ops) are registered as
zero; anything else fvcore has no formula for (elementwise add/mul, GELU, mean, ...)
is returned in `uncovered` with its call count so callers can show it.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import warnings
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

__all__ = ["count_params", "count_flops", "scan_flops", "ZERO_COST_OPS"]

# Free in the paper's convention (fvcore would otherwise report them as unsupported).
ZERO_COST_OPS = ("aten::flip", "aten::exp", "aten::neg", "aten::silu", "aten::silu_")
_LAYOUT_PREFIXES = ("vmbench::cross_scan", "vmbench::cross_merge")  # pure data movement


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


def scan_flops(batch: int, channels: int, length: int, d_state: int, with_D: bool = True) -> int:
    """Selective-scan FLOPs: 9·B·L·D·N (+ B·D·L for the D skip)."""
    return 9 * batch * length * channels * d_state + (batch * channels * length if with_D else 0)


def _scan_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    # Node inputs follow selective_scan's signature: u (B, K*D, L), delta, A (K*D, N), B, C, D?, ...
    b, kd, length = get_shape(inputs[0])
    n = get_shape(inputs[2])[1]
    with_d = len(inputs) > 5 and get_shape(inputs[5]) is not None
    return scan_flops(b, kd, length, n, with_d)


def _einsum_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """Exact multiply-adds of a two-operand einsum: the product of every index's size.

    fvcore's own handle reads numpy's printed, 4-significant-digit FLOP estimate; SS2D's
    projections are einsums, so an exact count keeps totals reproducible to the flop.
    """
    from fvcore.nn.jit_handles import einsum_flop_jit, get_shape

    equation = inputs[0].toIValue().replace(" ", "")
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    lhs = equation.split("->")[0].split(",")
    if len(lhs) != 2 or "." in equation or any(s is None or len(s) != len(t) for s, t in zip(shapes, lhs)):
        return int(einsum_flop_jit(inputs, outputs))
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs, shapes):
        for letter, n in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(n))
    return math.prod(sizes.values())


def _scan_trace_names() -> tuple[str, ...]:
    # The package re-exports a function named `selective_scan`; import the module itself.
    ss = importlib.import_module("vmbench.kernels.selective_scan")
    names = getattr(ss, "SCAN_TRACE_NAMES", None)
    assert names, "vmbench.kernels.selective_scan.SCAN_TRACE_NAMES is missing; the scan cannot be counted"
    return tuple(names)


def _input_channels(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "in_chans"):
        return int(cfg.in_chans)
    for m in model.modules():  # first conv / patch embedding decides
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def _analyze(model: nn.Module, x: torch.Tensor, handles: dict[str, Any]):
    with warnings.catch_warnings():  # fvcore's import trips torch.jit.script deprecation warnings
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, (x,)).set_op_handle(**handles)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    fca.total()  # runs the trace once; later queries reuse it
    return fca


def _uncovered(fca, module: str = "") -> Counter:
    return Counter({op: int(n) for op, n in fca.unsupported_ops(module).items()
                    if not op.startswith(_LAYOUT_PREFIXES)})


def count_flops(model: nn.Module, res: int | tuple[int, int] = 224, batch: int = 1,
                device: str | torch.device = "cpu", in_chans: int | None = None,
                fast: bool = False) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on a (batch, C, res, res) random input; `res` = (H, W) for any other size
    (e.g. (800, 1280), the detection size the VMamba paper counts at).

    The model is traced in eval mode under no_grad, with every VMamba SS2D switched to
    the "torch" scan backend (a CPU trace); its training flag and backends are restored
    afterwards. A model on another device is copied to `device` for the trace.

    fast (VMamba only): trace a copy with one block per stage and add (depth - 1) times
    each stage's block count. Exact, since the blocks of a stage are identical in shape;
    several times quicker on a CPU, where the torch scan dominates the trace.

    Returns:
        (flops, uncovered): total flops (int), and {op name: number of calls} for the
        ops counted as zero because fvcore has no formula for them.
    """
    h, w = (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))
    if h <= 0 or w <= 0 or batch <= 0:
        raise ValueError(f"res and batch must be positive, got res={res}, batch={batch}")
    device = torch.device(device)
    handles: dict[str, Any] = {name: None for name in ZERO_COST_OPS}
    handles["aten::einsum"] = _einsum_flop_handle
    handles.update({name: _scan_flop_handle for name in _scan_trace_names()})
    c = in_chans if in_chans is not None else _input_channels(model)
    x = torch.randn(batch, c, h, w, device=device)

    from vmbench.models.vmamba import SS2D, VSSM

    if fast and isinstance(model, VSSM):
        cfg = model.cfg
        shallow = dataclasses.replace(cfg, depths=(1,) * len(cfg.depths), drop_path_rate=0.0, scan_backend="torch")
        small = VSSM(shallow).to(device).eval()
        with torch.no_grad():
            fca = _analyze(small, x, handles)
        total = int(fca.total())
        uncovered = _uncovered(fca)
        for i, depth in enumerate(cfg.depths):
            block = f"layers.{i}.blocks.0"
            total += (depth - 1) * int(fca.by_module()[block])
            for op, n in _uncovered(fca, block).items():
                uncovered[op] += (depth - 1) * n
        return total, dict(sorted(uncovered.items()))

    params = list(model.parameters())
    if params and params[0].device != device:
        model = copy.deepcopy(model).to(device)
    ss2d = [m for m in model.modules() if isinstance(m, SS2D)]
    saved_backends = [m.scan_backend for m in ss2d]
    was_training = model.training
    try:
        for m in ss2d:
            m.scan_backend = "torch"
        model.eval()
        with torch.no_grad():
            fca = _analyze(model, x, handles)
        total = int(fca.total())
        uncovered = _uncovered(fca)
    finally:
        for m, be in zip(ss2d, saved_backends):
            m.scan_backend = be
        model.train(was_training)
    return total, dict(sorted(uncovered.items()))
