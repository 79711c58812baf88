"""Triton selective scan for VMamba: forward + backward kernels, launchers, custom ops.

Shapes (VMamba layout; K directions, D channels per direction, N states, L positions):
    u, delta        (B, K*D, L)  fp32 / fp16 / bf16
    A               (K*D, N)     fp32
    B, C            (B, K, N, L) fp32 / fp16 / bf16, shared by the D channels of direction k (N = 1: any
                    view whose (b, k) rows are evenly strided with contiguous positions, read in place)
    D, delta_bias   (K*D,)       fp32, optional
    y               (B, K*D, L)  fp32 if out_fp32 else u.dtype
    hs              (B, K*D, N, n_saved) fp32 — state entering each backward chunk (saved for backward)

One program owns BLOCK_D channels of one (batch, direction) pair and walks L in chunks of
BLOCK_L positions, scanning each chunk with `tl.associative_scan` along L and carrying the state
from chunk to chunk in registers. All arithmetic is fp32. The backward walks the chunks in
reverse: it recomputes a chunk's states from the saved state entering it, runs the reverse scan
for dL/dh, writes du / ddelta, and keeps dA / dD / ddelta_bias per program (summed over the batch
afterwards: no races).

N = 1 (VMamba-T/S/B) runs dedicated 2-D kernels on [BLOCK_D, BLOCK_L] tiles: longer forward chunks
whose next chunk is prefetched (short rows as one chunk), short backward chunks on small tiles whose
chunk before is prefetched (the forward saves the state entering every backward chunk, all of a forward
chunk's in one reduction), chunk lengths fitted to L, a backward reverse scan that never forms
a(t+1) (`_combine3`), dB / dC written as per-channel-block partial sums and reduced afterwards
(deterministic), a softplus without a log (`_softplus`), and alignment / contiguity hints so that 16-bit
rows of any length divisible by 4 are read 4 elements per instruction (`_n1_hints`). Other N run the
general kernels on [BLOCK_D, BLOCK_N, BLOCK_L] tiles with one chunk size for both
directions and dB / dC accumulated with atomics; `scan_config(n1=0)` sends N = 1 there too (the
previous version, kept for same-run comparisons).

Registered as `vmbench::selective_scan_triton` (forward, returns (y, hs)) and
`vmbench::selective_scan_triton_bwd` with `torch.library.triton_op`, so `torch.compile` traces
through without graph breaks and `torch.jit.trace` shows one node. The kernels' jit helpers are in
kernels/_scan_helpers.py, the chunk / tile / warp choices in kernels/_scan_config.py.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton.language as tl

from ._backend import cdiv, direct_launch, graph_capture, needs_grad
from ._scan_config import _blocks, _n1_bwd_prefetch, _n1_hints, _use_n1, scan_config
from ._scan_helpers import _add, _bwd_chunk, _combine, _div, _kernel, _softplus
from .selective_scan import _check_shapes

__all__ = ["selective_scan_triton", "scan_config"]


def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr,
    K, Dk, L, n_chunks,
    N: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    SAVE_STATES: tl.constexpr,  # write hs (for a backward)
):
    pid = tl.program_id(0)
    n_dblk = (Dk + BLOCK_D - 1) // BLOCK_D
    dblk = pid % n_dblk
    bk = pid // n_dblk  # b * K + k: neighbouring programs share B / C rows in L2
    k = bk % K
    b = bk // K
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dk
    ch = k * Dk + offs_d  # channel index in K*D
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A2 = tl.load(A_ptr + ch[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    rowid = (b * K * Dk + ch).to(tl.int64)  # [BLOCK_D]
    row = rowid * L
    bc = (bk.to(tl.int64) * N + offs_n) * L  # [BLOCK_N]
    hs_row = (rowid[:, None] * N + offs_n[None, :]) * n_chunks  # [BLOCK_D, BLOCK_N]
    lidx = tl.arange(0, BLOCK_L)
    h = tl.full([BLOCK_D, BLOCK_N], 0.0, tl.float32)
    for c in range(n_chunks):
        if SAVE_STATES:
            tl.store(hs_ptr + hs_row + c, h, mask=mask_dn)
        offs_l = c * BLOCK_L + lidx
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        ptr = row[:, None] + offs_l[None, :]
        u = tl.load(u_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:  # max(x, 0) + log1p(exp(-|x|)), log1p via log(w) * z / (w - 1)
            z = tl.exp(-tl.abs(dt))
            w = 1.0 + z
            dt = tl.maximum(dt, 0.0) + tl.where(w == 1.0, z, tl.log(w) * z / (w - 1.0))
        dt = tl.where(m2, dt, 0.0)  # padding: a = 1, x = 0, so the state passes through
        mbl = mask_n[:, None] & mask_l[None, :]
        Bv = tl.load(B_ptr + bc[:, None] + offs_l[None, :], mask=mbl, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + bc[:, None] + offs_l[None, :], mask=mbl, other=0.0).to(tl.float32)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # [BLOCK_D, BLOCK_N, BLOCK_L]
        x = (dt * u)[:, None, :] * Bv[None, :, :]
        sa, sx = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        hh = sx + sa * h[:, :, None]
        y = tl.reduce(hh * Cv[None, :, :], 1, _add)  # [BLOCK_D, BLOCK_L]
        if HAS_D:
            y = y + Dv[:, None] * u
        tl.store(y_ptr + ptr, y.to(y_ptr.dtype.element_ty), mask=m2)
        h = tl.reduce(tl.where((lidx == BLOCK_L - 1)[None, None, :], hh, 0.0), 2, _add)


def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, hs_ptr,
    du_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    K, Dk, L, n_chunks,
    N: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    n_dblk = (Dk + BLOCK_D - 1) // BLOCK_D
    dblk = pid % n_dblk
    bk = pid // n_dblk
    k = bk % K
    b = bk // K
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dk
    ch = k * Dk + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    Av = tl.load(A_ptr + ch[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
    A2 = Av * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    rowid = (b * K * Dk + ch).to(tl.int64)
    row = rowid * L
    bc = (bk.to(tl.int64) * N + offs_n) * L
    hs_row = (rowid[:, None] * N + offs_n[None, :]) * n_chunks
    lidx = tl.arange(0, BLOCK_L)
    g_next = tl.full([BLOCK_D, BLOCK_N], 0.0, tl.float32)  # dL/dh at the next chunk's first position
    dA_acc = tl.full([BLOCK_D, BLOCK_N], 0.0, tl.float32)
    dD_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    dbias_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        offs_l = c * BLOCK_L + lidx
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        m2n = mask_d[:, None] & (offs_l + 1 < L)[None, :]  # position t + 1 exists
        ptr = row[:, None] + offs_l[None, :]
        u = tl.load(u_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
        dt_raw = tl.load(dt_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
        dtn = tl.load(dt_ptr + ptr + 1, mask=m2n, other=0.0).to(tl.float32)  # delta at t + 1 (cache hit)
        if HAS_BIAS:
            dt_raw = dt_raw + bias[:, None]
            dtn = dtn + bias[:, None]
        dt = dt_raw
        if SOFTPLUS:
            z = tl.exp(-tl.abs(dt_raw))
            w = 1.0 + z
            dt = tl.maximum(dt_raw, 0.0) + tl.where(w == 1.0, z, tl.log(w) * z / (w - 1.0))
            zn = tl.exp(-tl.abs(dtn))
            wn = 1.0 + zn
            dtn = tl.maximum(dtn, 0.0) + tl.where(wn == 1.0, zn, tl.log(wn) * zn / (wn - 1.0))
        dt = tl.where(m2, dt, 0.0)
        mbl = mask_n[:, None] & mask_l[None, :]
        Bv = tl.load(B_ptr + bc[:, None] + offs_l[None, :], mask=mbl, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + bc[:, None] + offs_l[None, :], mask=mbl, other=0.0).to(tl.float32)
        # recompute the states of this chunk from its entry state
        h0 = tl.load(hs_ptr + hs_row + c, mask=mask_dn, other=0.0)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # [BLOCK_D, BLOCK_N, BLOCK_L]
        dtu = dt * u
        x = dtu[:, None, :] * Bv[None, :, :]
        sa, sx = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        hh = sx + sa * h0[:, :, None]
        # g_t = C_t dy_t + a_{t+1} g_{t+1}: reverse scan with coefficient a_{t+1} (0 past L)
        an = tl.where(m2n[:, None, :], tl.exp2(dtn[:, None, :] * A2[:, :, None]), 0.0)
        cdy = Cv[None, :, :] * dy[:, None, :]
        ga, gg = tl.associative_scan((an, cdy), axis=2, combine_fn=_combine, reverse=True)
        g = gg + ga * g_next[:, :, None]
        g_next = tl.reduce(tl.where((lidx == 0)[None, None, :], g, 0.0), 2, _add)
        gah = g * (hh - x)  # g_t * a_t * h_{t-1}
        tl.atomic_add(dC_ptr + bc[:, None] + offs_l[None, :], tl.reduce(hh * dy[:, None, :], 0, _add),
                      mask=mbl, sem="relaxed")
        tl.atomic_add(dB_ptr + bc[:, None] + offs_l[None, :], tl.reduce(g * dtu[:, None, :], 0, _add),
                      mask=mbl, sem="relaxed")
        gB = tl.reduce(g * Bv[None, :, :], 1, _add)  # [BLOCK_D, BLOCK_L]
        ddt = gB * u + tl.reduce(gah * Av[:, :, None], 1, _add)
        dA_acc += tl.reduce(gah * dt[:, None, :], 2, _add)
        du = gB * dt
        if HAS_D:
            du = du + Dv[:, None] * dy
            dD_acc += tl.reduce(dy * u, 1, _add)
        if SOFTPLUS:
            ddt = ddt / (1.0 + tl.exp(-dt_raw))
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.reduce(ddt, 1, _add)
        tl.store(du_ptr + ptr, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + ptr, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
    tl.store(dA_ptr + rowid[:, None] * N + offs_n[None, :], dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + rowid, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + rowid, dbias_acc, mask=mask_d)


def _scan_fwd_n1_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr,
    K, Dk, L, n_chunks, n_saved, sbc,  # sbc: stride between the (b, k) rows of B and C (L when contiguous)
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, SAVE_EVERY: tl.constexpr,
    SAVE_STATES: tl.constexpr,  # write hs (for a backward)
    ALIGN: tl.constexpr, VEC: tl.constexpr,  # see `_n1_hints`
    FAST: tl.constexpr,  # approximate division (compiled kernels): `_div`
):
    # N = 1 (VMamba-T/S/B): a 2-D [BLOCK_D, BLOCK_L] tile. Same algorithm as `_scan_fwd_kernel`
    # without the size-1 state axis, whose 3-D tiles cost layout conversions at every chunk.
    # The states entering every SAVE_EVERY positions (the backward's chunk, a divisor of BLOCK_L)
    # are saved: hs (B, K*D, n_saved). The next chunk's loads are issued before this chunk's
    # arithmetic, so their latency overlaps it.
    pid = tl.program_id(0)
    n_dblk = (Dk + BLOCK_D - 1) // BLOCK_D
    dblk = pid % n_dblk
    bk = pid // n_dblk  # b * K + k: neighbouring programs share B / C rows in L2
    b = bk // K
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dk
    ch = (bk % K) * Dk + offs_d  # channel index in K*D
    A2 = tl.load(A_ptr + ch, mask=mask_d, other=0.0) * 1.4426950408889634  # A (K*D, 1), log2 e folded in
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    L = (L // ALIGN) * ALIGN  # the same value, now known to be a multiple of ALIGN: aligned rows and masks
    sbc = (sbc // ALIGN) * ALIGN
    rowid = (b * K * Dk + ch).to(tl.int64)  # [BLOCK_D]
    row = rowid * L
    bc = bk.to(tl.int64) * sbc
    lidx = tl.max_contiguous(tl.arange(0, BLOCK_L), VEC)
    h = tl.full([BLOCK_D], 0.0, tl.float32)
    hs_row = rowid * n_saved
    if SAVE_STATES:
        tl.store(hs_ptr + hs_row, h, mask=mask_d)  # the state entering position 0
    # chunk c + 1's loads (in their stored dtype: a prefetched chunk holds 16-bit values in registers)
    m2 = mask_d[:, None] & (lidx < L)[None, :]
    nu = tl.load(u_ptr + row[:, None] + lidx[None, :], mask=m2, other=0.0)
    ndt = tl.load(dt_ptr + row[:, None] + lidx[None, :], mask=m2, other=0.0)
    nB = tl.load(B_ptr + bc + lidx, mask=lidx < L, other=0.0)
    nC = tl.load(C_ptr + bc + lidx, mask=lidx < L, other=0.0)
    for c in range(n_chunks):
        offs_l = c * BLOCK_L + lidx
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        ptr = row[:, None] + offs_l[None, :]
        u, dt, Bv, Cv = nu.to(tl.float32), ndt.to(tl.float32), nB.to(tl.float32), nC.to(tl.float32)
        mask_n = offs_l + BLOCK_L < L  # the next chunk (all masked after the last)
        nu = tl.load(u_ptr + ptr + BLOCK_L, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        ndt = tl.load(dt_ptr + ptr + BLOCK_L, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        nB = tl.load(B_ptr + bc + offs_l + BLOCK_L, mask=mask_n, other=0.0)
        nC = tl.load(C_ptr + bc + offs_l + BLOCK_L, mask=mask_n, other=0.0)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt, _ = _softplus(dt, FAST)
        dt = tl.where(m2, dt, 0.0)  # padding: a = 1, x = 0, so the state passes through
        a = tl.exp2(dt * A2[:, None])
        x = dt * u * Bv[None, :]
        sa, sx = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
        hh = sx + sa * h[:, None]
        y = hh * Cv[None, :]
        if HAS_D:
            y = y + Dv[:, None] * u
        tl.store(y_ptr + ptr, y.to(y_ptr.dtype.element_ty), mask=m2)
        # The state after position t enters t + 1: saved where a backward chunk starts. One reduction picks the
        # last state of each of the chunk's `per` backward chunks out of the tile, seen as [BLOCK_D, per,
        # SAVE_EVERY] (a masked store of the whole tile would convert its layout first); the last is the carry.
        per: tl.constexpr = BLOCK_L // SAVE_EVERY
        if SAVE_STATES:
            jj = tl.arange(0, per)
            last = (tl.arange(0, SAVE_EVERY) == SAVE_EVERY - 1)[None, None, :]
            ends = tl.reduce(tl.where(last, tl.reshape(hh, [BLOCK_D, per, SAVE_EVERY]), 0.0), 2, _add)
            tl.store(hs_ptr + hs_row[:, None] + c * per + 1 + jj[None, :], ends,
                     mask=mask_d[:, None] & (c * BLOCK_L + (jj + 1) * SAVE_EVERY < L)[None, :])
            h = tl.reduce(tl.where((jj == per - 1)[None, :], ends, 0.0), 1, _add)
        else:
            h = tl.reduce(tl.where((lidx == BLOCK_L - 1)[None, :], hh, 0.0), 1, _add)


def _scan_bwd_n1_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, hs_ptr,
    du_ptr, ddt_ptr, dBC_ptr, dP_ptr,
    K, Dk, L, n_chunks, sbc,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr, VEC: tl.constexpr,  # see `_n1_hints`
    FAST: tl.constexpr,  # approximate division (compiled kernels): `_div`
    PREFETCH: tl.constexpr,  # load the chunk before while this one is computed (`n1_bwd_prefetch`)
):
    # N = 1 backward on 2-D tiles. dB / dC: each program writes its channel block's partial sums into
    # dBC (B, K, 2, n_dblk, L) (dB then dC), summed by the launcher: no atomics, and the result is
    # deterministic. dA / dD / ddelta_bias per batch element go to dP (B, 3, K*D), also summed there:
    # one buffer and one reduction each, not five. Each chunk's scans: `_bwd_chunk`.
    pid = tl.program_id(0)
    n_dblk = (Dk + BLOCK_D - 1) // BLOCK_D
    dblk = pid % n_dblk
    bk = pid // n_dblk
    b = bk // K
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dk
    ch = (bk % K) * Dk + offs_d
    Av = tl.load(A_ptr + ch, mask=mask_d, other=0.0)
    A2 = Av * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    L = (L // ALIGN) * ALIGN  # as in the forward: rows and masks known to be aligned
    sbc = (sbc // ALIGN) * ALIGN
    rowid = (b * K * Dk + ch).to(tl.int64)
    row = rowid * L
    bc = bk.to(tl.int64) * sbc
    part_b = (bk.to(tl.int64) * 2 * n_dblk + dblk) * L  # this program's rows of the dB / dC partials
    part_c = part_b + n_dblk * L
    lidx = tl.max_contiguous(tl.arange(0, BLOCK_L), VEC)
    carry = tl.full([BLOCK_D], 0.0, tl.float32)  # a_s g_s at the next chunk's first position s
    dA_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    dD_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    dbias_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    if PREFETCH:  # the last chunk's loads, in their stored dtypes (as the forward's prefetch)
        offs_l = (n_chunks - 1) * BLOCK_L + lidx
        m2 = mask_d[:, None] & (offs_l < L)[None, :]
        ptr = row[:, None] + offs_l[None, :]
        nu, ndy = tl.load(u_ptr + ptr, mask=m2, other=0.0), tl.load(dy_ptr + ptr, mask=m2, other=0.0)
        ndt = tl.load(dt_ptr + ptr, mask=m2, other=0.0)
        nB = tl.load(B_ptr + bc + offs_l, mask=offs_l < L, other=0.0)
        nC = tl.load(C_ptr + bc + offs_l, mask=offs_l < L, other=0.0)
        nh0 = tl.load(hs_ptr + rowid * n_chunks + n_chunks - 1, mask=mask_d, other=0.0)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        offs_l = c * BLOCK_L + lidx
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        ptr = row[:, None] + offs_l[None, :]
        if PREFETCH:  # this chunk's values were loaded during the last one; issue the chunk before's now
            u, dy, dt_raw = nu.to(tl.float32), ndy.to(tl.float32), ndt.to(tl.float32)
            Bv, Cv, h0 = nB.to(tl.float32), nC.to(tl.float32), nh0
            mp = mask_d[:, None] & (c > 0)
            nu = tl.load(u_ptr + ptr - BLOCK_L, mask=mp, other=0.0)
            ndy = tl.load(dy_ptr + ptr - BLOCK_L, mask=mp, other=0.0)
            ndt = tl.load(dt_ptr + ptr - BLOCK_L, mask=mp, other=0.0)
            nB = tl.load(B_ptr + bc + offs_l - BLOCK_L, mask=c > 0, other=0.0)
            nC = tl.load(C_ptr + bc + offs_l - BLOCK_L, mask=c > 0, other=0.0)
            nh0 = tl.load(hs_ptr + rowid * n_chunks + c - 1, mask=mask_d & (c > 0), other=0.0)
        else:
            u = tl.load(u_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
            dt_raw = tl.load(dt_ptr + ptr, mask=m2, other=0.0).to(tl.float32)
            Bv = tl.load(B_ptr + bc + offs_l, mask=mask_l, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + bc + offs_l, mask=mask_l, other=0.0).to(tl.float32)
            h0 = tl.load(hs_ptr + rowid * n_chunks + c, mask=mask_d, other=0.0)  # the state entering the chunk
        if HAS_BIAS:
            dt_raw = dt_raw + bias[:, None]
        dt = dt_raw
        if SOFTPLUS:
            dt, z = _softplus(dt_raw, FAST)
        dt = tl.where(m2, dt, 0.0)
        # recompute the states of this chunk from its entry state
        a = tl.exp2(dt * A2[:, None])
        dtu = dt * u
        hh, g, carry, gah = _bwd_chunk(a, dtu * Bv[None, :], Cv, dy, h0, carry, lidx, BLOCK_D, BLOCK_L)
        tl.store(dBC_ptr + part_c + offs_l, tl.reduce(hh * dy, 0, _add), mask=mask_l)
        tl.store(dBC_ptr + part_b + offs_l, tl.reduce(g * dtu, 0, _add), mask=mask_l)
        gB = g * Bv[None, :]
        ddt = gB * u + gah * Av[:, None]
        dA_acc += tl.reduce(gah * dt, 1, _add)
        du = gB * dt
        if HAS_D:
            du = du + Dv[:, None] * dy
            dD_acc += tl.reduce(dy * u, 1, _add)
        if SOFTPLUS:  # d softplus / dx = sigmoid(x) = 1 / (1 + z) for x >= 0, z / (1 + z) below
            ddt = ddt * _div(tl.where(dt_raw >= 0.0, 1.0, z), 1.0 + z, FAST)
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.reduce(ddt, 1, _add)
        tl.store(du_ptr + ptr, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + ptr, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
    kd = K * Dk
    pp = b.to(tl.int64) * 3 * kd + ch  # dP[b, 0, ch]
    tl.store(dP_ptr + pp, dA_acc, mask=mask_d)
    if HAS_D:
        tl.store(dP_ptr + pp + kd, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dP_ptr + pp + 2 * kd, dbias_acc, mask=mask_d)


_POISON = False  # tests: fill outputs with NaN before launch to prove every element is written


def _alloc(shape, dtype, device):
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _prepare(u, delta, A, B, C, D, delta_bias):
    """Check shapes / dtypes / devices, make the tensors contiguous; return them with (batch, K, Dk, N, L)."""
    batch, k, dk, n, L = _check_shapes(u, delta, A, B, C, D, delta_bias)
    if L < 1 or batch < 1 or dk < 1:
        raise ValueError(f"empty scan: u is {tuple(u.shape)}")
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C)):
        if t.dtype not in _FLOATS:
            raise ValueError(f"triton scan: {name} must be fp32/fp16/bf16, got {t.dtype} (fp64: use backend='torch')")
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.dtype != torch.float32:
            raise ValueError(f"triton scan: {name} must be fp32, got {t.dtype}")
    for t in (delta, A, B, C, D, delta_bias):
        if t is not None and t.device != u.device:
            raise ValueError(f"all scan inputs must be on {u.device}; found one on {t.device}")
    ts = [t.contiguous() if t is not None else None for t in (u, delta, A, D, delta_bias)]
    if not (_use_n1(n) and _rows_ok(B, C, k)):
        B, C = B.contiguous(), C.contiguous()
    ts[3:3] = [B, C]
    return ts, (batch, k, dk, n, L)


def _rows_ok(B, C, k: int) -> bool:
    """Can the N = 1 kernels read B and C as they are? Their rows (b, k) must be evenly strided, with
    contiguous positions: e.g. the B / C rows of SS2D's projections, (B, K, R + 2N, L)[:, :, R:R+1]."""
    return (B.stride() == C.stride() and B.stride(3) == 1 and B.stride(0) == k * B.stride(1)
            and B.stride(1) >= B.shape[3])


