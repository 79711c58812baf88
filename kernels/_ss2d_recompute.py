"""The scan part of the SS2D core as one autograd.Function that keeps no directional copy for backward.

    ps = cross_scan_diag(p)    (direction k's own projections, in its order)
    y = cross_merge(selective_scan(cross_scan(x), wdt @ ps, A, ps[B rows], ps[C rows], Ds, bias))

The composition of separate ops saves, for its backward, the scan's inputs u = cross_scan(x) and
delta = wdt @ ps: two (B, 4, D, L) tensors, 16 bytes per element of x in bf16, about 30 % of a VMamba
block's saved activations. This Function saves x (kept alive anyway by x_proj's GEMM), the small ps
(B, 4, C, L) and the scan's chunk states, and recomputes u (one cross-scan) and delta (one GEMM
with an inner dimension of C) in the backward: a few percent more GPU work for ~30 % less
activation memory. Eager calls run it as an autograd.Function; under graph capture (torch.compile, jit.trace)
it runs as the registered ops `vmbench::ss2d_scan` / `vmbench::ss2d_scan_bwd`, the same launchers, and where no
input needs a gradient as `vmbench::ss2d_scan_infer` (the eager inference path's launches: no chunk states). Where
`_ss2d_map_triton.takes_map` says so (by default: calls without gradients, and calls with them on maps of at most
56² positions, each with enough images and channels), the map-layout scan of kernels/_ss2d_map_triton.py runs
instead: its own forward without gradients, and with them this Function / these ops with the variant
`train_variant` names (they then save p instead of ps).

It also keeps the small per-direction projections in one piece: p (B, H, W, K*C) from x_proj's GEMM on the
map goes in, each direction's block is cross-scanned on its own (no copy of all K blocks in all K orders),
B and C are read by the scan in place from ps, and y leaves the merge in x's dtype (so its gradient comes
back in that dtype too).

Shapes: x (B, H, W, D) channels-last; p (B, H, W, K*C) with C >= R + 2N rows per direction (dt_r, B, C, then
zero rows: `_ss2d_mapwise` pads C to a multiple of 8);
wdt (K, D, C) dt_proj weight with zero columns against the B / C / zero rows; A (K*D, N) fp32 (= -exp(A_logs));
Ds, bias (K*D,) fp32. Returns y (B, H, W, D) in x's dtype (the four directions summed in fp32).
"""
from __future__ import annotations

import torch

from typing import Tuple

from . import _ss2d_map_triton as _map
from ._backend import direct_launch, graph_capture, needs_grad
from ._cross_scan_triton import cross_merge_launch, cross_scan_launch
from ._selective_scan_triton import _scan_bwd_parts, _scan_fwd

__all__ = ["ss2d_scan_recompute"]


def _inputs(x, ps, wdt, r: int, n: int):
    """u (B, K*D, L), delta (B, K*D, L), B and C (B, K, N, L) of the scan, from x and the projections."""
    b, h, w, d = x.shape
    k = ps.shape[1]
    u = cross_scan_launch(x, True).view(b, k * d, h * w)
    delta = torch.matmul(wdt, ps).view(b, k * d, h * w)
    return u, delta, ps[:, :, r:r + n], ps[:, :, r + n:r + 2 * n]  # B / C: views, read in place for N = 1


def _forward(x, p, wdt, A, Ds, bias, r: int, n: int, states: bool = True, variant: str = ""):
    """(out, ps, hs): the result and what the backward needs besides the inputs (hs None unless `states`).
    `variant` (one of _ss2d_map_triton.VARIANTS): the map-layout scan, whose backward reads p itself (ps empty)."""
    if variant:
        y, hs = _map.map_train_forward(x, p, wdt, A, Ds, bias, r, n, variant)
        return y, x.new_empty(0), hs
    b, h, w, d = x.shape
    ps = cross_scan_launch(p, True, diag=True)  # (B, K, C, L)
    u, delta, Bs, Cs = _inputs(x, ps, wdt, r, n)
    y, hs = _scan_fwd(u, delta, A, Bs, Cs, Ds, bias, True, True, states)
    return cross_merge_launch(y.view(b, -1, d, h * w), h, w, True, out_dtype=x.dtype), ps, hs


