"""Fused SS2D core (forward): the four directional sequences never exist in HBM.

    x (B, H, W, D) channels-last
    x_dbl = x (B*L, D) @ x_proj_weight.view(4*(R+2N), D).T       one GEMM, natural (h, w) order
          -> (B, L, 4, R+2N): per position and direction k: dt_r (R), B (N), C (N)
    kernel, one program per (d-block of BD channels, image b):
        for pair in (rows: k=0 & k=2, columns: k=1 & k=3):
            pass A: walk the reversed direction (k+2) from the end, chunk by chunk
                    (BT positions), keeping only its carried state; store the state that
                    enters each chunk (tiny scratch: B * D * L/BT * N fp32).
            pass B: walk the forward direction k chunk by chunk; per chunk load
                    x[b, positions, d-block] once (position order = direction k's order,
                    read straight from the channels-last map), dt = dt_proj_k @ dt_r
                    (tl.dot, fp32 accumulate), softplus(dt + bias), chunked associative
                    scan with the carried state; recompute the reversed direction's
                    chunk from its stored entry state (same positions, reversed order,
                    flipped back); y_k + y_{k+2} + (D_k + D_{k+2}) * x summed in registers.
                    rows: store fp32 partial sum `acc`; columns: acc + y, cast, store out.
Everything in a chunk is fp32; outputs cast once. Deterministic: no atomics, fixed order.

HBM bytes per (b, position, channel), 2-byte x: x read 4 times (8), acc fp32 written and
read once (8), out written (2) = 18; x_dbl (4*(R+2N) values per position) stays in L2
across the D/BD programs of an image. The unfused composition moves ~84 (four copies of
x, dts, fp32 ys, merge).

Backward is not fused: `ss2d_core(backend="triton")` uses this forward when no input needs
a gradient and the Triton composition (cross-scan -> projections -> selective scan ->
cross-merge) otherwise. See benchmarks/NOTES-ss2d.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import cdiv, next_pow2
from ._cross_scan_triton import _kernel_for, new_buffer

__all__ = ["ss2d_fused_forward", "ss2d_fwd_launch", "fused_supported"]


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _chunk(
    x_base, xdbl_base, l, L, H, W, sxh, sxw, sxd, d, dm,
    wt, bias, A, h_in,
    COL: tl.constexpr, KOFF: tl.constexpr, CD: tl.constexpr,
    R: tl.constexpr, N: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
    FP32_DOT: tl.constexpr, WANT_Y: tl.constexpr,
):
    """Scan one chunk of one direction, positions in the order given by `l`.

    l: [BT] sequence indices of the row-major (COL=0) or column-major (COL=1) order, in
    scan order; positions with l >= L are identity steps. wt: [BD, BR] dt_proj (x dtype);
    bias: [BD] fp32; A: [BD, BN] fp32; h_in: [BD, BN] fp32 carried state.
    Returns y [BD, BT] fp32 (without the D skip; zeros if not WANT_Y), h_out [BD, BN]
    (state after the last scan step), p [BT] natural positions, u [BD, BT] fp32.
    """
    valid = l < L
    if COL:
        hh = l % H
        ww = l // H
    else:
        hh = l // W
        ww = l % W
    p = hh * W + ww  # [BT] natural (row-major) position
    m2 = dm[:, None] & valid[None, :]  # [BD, BT]
    u = tl.load(x_base + d[:, None] * sxd + (hh * sxh + ww * sxw)[None, :], mask=m2, other=0.0).to(tl.float32)
    rows = xdbl_base + p.to(tl.int64) * CD + KOFF  # [BT] pointers to (dt_r, B, C) of direction k
    r = tl.arange(0, BR)
    dtr = tl.load(rows[None, :] + r[:, None], mask=(r[:, None] < R) & valid[None, :], other=0.0)  # [BR, BT]
    if FP32_DOT:
        dt = tl.dot(wt.to(tl.float32), dtr.to(tl.float32), input_precision="ieee")  # [BD, BT] fp32
    else:
        dt = tl.dot(wt, dtr)  # [BD, BT] fp32 accumulate of 16-bit operands
    dt = dt + bias[:, None]
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))  # softplus, torch's threshold
    dt = tl.where(m2, dt, 0.0)  # identity step (a = 1, b = 0) outside the map
    n = tl.arange(0, BN)
    nm = (n[:, None] < N) & valid[None, :]  # [BN, BT]
    Bv = tl.load(rows[None, :] + R + n[:, None], mask=nm, other=0.0).to(tl.float32)  # [BN, BT]
    a = tl.exp(dt[:, None, :] * A[:, :, None])  # [BD, BN, BT]
    b = (dt * u)[:, None, :] * Bv[None, :, :]  # [BD, BN, BT]
    ac, bc = tl.associative_scan((a, b), 2, _combine)
    hs = bc + ac * h_in[:, :, None]  # [BD, BN, BT] states after each step
    t = tl.arange(0, BT)
    h_out = tl.sum(tl.where(t[None, None, :] == BT - 1, hs, 0.0), axis=2)  # [BD, BN]
    if WANT_Y:
        Cv = tl.load(rows[None, :] + R + N + n[:, None], mask=nm, other=0.0).to(tl.float32)  # [BN, BT]
        y = tl.sum(hs * Cv[None, :, :], axis=1)  # [BD, BT]
    else:
        y = tl.zeros_like(u)
    return y, h_out, p, u


@triton.jit
def _ss2d_fwd_kernel(
    x_ptr, xdbl_ptr, wdt_ptr, bias_ptr, A_ptr, Ds_ptr, acc_ptr, out_ptr, st_ptr,
    H, W, D, NCHUNK,
    sxb, sxh, sxw, sxd,
    R: tl.constexpr, N: tl.constexpr,
    BD: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_dblk = tl.num_programs(0)
    L = H * W
    CD: tl.constexpr = 4 * (R + 2 * N)
    d = pid_d * BD + tl.arange(0, BD)
    dm = d < D
    r = tl.arange(0, BR)
    n = tl.arange(0, BN)
    t = tl.arange(0, BT)
    x_base = x_ptr + pid_b.to(tl.int64) * sxb
    xdbl_base = xdbl_ptr + pid_b.to(tl.int64) * L * CD
    acc_base = acc_ptr + pid_b.to(tl.int64) * L * D
    out_base = out_ptr + pid_b.to(tl.int64) * L * D
    st_n = n[None, :] * BD + tl.arange(0, BD)[:, None]  # [BD, BN] offsets in one stored state
    for pair in tl.static_range(2):
        kf = pair  # forward direction (a constexpr: pair comes from static_range)
        kr = pair + 2  # reversed direction
        wmask = dm[:, None] & (r[None, :] < R)
        wt_f = tl.load(wdt_ptr + (kf * D + d[:, None]) * R + r[None, :], mask=wmask, other=0.0)  # [BD, BR]
        wt_r = tl.load(wdt_ptr + (kr * D + d[:, None]) * R + r[None, :], mask=wmask, other=0.0)
        bias_f = tl.load(bias_ptr + kf * D + d, mask=dm, other=0.0)
        bias_r = tl.load(bias_ptr + kr * D + d, mask=dm, other=0.0)
        amask = dm[:, None] & (n[None, :] < N)
        A_f = tl.load(A_ptr + (kf * D + d[:, None]) * N + n[None, :], mask=amask, other=0.0)  # [BD, BN]
        A_r = tl.load(A_ptr + (kr * D + d[:, None]) * N + n[None, :], mask=amask, other=0.0)
        D_sum = tl.load(Ds_ptr + kf * D + d, mask=dm, other=0.0) + tl.load(Ds_ptr + kr * D + d, mask=dm, other=0.0)
        st_base = st_ptr + ((pid_b.to(tl.int64) * n_dblk + pid_d) * 2 + pair) * NCHUNK * BN * BD

        # pass A: reversed direction from the end; remember the state entering each chunk
        h = tl.zeros((BD, BN), dtype=tl.float32)
        for j in range(NCHUNK):
            ci = NCHUNK - 1 - j
            tl.store(st_base + ci * BN * BD + st_n, h)
            l_rev = ci * BT + (BT - 1 - t)  # scan order: descending sequence index
            _, h, _, _ = _chunk(x_base, xdbl_base, l_rev, L, H, W, sxh, sxw, sxd, d, dm, wt_r, bias_r, A_r, h,
                                pair, kr * (R + 2 * N), CD, R, N, BR, BN, BT, FP32_DOT, False)
        tl.debug_barrier()  # states (and, for the columns, acc) written by other threads of this program

        # pass B: forward direction; recompute the reversed one per chunk from its entry state
        hf = tl.zeros((BD, BN), dtype=tl.float32)
        for ci in range(NCHUNK):
            l_fwd = ci * BT + t
            y, hf, p, u = _chunk(x_base, xdbl_base, l_fwd, L, H, W, sxh, sxw, sxd, d, dm, wt_f, bias_f, A_f, hf,
                                 pair, kf * (R + 2 * N), CD, R, N, BR, BN, BT, FP32_DOT, True)
            h_in = tl.load(st_base + ci * BN * BD + st_n)
            l_rev = ci * BT + (BT - 1 - t)
            y_rev, _, _, _ = _chunk(x_base, xdbl_base, l_rev, L, H, W, sxh, sxw, sxd, d, dm, wt_r, bias_r, A_r,
                                    h_in, pair, kr * (R + 2 * N), CD, R, N, BR, BN, BT, FP32_DOT, True)
            y += tl.flip(y_rev, 1)  # back to l_fwd order (flip of the last axis)
            y += D_sum[:, None] * u
            m2 = dm[:, None] & (l_fwd < L)[None, :]
            off = p[None, :].to(tl.int64) * D + d[:, None]  # [BD, BT] in (B, L, D)
            if pair == 0:
                tl.store(acc_base + off, y, mask=m2)
            else:
                y += tl.load(acc_base + off, mask=m2, other=0.0)
                tl.store(out_base + off, y.to(out_ptr.dtype.element_ty), mask=m2)
        if pair == 0:
            tl.debug_barrier()


def _pow2(v: int, lo: int) -> int:
    return max(lo, next_pow2(v))


def fused_supported(x: torch.Tensor) -> bool:
    """Dtypes the fused kernel handles (tl.dot has no fp64)."""
    return x.dtype in (torch.float16, torch.bfloat16, torch.float32)


def ss2d_fwd_launch(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, config=None):
    """Fused SS2D forward (no autograd).

    Args:
        x:               (B, H, W, D) fp16 / bf16 / fp32, any strides (channels-last contiguous is fastest).
        x_proj_weight:   (4, R + 2N, D), cast to x.dtype (as the torch composition does).
        dt_projs_weight: (4, D, R), cast to x.dtype.
        dt_projs_bias:   (4, D), used in fp32.
        A_logs:          (4*D, N), A = -exp(A_logs) in fp32.
        Ds:              (4*D,), fp32.
        config:          optional (BD, BT, num_warps) override (benchmark sweeps).
    Returns:
        y: (B, H, W, D) x.dtype, contiguous: sum over the four directions of the scan outputs.
    """
    b, H, W, D = x.shape
    K, r2n, _ = x_proj_weight.shape
    N = A_logs.shape[1]
    R = dt_projs_weight.shape[-1]
    assert K == 4 and r2n == R + 2 * N
    L = H * W
    dt = x.dtype
    # x_dbl in natural order: one (B*L, D) @ (D, 4*(R+2N)) GEMM in x's dtype
    xdbl = torch.matmul(x.reshape(b * L, D), x_proj_weight.to(dt).reshape(K * r2n, D).t())  # (B*L, 4*(R+2N))
    wdt = dt_projs_weight.to(dt).contiguous()  # (4, D, R)
    bias = dt_projs_bias.float().reshape(-1).contiguous()  # (4*D,)
    A = (-torch.exp(A_logs.float())).contiguous()  # (4*D, N)
    Dsf = Ds.float().contiguous()  # (4*D,)
    out = new_buffer((b, H, W, D), dt, x.device)
    if out.numel() == 0:
        return out
    BR = _pow2(R, 16)  # tl.dot needs K >= 16
    BN = next_pow2(N)
    if config is None and x.device.type == "cpu":
        config = (16, 16, 1)  # interpreter: smallest tiles tl.dot takes (its cost grows with tile size)
    if config is None:
        # BT*BD*BN fp32 per scan operand; 2K elements over 4 warps keeps the chunk in registers
        BD = 32 if D >= 32 else 16
        BT = max(16, min(64, 2048 // (BD * BN)))
        nw = 4
    else:
        BD, BT, nw = config
    # fp32 operands: exact fp32 products for fp32 x; on the CPU interpreter also for bf16, whose
    # tl.dot it gets wrong (bf16 -> fp32 is exact, so the numerics match the GPU's bf16 dot)
    fp32_dot = dt == torch.float32 or (x.device.type == "cpu" and dt == torch.bfloat16)
    nchunk = cdiv(L, BT)
    n_dblk = cdiv(D, BD)
    acc = out if dt == torch.float32 else new_buffer((b, L, D), torch.float32, x.device)
    states = new_buffer((b, n_dblk, 2, nchunk, BN, BD), torch.float32, x.device)
    _kernel_for(_ss2d_fwd_kernel, x.device)[(n_dblk, b)](
        x, xdbl, wdt, bias, A, Dsf, acc, out, states,
        H, W, D, nchunk, *x.stride(),
        R=R, N=N, BD=BD, BT=BT, BR=BR, BN=BN, FP32_DOT=fp32_dot, num_warps=nw)
    return out


@torch.library.triton_op("vmbench::ss2d_fused_fwd", mutates_args=())
def _ss2d_fwd_op(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                 dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor) -> torch.Tensor:
    return ss2d_fwd_launch(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)


def ss2d_fused_forward(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """Fused SS2D forward as a custom op (traceable by torch.compile; no backward registered).

    Shapes and dtypes as `ss2d_fwd_launch`; returns y (B, H, W, D) in x.dtype.
    """
    return torch.ops.vmbench.ss2d_fused_fwd(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