def _scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_fp32: bool, states: bool = True):
    """Launch the forward kernel. Returns y (B, K*D, L) (fp32 or u.dtype) and hs (B, K*D, N, n_saved) fp32,
    the states entering each of the backward's chunks (None when not `states`: nothing to differentiate)."""
    (u, delta, A, B, C, D, delta_bias), (batch, k, dk, n, L) = _prepare(u, delta, A, B, C, D, delta_bias)
    bd, bn, bl, warps = _blocks(L, n, dk, backward=False)
    n_chunks = cdiv(L, bl)
    save_every = _blocks(L, n, dk, backward=True)[2]  # the backward's chunk: it reads these states
    n_saved = cdiv(L, save_every)
    y = _alloc(u.shape, torch.float32 if out_fp32 else u.dtype, u.device)
    hs = _alloc((batch, k * dk, n, n_saved), torch.float32, u.device) if states else None
    grid = (batch * k * cdiv(dk, bd),)
    args = (u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, y,
            hs if states else y, k, dk, L, n_chunks)
    flags = dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                 SAVE_STATES=states)
    if _use_n1(n):
        _kernel(_scan_fwd_n1_kernel)[grid](*args, n_saved, B.stride(1), **flags, BLOCK_D=bd, BLOCK_L=bl,
                                           SAVE_EVERY=save_every, **_n1_hints(L, B.stride(1), bl, backward=False),
                                           num_warps=warps)
    else:
        assert n_saved == n_chunks
        _kernel(_scan_fwd_kernel)[grid](*args, N=n, **flags, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=warps)
    return y, hs


