"""The scan part of the SS2D core as one autograd.Function that keeps no directional copy for backward.

    ps = cross_scan_diag(p)    (direction k's own projections, in its order: dt rows, B, C)
    y = cross_merge(selective_scan(cross_scan(x), (wdt, ps[dt rows]), A, ps[B rows], ps[C rows], Ds, bias))

The composition of separate ops saves, for its backward, the scan's inputs u = cross_scan(x) and
delta = wdt @ ps: two (B, 4, D, L) tensors, 16 bytes per element of x in bf16, about 30 % of a VMamba
block's saved activations. This Function saves x (kept alive anyway by x_proj's GEMM), the small ps
(B, 4, R + 2N, L) and the scan's chunk states, and recomputes u (one cross-scan) in the backward.

delta is never a tensor here (N = 1, VMamba-T/S/B): the scan kernels take the dt projection as the pair
(wdt (K*D, R), ps's R dt rows) and form delta = wdt @ ps per chunk in registers, R multiply-adds per
element. That removes a (B, 4, D, L) write and read in the forward, the GEMM that recomputed delta in the
backward, and cuBLAS's misaligned kernels for an inner dimension R of 6 / 12 / 24 / 48. The backward writes
ddelta once; its two small GEMMs give the gradients of ps's dt rows and of wdt. (N > 1 forms delta with one
GEMM inside the scan's launcher.) Eager Triton path only; under graph capture the registered ops run instead.

It also keeps the small per-direction projections in one piece: p (B, H, W, K*C) from x_proj's GEMM on the
map goes in, each direction's block is cross-scanned on its own (no copy of all K blocks in all K orders),
B and C are read by the scan in place from ps, and the merge sums the four directions' fp32 outputs into
x's dtype (so its gradient comes back in that dtype too).

Shapes: x (B, H, W, D) channels-last; p (B, H, W, K*C) with C = R + 2N (per direction: dt_r, B, C);
wdt (K, D, R) dt_proj weight (any float dtype: read as is, fp32 parameters stay fp32); A (K*D, N) fp32
(= -exp(A_logs)); Ds, bias (K*D,) fp32. Returns y (B, H, W, D) in x's dtype.
"""
from __future__ import annotations

import torch

from ._backend import direct_launch
from ._cross_scan_triton import cross_merge_launch, cross_scan_launch
from ._selective_scan_triton import _scan_bwd_parts, _scan_fwd

__all__ = ["ss2d_scan_recompute"]


def _inputs(x, ps, wdt, r: int, n: int):
    """The scan's u (B, K*D, L), low-rank delta (W, P) and B, C (B, K, N, L) (views of ps, read in place)."""
    b, h, w, d = x.shape
    k = ps.shape[1]
    u = cross_scan_launch(x, True).view(b, k * d, h * w)
    return u, (wdt.reshape(k * d, r), ps[:, :, :r]), ps[:, :, r:r + n], ps[:, :, r + n:]


class _SS2DScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, wdt, A, Ds, bias, r: int, n: int):
        b, h, w, d = x.shape
        with direct_launch():
            ps = cross_scan_launch(p, True, diag=True)  # (B, K, C, L)
            u, delta, Bs, Cs = _inputs(x, ps, wdt, r, n)
            y, hs = _scan_fwd(u, delta, A, Bs, Cs, Ds, bias, True, True)  # y fp32
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
            u, delta, Bs, Cs = _inputs(x, ps, wdt, r, n)  # u recomputed, not saved
            dy = cross_scan_launch(gy.contiguous(), True).view(b, k * d, h * w)  # merge's adjoint
            du, ddelta, dA, dBC, dD, dbias = _scan_bwd_parts(dy, u, delta, A, Bs, Cs, Ds, bias, hs, True)
            dx = cross_merge_launch(du.view(b, k, d, h * w), h, w, True)  # scan's adjoint
        ddelta = ddelta.view(b, k, d, h * w)
        # delta = wdt @ ps_r per direction: d ps_r = wdt^T @ ddelta, d wdt = ddelta @ ps_r^T (batch summed in
        # fp32), each as a GEMM whose leading dimensions are D or L (aligned), not R.
        dps_r = torch.matmul(wdt.transpose(1, 2).to(ddelta.dtype).contiguous(), ddelta)  # (B, K, R, L)
        dps = torch.cat([dps_r, dBC.to(dps_r.dtype)], 2)  # (B, K, C, L): dt rows, dB rows, dC rows
        dwdt_t = torch.matmul(ps[:, :, :r], ddelta.transpose(2, 3)).sum(0, dtype=torch.float32)  # (K, R, D)
        with direct_launch():
            dp = cross_merge_launch(dps, h, w, True, diag=True)  # (B, H, W, K*C): the diagonal scan's adjoint
        return dx.to(x.dtype), dp, dwdt_t.transpose(1, 2).to(wdt.dtype), dA, dD, dbias, None, None


def ss2d_scan_recompute(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """See the module docstring. Differentiable in x, p, wdt, A, Ds and bias."""
    return _SS2DScan.apply(x, p, wdt, A, Ds, bias, r, n)