def _backward(gy, x, ps, wdt, A, Ds, bias, hs, r: int, n: int, variant: str = ""):
    """(dx, dp, dwdt, dA, dD, dbias); dA, dD and dbias may be views of one buffer. For a map `variant`, ps is p."""
    if variant:
        return _map.map_backward(gy, x, ps, wdt, A, Ds, bias, hs, r, n, variant)
    b, h, w, d = x.shape
    k = ps.shape[1]
    u, delta, Bs, Cs = _inputs(x, ps, wdt, r, n)  # recomputed, not saved
    dy = cross_scan_launch(gy.contiguous(), True).view(b, k * d, h * w)  # merge's adjoint
    du, ddelta, dA, dBC, dD, dbias = _scan_bwd_parts(dy, u, delta, A, Bs, Cs, Ds, bias, hs, True)
    dx = cross_merge_launch(du.view(b, k, d, h * w), h, w, True)  # scan's adjoint
    ddelta = ddelta.view(b, k, d, h * w)
    dps = torch.matmul(wdt.transpose(1, 2), ddelta)  # (B, K, C, L)
    dps[:, :, r:r + 2 * n] += dBC.to(dps.dtype)  # the B and C rows: (B, K, 2N, L), dB's rows then dC's
    dwdt = torch.matmul(ddelta, ps.transpose(2, 3)).sum(0, dtype=torch.float32)  # (K, D, C), batch summed in fp32
    dp = cross_merge_launch(dps, h, w, True, diag=True)  # (B, H, W, K*C): the diagonal scan's adjoint
    return dx.to(x.dtype), dp, dwdt.to(wdt.dtype), dA, dD, dbias


class _SS2DScan(torch.autograd.Function):
    """Eager path: the launchers called directly (see _backend.direct_launch)."""

    @staticmethod
    def forward(ctx, x, p, wdt, A, Ds, bias, r: int, n: int, variant: str):
        with direct_launch():
            out, ps, hs = _forward(x, p, wdt, A, Ds, bias, r, n, variant=variant)
        ctx.save_for_backward(x, p if variant else ps, wdt, A, Ds, bias, hs)
        ctx.rn = (r, n, variant)
        return out

    @staticmethod
    def backward(ctx, gy):
        with direct_launch():
            return (*_backward(gy, *ctx.saved_tensors, *ctx.rn), None, None, None)


# Graph capture (torch.compile, torch.export, jit.trace): the same computation as two registered ops, so a
# compiled model also saves x, ps and the chunk states instead of the directional copies.
@torch.library.triton_op("vmbench::ss2d_scan", mutates_args=())
def _ss2d_scan_op(x: torch.Tensor, p: torch.Tensor, wdt: torch.Tensor, A: torch.Tensor, Ds: torch.Tensor,
                  bias: torch.Tensor, r: int, n: int, variant: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, p, wdt, A, Ds, bias, r, n, variant=variant)


@torch.library.triton_op("vmbench::ss2d_scan_bwd", mutates_args=())
def _ss2d_scan_bwd_op(gy: torch.Tensor, x: torch.Tensor, ps: torch.Tensor, wdt: torch.Tensor, A: torch.Tensor,
                      Ds: torch.Tensor, bias: torch.Tensor, hs: torch.Tensor, r: int, n: int, variant: str
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dp, dwdt, dA, dD, dbias = _backward(gy, x, ps, wdt, A, Ds, bias, hs, r, n, variant)
    return dx, dp, dwdt, dA.clone(), dD.clone(), dbias.clone()  # an op's outputs may not alias one another


@torch.library.triton_op("vmbench::ss2d_scan_infer", mutates_args=())
def _ss2d_scan_infer_op(x: torch.Tensor, p: torch.Tensor, wdt: torch.Tensor, A: torch.Tensor, Ds: torch.Tensor,
                        bias: torch.Tensor, r: int, n: int) -> torch.Tensor:
    """`vmbench::ss2d_scan`'s result alone, for graphs that differentiate nothing (a compiled inference call):
    the scan writes no chunk states and the graph keeps no ps for a backward."""
    return _forward(x, p, wdt, A, Ds, bias, r, n, states=False)[0]


def _setup_context(ctx, inputs, output):
    x, p, wdt, A, Ds, bias, r, n, variant = inputs
    ctx.save_for_backward(x, p if variant else output[1], wdt, A, Ds, bias, output[2])
    ctx.rn = (r, n, variant)


def _op_backward(ctx, gy, _dps, _dhs):
    return (*torch.ops.vmbench.ss2d_scan_bwd(gy, *ctx.saved_tensors, *ctx.rn), None, None, None)


_ss2d_scan_op.register_autograd(_op_backward, setup_context=_setup_context)


def ss2d_scan_recompute(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """See the module docstring. Differentiable in x, p, wdt, A, Ds and bias."""
    grad = needs_grad(x, p, wdt, A, Ds, bias)
    on_map = n == 1 and wdt.shape[0] == 4 and _map.takes_map(x.shape, grad)
    if not grad and on_map:
        return _map.ss2d_map_forward(x.contiguous(), p, wdt, A, Ds, bias, r, n)
    variant = _map.train_variant(x.shape) if on_map else ""
    if graph_capture():
        if not grad:
            return torch.ops.vmbench.ss2d_scan_infer(x, p, wdt, A, Ds, bias, r, n)
        return torch.ops.vmbench.ss2d_scan(x, p, wdt, A, Ds, bias, r, n, variant)[0]
    if not grad:  # inference: no autograd node, no saved states
        with direct_launch():
            return _forward(x, p, wdt, A, Ds, bias, r, n, states=False)[0]
    return _SS2DScan.apply(x, p, wdt, A, Ds, bias, r, n, variant)