def _scan_bwd_parts(dy, u, delta, A, B, C, D, delta_bias, hs, delta_softplus: bool):
    """Launch the backward kernel. Returns (du, ddelta, dA, dBC, dD, ddelta_bias):
    du / ddelta in u's / delta's shape and dtype; dA (K*D, N) fp32; dBC (B, K, 2N, L), dB's rows then dC's,
    in B's dtype (fp32 when B and C differ in dtype); dD / ddelta_bias (K*D,) fp32 (zeros when D / delta_bias
    is None). dA, dD and ddelta_bias may be views of one buffer: callers that need separate tensors use
    `_scan_bwd`."""
    (u, delta, A, B, C, D, delta_bias), (batch, k, dk, n, L) = _prepare(u, delta, A, B, C, D, delta_bias)
    if dy.shape != u.shape:
        raise ValueError(f"dy must be {tuple(u.shape)}; got {tuple(dy.shape)}")
    dy = dy.contiguous()
    hs = hs.contiguous()
    bd, bn, bl, warps = _blocks(L, n, dk, backward=True)
    n_chunks = cdiv(L, bl)
    if hs.shape != (batch, k * dk, n, n_chunks):
        raise ValueError(f"saved states {tuple(hs.shape)} do not match the chunking (..., {n_chunks}): "
                         "forward and backward ran under different scan_config")
    dev = u.device
    du = _alloc(u.shape, u.dtype, dev)
    ddelta = _alloc(delta.shape, delta.dtype, dev)
    n_dblk = cdiv(dk, bd)
    grid = (batch * k * n_dblk,)
    flags = dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus))
    ins = (u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, dy, hs)
    if _use_n1(n):
        dBC_p = _alloc((batch, k, 2, n_dblk, L), torch.float32, dev)  # per-channel-block partials
        dP = _alloc((batch, 3, k * dk), torch.float32, dev)  # per-batch dA, dD, ddelta_bias
        _kernel(_scan_bwd_n1_kernel)[grid](*ins, du, ddelta, dBC_p, dP, k, dk, L, n_chunks, B.stride(1), **flags,
                                           BLOCK_D=bd, BLOCK_L=bl, **_n1_hints(L, B.stride(1), bl),
                                           PREFETCH=_n1_bwd_prefetch(bl), num_warps=warps)
        dBC = dBC_p.sum(3)  # (B, K, 2, L) = (B, K, 2N, L)
        dA, dD, dbias = dP.sum(0).unbind(0)
        dA = dA.view(k * dk, 1)
    else:  # atomics accumulate dB / dC into zeros; dA / dD / ddelta_bias per batch element
        dB = torch.zeros(B.shape, dtype=torch.float32, device=dev)
        dC = torch.zeros(C.shape, dtype=torch.float32, device=dev)
        dA_p = _alloc((batch, k * dk, n), torch.float32, dev)
        dD_p = _alloc((batch, k * dk), torch.float32, dev)
        dbias_p = _alloc((batch, k * dk), torch.float32, dev)
        _kernel(_scan_bwd_kernel)[grid](*ins, du, ddelta, dB, dC, dA_p, dD_p, dbias_p, k, dk, L, n_chunks, N=n,
                                        **flags, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=warps)
        dBC = torch.cat([dB, dC], 2)
        dA, dD, dbias = dA_p.sum(0), dD_p.sum(0), dbias_p.sum(0)
    if B.dtype == C.dtype:
        dBC = dBC.to(B.dtype)
    if D is None:
        dD = torch.zeros(k * dk, dtype=torch.float32, device=dev)
    if delta_bias is None:
        dbias = torch.zeros(k * dk, dtype=torch.float32, device=dev)
    return du, ddelta, dA, dBC, dD, dbias


