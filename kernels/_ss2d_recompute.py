"""The scan part of the SS2D core as one autograd.Function that keeps no directional copy for backward.

    ps = cross_scan_diag(p)    (direction k's own projections, in its order)
    y = cross_merge(selective_scan(cross_scan(x), wdt @ ps, A, ps[B rows], ps[C rows], Ds, bias))

The composition of separate ops saves, for its backward, the scan's inputs u = cross_scan(x) and
delta = wdt @ ps: two (B, 4, D, L) tensors, 16 bytes per element of x in bf16, about 30 % of a VMamba
block's saved activations. This Function saves x (kept alive anyway by x_proj's GEMM), the small ps
(B, 4, R + 2N, L) and the scan's chunk states, and recomputes u (one cross-scan) and delta (one GEMM
with an inner dimension of R + 2N) in the backward: a few percent more GPU work for ~30 % less
activation memory. Eager Triton path only; under graph capture the registered ops run instead.

It also keeps the small per-direction projections in one piece: p (B, H, W, K*C) from x_proj's GEMM on the
map goes in, each direction's block is cross-scanned on its own (no copy of all K blocks in all K orders),
B and C are read by the scan in place from ps, and y leaves the merge in x's dtype (so its gradient comes
back in that dtype too).

Shapes: x (B, H, W, D) channels-last; p (B, H, W, K*C) with C = R + 2N (per direction: dt_r, B, C);
wdt (K, D, C) dt_proj weight with zero columns against the B / C rows; A (K*D, N) fp32 (= -exp(A_logs));
Ds, bias (K*D,) fp32. Returns y (B, H, W, D) in x's dtype (the four directions summed in fp32).
"""
from __future__ import annotations

import torch

from ._backend import direct_launch
from ._cross_scan_triton import cross_merge_launch, cross_scan_launch
from ._selective_scan_triton import _scan_bwd_parts, _scan_fwd

__all__ = ["ss2d_scan_recompute"]


def _inputs(x, ps, wdt, r: int, n: int):
    """u (B, K*D, L), delta (B, K*D, L), B and C (B, K, N, L) of the scan, from x and the projections."""
    b, h, w, d = x.shape
    k = ps.shape[1]
    u = cross_scan_launch(x, True).view(b, k * d, h * w)
    delta = torch.matmul(wdt, ps).view(b, k * d, h * w)
    return u, delta, ps[:, :, r:r + n], ps[:, :, r + n:]  # B / C: views, read in place for N = 1


class _SS2DScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, wdt, A, Ds, bias, r: int, n: int):
        b, h, w, d = x.shape
        with direct_launch():
            ps = cross_scan_launch(p, True, diag=True)  # (B, K, C, L)
            u, delta, Bs, Cs = _inputs(x, ps, wdt, r, n)
            y, hs = _scan_fwd(u, delta, A, Bs, Cs, Ds, bias, True, True)
            out = cross_merge_launch(y.view(b, -1, d, h * w), h, w, True, out_dtype=x.dtype)
        ctx.save_for_backward(x, ps, wdt, A, Ds, bias, hs)
        ctx.rn = (r, n)
        return out

    @staticmethod
    def backward(ctx, gy):
        x, ps, wdt, A, Ds, bias, hs = ctx.saved_tensors
        r, n = ctx.rn
        b, h, w, d = x.shape
        k = ps.shape[1]
        with direct_launch():
            u, delta, Bs, Cs = _inputs(x, ps, wdt, r, n)  # recomputed, not saved
            dy = cross_scan_launch(gy.contiguous(), True).view(b, k * d, h * w)  # merge's adjoint
            du, ddelta, dA, dBC, dD, dbias = _scan_bwd_parts(dy, u, delta, A, Bs, Cs, Ds, bias, hs, True)
            dx = cross_merge_launch(du.view(b, k, d, h * w), h, w, True)  # scan's adjoint
        ddelta = ddelta.view(b, k, d, h * w)
        dps = torch.matmul(wdt.transpose(1, 2), ddelta)  # (B, K, C, L)
        dps[:, :, r:] += dBC.to(dps.dtype)  # the B and C rows: (B, K, 2N, L), dB's rows then dC's
        dwdt = torch.matmul(ddelta, ps.transpose(2, 3)).sum(0, dtype=torch.float32)  # (K, D, C), batch summed in fp32
        with direct_launch():
            dp = cross_merge_launch(dps, h, w, True, diag=True)  # (B, H, W, K*C): the diagonal scan's adjoint
        return dx.to(x.dtype), dp, dwdt.to(wdt.dtype), dA, dD, dbias, None, None


def ss2d_scan_recompute(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """See the module docstring. Differentiable in x, p, wdt, A, Ds and bias."""
    return _SS2DScan.apply(x, p, wdt, A, Ds, bias, r, n)
