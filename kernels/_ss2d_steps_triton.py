"""The map-layout SS2D forward scan with a step's channels across threads and the steps in a loop ("steps" layout).

`_scan_fwd_map_kernel` (kernels/_ss2d_map_triton.py) loads a [BLOCK_D, BLOCK_L] tile of a chunk and scans it with
`tl.associative_scan`; its channel-contiguous layout puts the chunk's positions across threads, so every step of
the scan crosses threads (70-85 sm_90 instructions per element). Here a program (image, direction, BLOCK_D
channels, one warp) walks its direction one step at a time: each thread keeps the state of BLOCK_D / 32 channels,
a step loads x and delta at one map position (channels contiguous) and B / C once, and the state update is a
multiply-add in registers. The map position advances by an add per step (column-major walks wrap to the next
column), not a division. A step's fixed cost (addresses, the B / C loads, masks) is shared by the thread's
channels, so wide channel blocks pay: 67 / 47 / 37 / 31 instructions per element at 1 / 2 / 4 / 8 channels per
thread, with 45-64 registers against the tile's 143-168 (`benchmarks/ss2d_map.py --sass`). Delta comes from the
GEMM on the map (`ss2d_map_delta`).

Entry: `steps_scan_launch`, called by `map_scan_launch` when MAP_CONFIG's layout is "steps" (not the default: it is
untimed on a GPU), which allocates its outputs; the states are saved every STEPS positions (the backward's chunk).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from ._backend import cdiv, next_pow2, triton_interpret
from ._scan_helpers import _kernel, _map_start, _softplus

__all__ = ["steps_scan_launch", "STEPS"]

STEPS = 16  # positions per unrolled loop body; the states are saved at each body's start


def _scan_fwd_steps_kernel(
    x_ptr, dt_ptr, p_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr,
    H, W, Dk, KC, C, R, BL, n_chunks,  # as `_scan_fwd_map_kernel`'s; hs (B, K, n_chunks, D)
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, FAST: tl.constexpr, SAVE_STATES: tl.constexpr,
):
    L = H * W
    k, dblk, n_dblk, b, offs_d, mask_d, ch, Av, Dv, bias, rev, col, img, kdir = _map_start(
        A_ptr, D_ptr, bias_ptr, Dk, L, BL, BLOCK_D)
    A2 = Av * 1.4426950408889634
    hs_row = (b * 4 + k).to(tl.int64) * n_chunks * Dk + offs_d
    # the walk: row-major +-1 per step; column-major +-W, and from a column's end to the next column's start
    step = tl.where(col, W, 1)
    step = tl.where(rev, -step, step)
    wrap = tl.where(rev, L - 1, 1 - L)
    pos = tl.where(rev, L - 1, 0)
    row = 0
    h = tl.full([BLOCK_D], 0.0, tl.float32)
    for c in range(n_chunks):
        if SAVE_STATES:
            tl.store(hs_ptr + hs_row + c * Dk, h, mask=mask_d)  # the state entering the chunk
        for j in tl.static_range(BLOCK_L):
            ok = c * BLOCK_L + j < L
            m = mask_d & ok
            at = (img + pos) * Dk + offs_d
            u = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + kdir * Dk + at, mask=m, other=0.0).to(tl.float32)
            pr = p_ptr + (img + pos) * KC + k * C + R
            Bv = tl.load(pr, mask=ok, other=0.0).to(tl.float32)
            Cv = tl.load(pr + 1, mask=ok, other=0.0).to(tl.float32)
            dt, _ = _softplus(dt + bias, FAST)
            h = tl.where(m, tl.exp2(dt * A2) * h + dt * u * Bv, h)  # past L the state stays
            tl.store(y_ptr + kdir * Dk + at, (h * Cv + Dv * u).to(y_ptr.dtype.element_ty), mask=m)
            row += 1
            end = col & (row == H)
            row = tl.where(end, 0, row)
            pos = tl.where(ok, pos + tl.where(end, wrap + step, step), pos)


def steps_block_d(d: int, block_d: int) -> int:
    """The channel block of a D-channel map: at most block_d, at least one warp's 32 lanes."""
    return max(32, min(block_d, next_pow2(d)))


def steps_scan_launch(x, delta: torch.Tensor, p, A, Ds, bias, c: int, r: int, ys: torch.Tensor,
                      hs: Optional[torch.Tensor], block_d: int) -> None:
    """Fills ys and (where given) hs as `map_scan_launch` describes them, for delta from the GEMM; hs holds the state
    entering every STEPS positions."""
    b, h, w, d = x.shape
    L = h * w
    n_chunks = cdiv(L, STEPS)
    assert hs is None or hs.shape == (b, 4, n_chunks, d), hs.shape
    bd = steps_block_d(d, block_d)
    _kernel(_scan_fwd_steps_kernel)[(b * cdiv(d, bd) * 4,)](
        x, delta, p, A.reshape(-1), Ds, bias, ys, ys if hs is None else hs,
        h, w, d, 4 * c, c, r, b * L, n_chunks,
        BLOCK_D=bd, BLOCK_L=STEPS, FAST=not triton_interpret(), SAVE_STATES=hs is not None, num_warps=1)