def _scan_bwd(dy, u, delta, A, B, C, D, delta_bias, hs, delta_softplus: bool):
    """`_scan_bwd_parts` as seven separate tensors (du, ddelta, dA, dB, dC, dD, ddelta_bias) in the inputs'
    shapes and dtypes (dD / ddelta_bias (K*D,) fp32 zeros when D / delta_bias is None): a custom op's outputs
    may not alias one another."""
    du, ddelta, dA, dBC, dD, dbias = _scan_bwd_parts(dy, u, delta, A, B, C, D, delta_bias, hs, delta_softplus)
    n = B.shape[2]
    return (du, ddelta, dA.clone(), dBC[:, :, :n].to(B.dtype).contiguous(), dBC[:, :, n:].to(C.dtype).contiguous(),
            dD.clone(), dbias.clone())


# ---------------------------------------------------------------------------------------------
# Custom ops (one node under torch.jit.trace, traced through by torch.compile) + autograd.
# ---------------------------------------------------------------------------------------------
# Plain annotations (no `schema=`): torch 2.11's triton_op infers the schema and takes no schema argument.
@torch.library.triton_op("vmbench::selective_scan_triton", mutates_args=())
def _fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
            out_fp32: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32)


@torch.library.triton_op("vmbench::selective_scan_triton_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
            C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
            out_fp32: bool, hs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor, torch.Tensor, torch.Tensor]:
    return _scan_bwd(dy, u, delta, A, B, C, D, delta_bias, hs, delta_softplus)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32 = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    ctx.flags = (delta_softplus, out_fp32)


def _grads(ctx, g):
    """The seven gradients `g` of the backward launcher as autograd returns them (None for absent D / bias)."""
    D, delta_bias = ctx.saved_tensors[5:7]
    return (*g[:5], g[5] if D is not None else None, g[6] if delta_bias is not None else None, None, None)


def _backward(ctx, dy, _dhs):
    u, delta, A, B, C, D, delta_bias, hs = ctx.saved_tensors
    return _grads(ctx, torch.ops.vmbench.selective_scan_triton_bwd(dy, u, delta, A, B, C, D, delta_bias,
                                                                   *ctx.flags, hs))


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _ScanFn(torch.autograd.Function):
    """Eager path: the same launchers as the custom ops, without the dispatcher round trip."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32):
        with direct_launch():
            y, hs = _scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, hs)
        ctx.flags = (delta_softplus, out_fp32)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, hs = ctx.saved_tensors
        with direct_launch():
            du, ddelta, dA, dBC, dD, dbias = _scan_bwd_parts(dy, u, delta, A, B, C, D, delta_bias, hs, ctx.flags[0])
        n = B.shape[2]  # eager autograd takes views: no copies
        return _grads(ctx, (du, ddelta, dA, dBC[:, :, :n].to(B.dtype), dBC[:, :, n:].to(C.dtype), dD, dbias))


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out_fp32=True):
    """Selective scan on Triton; same arguments, shapes and dtypes as `selective_scan_ref`.

    Args:
        u, delta:   (B, K*D, L) fp32 / fp16 / bf16.
        A:          (K*D, N) fp32.
        B, C:       (B, K, N, L) fp32 / fp16 / bf16.
        D, delta_bias: (K*D,) fp32 or None.
    Returns:
        y: (B, K*D, L), fp32 if out_fp32 else u.dtype. Differentiable in every tensor input.
    """
    if graph_capture():
        return torch.ops.vmbench.selective_scan_triton(u, delta, A, B, C, D, delta_bias,
                                                       bool(delta_softplus), bool(out_fp32))[0]
    if not needs_grad(u, delta, A, B, C, D, delta_bias):  # inference: no autograd node, no saved states
        with direct_launch():
            return _scan_fwd(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), bool(out_fp32), states=False)[0]
    return _ScanFn.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), bool(out_fp32))
