"""The SS2D scan without directional copies: forward and backward read the four directions straight from the map.

    p      = x @ xw                            (B, H, W, K*C)   x_proj on the map (as `_ss2d_mapwise`)
    delta  = bmm(p_k, wdt_k^T)                 (K, B, H*W, D)   dt_proj per direction on the map ("gemm"),
                                                                or formed in the scan by a tensor-core dot ("dot")
    ys[k]  = scan of direction k, each step t read at its map position pos_k(t) and written back there
    y      = sum_k ys[k]                       (B, H, W, D)     the merge: a sum of four aligned maps

The composition in kernels/_ss2d_recompute.py (`_forward`) cross-scans x into a (B, K, D, L) copy, runs dt_proj on
the cross-scanned projections and cross-merges the scan's (B, K, D, L) output with transposes. Here no tensor is in
direction order: a program owns one image, one direction and BLOCK_D channels, walks that direction's positions in
chunks, and gathers each chunk's [BLOCK_D, BLOCK_L] tile from the channels-last maps (channels contiguous). The
four directions of one (image, channel block) are neighbours in the grid, so x's tile is read from HBM about once.
`MAP_CONFIG` holds the tile, the delta form and the dtype of the four maps (benchmarks/NOTES-ss2d.md).

The backward (`_scan_bwd_map_kernel`) is the same program walking its chunks from the last: it recomputes each
chunk's states from the state the forward saved at its start, reads the gradient of y in place (the four
directions read the same map) and writes du and ddelta on direction k's map; dx is their 4-way sum, and dt_proj's
adjoint and weight gradient are batched GEMMs on the map (`map_backward`; on large maps the weight gradient's copies
p's C columns into direction order). Nothing in direction order is saved: the forward keeps x, p and the chunk
states.

Where `takes_map` says so (the default `USE_MAP` and MAP_CONFIG's limits), `ss2d_scan_recompute` takes
`ss2d_map_forward` for calls that need no gradient (compiled: the registered op `vmbench::ss2d_map_scan`, the 4-way
sum left to Inductor next to out_norm), and its autograd.Function / registered ops run `map_train_forward` and
`map_backward` for calls that do. `ss2d_map_forward_ref` is the plain-torch twin of both (same signature;
differentiable).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from ._backend import cdiv, direct_launch, graph_capture, next_pow2, triton_interpret
from .cross_scan import cross_merge_ref, cross_scan_diag_ref, cross_scan_ref
from .selective_scan import selective_scan_ref
from ._scan_helpers import _Helper, _add, _bwd_chunk, _combine, _div, _kernel, _map_start, _softplus
from ._ss2d_steps_triton import STEPS, steps_scan_launch

__all__ = ["ss2d_map_forward", "ss2d_map_forward_ref", "map_train_forward", "map_backward", "ss2d_map_delta",
           "map_scan_launch", "map_scan_bwd_launch", "variant_config", "variant_name", "train_variant", "takes_map",
           "dot_rows", "infer_variant", "MAP_CONFIG", "USE_MAP", "VARIANTS"]

# Measured on an H200 (benchmarks/RESULTS.md, thirteenth pass): the forward's tile 32 x 16 with one warp was the
# fastest, or within 4 % of it, at every stage for both delta forms; "dot-input" (delta formed by a tensor-core dot
# in the scan, the four maps in x's dtype as the official kernel writes its output; the sum still in fp32) is the
# variant timed in the whole model. The backward's tile has the fewest sm_90 instructions per element
# (benchmarks/ss2d_map.py --sass). VMamba-T, eager, batch 128, 224²: inference 9886 against 8061 img/s on the
# composition, training step 2582 against 2417. `takes_map` applies the two limits:
# - train_max_l: calls with gradients take the map where H*W <= this, every stage at 224². Stage 1's map was slower
#   than the composition (4.7 against 3.8 ms at batch 128, thirteenth pass) until the twenty-first pass's backward
#   (3.50 against 4.02 ms with gemm-input, see train_variants);
# - min_programs: a program walks a whole direction for one image and BLOCK_D channels, so a small batch of large
#   maps has few of them (1024² at batch 4: 48 at stage 1, where the composition runs 192). The map was timed from
#   1536 programs up (stage 1 at batch 128); calls with fewer than min_programs stay on the composition.
# bwd_prefetch_l: the backward loads the chunk before while it computes one where H*W is at least this (stages 2 and
#   3 at 224²: their map scan forward + backward 4 % / 3.5 % faster on an H100; stage 4's 49 positions, 4 chunks,
#   were 67 % slower with it).
# layout "steps" (variants DELTA-YS-steps, untimed): the forward of kernels/_ss2d_steps_triton.py, steps_block_d
# channels per program.
# train_variants: H*W -> the variant of calls with gradients on maps of that size (others: delta and ys above).
#   Forward + backward at batch 128 on an H100 (benchmarks/RESULTS.md, twenty-first pass), ms, dot-input against
#   gemm-input: 3.75 / 3.50 at stage 1 (the composition 4.02), 1.61 / 1.79 at stage 2, 0.98 / 0.78 at stage 3,
#   0.83 / 1.17 at stage 4. VMamba-T's training step with these against dot-input at stages 2-4 only (one H100, one
#   process): eager 2442 against 2367 img/s, compiled 2674 against 2608, peak 7.8 against 8.4 GB.
# infer_variants: the same for calls without gradients. The inference forward alone at batch 128 on an H200
#   (RESULTS.md, thirteenth pass), ms, dot-input against gemm-input (its delta GEMM included): 0.765 / 0.705 at
#   stage 1, 0.343 / 0.347 at stage 2, 0.189 / 0.172 at stage 3, 0.225 / 0.104 at stage 4. Stage 1 keeps the
#   in-scan dot: its delta would add 308 MB to an inference call's peak of ~1.0 GB.
MAP_CONFIG = dict(block_d=32, block_l=16, warps=1, delta="dot", ys="input", bwd_block_d=16, bwd_block_l=16,
                  bwd_warps=1, bwd_prefetch_l=196, train_max_l=3136, min_programs=1024, layout="tile",
                  steps_block_d=128, train_variants={3136: "gemm-input", 196: "gemm-input"},
                  infer_variants={196: "gemm-input", 49: "gemm-input"})
USE_MAP = True  # False: every SS2D call on the composition of kernels/_ss2d_recompute.py
# The map scans find a column-major step's map position with tt // H as a float product: (tt + 0.5) * (1 / H) is
# within (tt + 0.5) / H * 2**-21 of its exact value (1 / H rounded within 2 ulp, the product within 1/2), whose
# fraction stays 0.5 / H clear of the next integer while tt < 2**20, so the truncation is exact below MAX_L
# positions (tests/test_ss2d_map.py checks it). Larger maps take the composition.
MAX_L = 1 << 20
# "DELTA-YS[-steps]": the MAP_CONFIG choices of delta, ys (and layout) by name
VARIANTS = ("gemm-fp32", "dot-fp32", "gemm-input", "dot-input", "gemm-fp32-steps", "gemm-input-steps")


def variant_config(name: str) -> dict:
    """The MAP_CONFIG entries that give every map call the variant named "DELTA-YS[-steps]" (one of VARIANTS):
    its delta, ys and layout, and no per-size choices."""
    if name not in VARIANTS:
        raise ValueError(f"unknown map variant {name!r}; choose from {', '.join(VARIANTS)}")
    delta, ys, *layout = name.split("-")
    return dict(delta=delta, ys=ys, layout=layout[0] if layout else "tile", train_variants={}, infer_variants={})


def variant_name() -> str:
    """The variant MAP_CONFIG holds now ("DELTA-YS[-steps]")."""
    return f"{MAP_CONFIG['delta']}-{MAP_CONFIG['ys']}" + ("-steps" if MAP_CONFIG["layout"] == "steps" else "")


def train_variant(x_shape) -> str:
    """The variant ("DELTA-YS[-steps]") of a call with gradients on x (B, H, W, D): MAP_CONFIG's train_variants."""
    return MAP_CONFIG["train_variants"].get(x_shape[1] * x_shape[2]) or variant_name()


def infer_variant(x_shape) -> str:
    """The variant of a call without gradients on x (B, H, W, D): MAP_CONFIG's infer_variants."""
    return MAP_CONFIG["infer_variants"].get(x_shape[1] * x_shape[2]) or variant_name()


def takes_map(x_shape, grad: bool) -> bool:
    """Whether an SS2D call on x (B, H, W, D) takes the map layout: `USE_MAP`, MAP_CONFIG's limits (see there) and
    MAX_L."""
    b, h, w, d = x_shape
    if not USE_MAP or b * 4 * cdiv(d, MAP_CONFIG["block_d"]) < MAP_CONFIG["min_programs"] or h * w >= MAX_L:
        return False
    return not grad or h * w <= MAP_CONFIG["train_max_l"]


def dot_rows(c: int) -> int:
    """CP, the projection rows a delta-forming dot takes: C rounded up to a power of 2, at least 16 (tl.dot's least)."""
    return max(16, next_pow2(c))


def _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev, col, offs_d, mask_d, offs_c, mask_c,
               DELTA_DOT: tl.constexpr):
    # Steps t of direction k: their map positions (row-major; 0 past L) and, in the stored dtypes, the [BLOCK_D,
    # BLOCK_L] tile of x, delta's tile (or, DELTA_DOT, the [CP, BLOCK_L] tile of direction k's projection rows) and
    # the B and C values of each step.
    tt = tl.where(rev, L - 1 - t, t)
    q = ((tt.to(tl.float32) + 0.5) * (1.0 / H)).to(tl.int32)  # tt // H in 4 instructions, not ~20: see MAX_L
    pos = tl.where(t < L, tl.where(col, (tt - q * H) * W + q, tt), 0)
    m2 = mask_d[:, None] & (t < L)[None, :]
    u = tl.load(x_ptr + (img + pos)[None, :] * Dk + offs_d[:, None], mask=m2, other=0.0)
    if DELTA_DOT:
        dt = tl.load(p_ptr + (img + pos)[None, :] * KC + k * C + offs_c[:, None],
                     mask=mask_c[:, None] & (t < L)[None, :], other=0.0)
    else:
        dt = tl.load(dt_ptr + (kdir + img + pos)[None, :] * Dk + offs_d[:, None], mask=m2, other=0.0)
    pr = p_ptr + (img + pos) * KC + k * C + R
    return pos, u, dt, tl.load(pr, mask=t < L, other=0.0), tl.load(pr + 1, mask=t < L, other=0.0)


_map_loads = _Helper(_map_loads)


def _delta(wk, dt, DELTA_DOT: tl.constexpr, DOT_F32: tl.constexpr):
    # A chunk's delta before the bias, fp32 [BLOCK_D, BLOCK_L]: the loaded tile, or (DELTA_DOT) wdt_k @ p_k on tensor
    # cores from the loaded projection rows; DOT_F32: fp32 operands (fp32 x; the interpreter's bf16 dot is wrong).
    if DELTA_DOT:
        if DOT_F32:
            return tl.dot(wk.to(tl.float32), dt.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(wk, dt)
    else:
        return dt.to(tl.float32)


_delta = _Helper(_delta)


def _scan_fwd_map_kernel(
    x_ptr, dt_ptr, w_ptr, p_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr,
    H, W, Dk, KC, C, R, BL, n_chunks, n_saved,  # BL = B * H * W: the stride of one direction in delta / y
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, FAST: tl.constexpr,
    DELTA_DOT: tl.constexpr, CP: tl.constexpr,  # delta formed here: wdt_k (BLOCK_D x C) @ p_k (C x BLOCK_L), C <= CP
    DOT_F32: tl.constexpr,
    SAVE_STATES: tl.constexpr, SAVE_EVERY: tl.constexpr,  # hs (B, K, n_saved, D): the state entering every
):                                                        # SAVE_EVERY steps (the backward's chunks)
    L = H * W
    k, dblk, n_dblk, b, offs_d, mask_d, ch, Av, Dv, bias, rev, col, img, kdir = _map_start(
        A_ptr, D_ptr, bias_ptr, Dk, L, BL, BLOCK_D)
    A2 = Av * 1.4426950408889634
    lidx = tl.arange(0, BLOCK_L)
    h = tl.full([BLOCK_D], 0.0, tl.float32)
    offs_c = tl.arange(0, CP)
    mask_c = offs_c < C
    wk = None
    if DELTA_DOT:  # this program's rows of dt_proj's weight (K, D, C), zero columns past C
        wk = tl.load(w_ptr + ch[:, None] * C + offs_c[None, :], mask=mask_d[:, None] & mask_c[None, :], other=0.0)
    hs_row = (b * 4 + k).to(tl.int64) * n_saved * Dk + offs_d
    if SAVE_STATES:
        tl.store(hs_ptr + hs_row, h, mask=mask_d)  # the state entering step 0
    # chunk 0's loads; in the loop, chunk c + 1's are issued before chunk c's arithmetic (latency overlapped)
    t = lidx
    pos, nu, ndt, nB, nC = _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev, col,
                                      offs_d, mask_d, offs_c, mask_c, DELTA_DOT)
    for c in range(n_chunks):
        dt = _delta(wk, ndt, DELTA_DOT, DOT_F32)
        u, Bv, Cv = nu.to(tl.float32), nB.to(tl.float32), nC.to(tl.float32)
        krow = kdir + img + pos  # this chunk's rows of y
        m2 = mask_d[:, None] & (t < L)[None, :]
        t = t + BLOCK_L  # the next chunk
        pos, nu, ndt, nB, nC = _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev, col,
                                          offs_d, mask_d, offs_c, mask_c, DELTA_DOT)
        dt, _ = _softplus(dt + bias[:, None], FAST)
        dt = tl.where(m2, dt, 0.0)  # padding: a = 1, x = 0, so the state passes through
        a = tl.exp2(dt * A2[:, None])
        xx = dt * u * Bv[None, :]
        sa, sx = tl.associative_scan((a, xx), axis=1, combine_fn=_combine)
        hh = sx + sa * h[:, None]
        y = hh * Cv[None, :] + Dv[:, None] * u
        tl.store(y_ptr + krow[None, :] * Dk + offs_d[:, None], y.to(y_ptr.dtype.element_ty), mask=m2)
        per: tl.constexpr = BLOCK_L // SAVE_EVERY
        if SAVE_STATES:  # the state after step t enters t + 1: picked out of the tile by a row reduction
            for j in tl.static_range(1, per):
                hj = tl.reduce(tl.where((lidx == j * SAVE_EVERY - 1)[None, :], hh, 0.0), 1, _add)
                tl.store(hs_ptr + hs_row + (c * per + j) * Dk, hj, mask=mask_d & (c * BLOCK_L + j * SAVE_EVERY < L))
        h = tl.reduce(tl.where((lidx == BLOCK_L - 1)[None, :], hh, 0.0), 1, _add)
        if SAVE_STATES:
            tl.store(hs_ptr + hs_row + (c + 1) * per * Dk, h, mask=mask_d & ((c + 1) * BLOCK_L < L))


def _scan_bwd_map_kernel(
    x_ptr, dt_ptr, w_ptr, p_ptr, A_ptr, D_ptr, bias_ptr, gy_ptr, hs_ptr,
    dxs_ptr, ddt_ptr, dbc_ptr, dP_ptr,
    H, W, Dk, KC, C, R, BL, n_chunks,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, FAST: tl.constexpr,
    DELTA_DOT: tl.constexpr, CP: tl.constexpr, DOT_F32: tl.constexpr,  # as in the forward
    PREFETCH: tl.constexpr,  # load the chunk before while this one is computed (MAP_CONFIG's bwd_prefetch_l)
):
    # The forward's program (image, direction, BLOCK_D channels) walking its chunks from the last: each chunk's
    # states are recomputed from the saved state entering it and its reverse scan run (`_bwd_chunk`). dy is gy at
    # the step's map position (every direction reads the same gy in place); du and ddelta are written at that
    # position of direction k's map (K, B*L, D); dB / dC (this channel block's partial sums) to dbc
    # (K, n_dblk, 2, B*L); dA / dD / dbias of the image to dP (B, 3, K*D).
    L = H * W
    k, dblk, n_dblk, b, offs_d, mask_d, ch, Av, Dv, bias, rev, col, img, kdir = _map_start(
        A_ptr, D_ptr, bias_ptr, Dk, L, BL, BLOCK_D)
    A2 = Av * 1.4426950408889634
    lidx = tl.arange(0, BLOCK_L)
    offs_c = tl.arange(0, CP)
    mask_c = offs_c < C
    wk = None
    if DELTA_DOT:
        wk = tl.load(w_ptr + ch[:, None] * C + offs_c[None, :], mask=mask_d[:, None] & mask_c[None, :], other=0.0)
    hs_row = (b * 4 + k).to(tl.int64) * n_chunks * Dk + offs_d
    part = ((k * n_dblk + dblk) * 2).to(tl.int64) * BL + img  # this program's dB row of dbc; dC's is BL further
    carry = tl.full([BLOCK_D], 0.0, tl.float32)  # a_s g_s at the next chunk's first step s
    dA_acc = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)  # dA, dD, dbias summed over the chunks' steps, reduced
    dD_acc = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)  # over the steps once, after the loop
    dbias_acc = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
    if PREFETCH:  # the last chunk's loads; in the loop, chunk c - 1's are issued before chunk c's arithmetic
        t = (n_chunks - 1) * BLOCK_L + lidx
        npos, nu, ndt, nB, nC = _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev, col,
                                           offs_d, mask_d, offs_c, mask_c, DELTA_DOT)
        ndy = tl.load(gy_ptr + (img + npos)[None, :] * Dk + offs_d[:, None], mask=mask_d[:, None] & (t < L)[None, :],
                      other=0.0)
        nh0 = tl.load(hs_ptr + hs_row + (n_chunks - 1) * Dk, mask=mask_d, other=0.0)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        t = c * BLOCK_L + lidx
        m2 = mask_d[:, None] & (t < L)[None, :]
        if PREFETCH:  # (chunk 0 loads itself again as "the chunk before": in bounds, never used)
            pos, u, dt_raw, Bv, Cv, dy, h0 = npos, nu, ndt, nB, nC, ndy.to(tl.float32), nh0
            tp = tl.maximum(c - 1, 0) * BLOCK_L + lidx
            npos, nu, ndt, nB, nC = _map_loads(x_ptr, dt_ptr, p_ptr, tp, L, H, W, Dk, KC, C, R, k, img, kdir, rev,
                                               col, offs_d, mask_d, offs_c, mask_c, DELTA_DOT)
            ndy = tl.load(gy_ptr + (img + npos)[None, :] * Dk + offs_d[:, None], mask=mask_d[:, None], other=0.0)
            nh0 = tl.load(hs_ptr + hs_row + tl.maximum(c - 1, 0) * Dk, mask=mask_d, other=0.0)
        else:
            pos, u, dt_raw, Bv, Cv = _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev,
                                                col, offs_d, mask_d, offs_c, mask_c, DELTA_DOT)
            dy = tl.load(gy_ptr + (img + pos)[None, :] * Dk + offs_d[:, None], mask=m2, other=0.0).to(tl.float32)
            h0 = tl.load(hs_ptr + hs_row + c * Dk, mask=mask_d, other=0.0)  # the state entering the chunk
        at = (img + pos)[None, :] * Dk + offs_d[:, None]  # the chunk's [BLOCK_D, BLOCK_L] tile of a (B*L, D) map
        dt_raw = _delta(wk, dt_raw, DELTA_DOT, DOT_F32) + bias[:, None]
        u, Bv, Cv = u.to(tl.float32), Bv.to(tl.float32), Cv.to(tl.float32)
        dt, z = _softplus(dt_raw, FAST)
        dt = tl.where(m2, dt, 0.0)
        a = tl.exp2(dt * A2[:, None])
        dtu = dt * u
        hh, g, carry, gah = _bwd_chunk(a, dtu * Bv[None, :], Cv, dy, h0, carry, lidx, BLOCK_D, BLOCK_L)
        tl.store(dbc_ptr + part + pos, tl.reduce(g * dtu, 0, _add), mask=t < L)
        tl.store(dbc_ptr + part + BL + pos, tl.reduce(hh * dy, 0, _add), mask=t < L)
        gB = g * Bv[None, :]
        ddt = gB * u + gah * Av[:, None]
        dA_acc += gah * dt
        du = gB * dt + Dv[:, None] * dy
        dD_acc += dy * u
        ddt = ddt * _div(tl.where(dt_raw >= 0.0, 1.0, z), 1.0 + z, FAST)  # softplus' = sigmoid
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += ddt
        tl.store(dxs_ptr + kdir * Dk + at, du.to(dxs_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + kdir * Dk + at, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
    pp = b.to(tl.int64) * 12 * Dk + ch  # dP[b, 0, ch]
    tl.store(dP_ptr + pp, tl.reduce(dA_acc, 1, _add), mask=mask_d)
    tl.store(dP_ptr + pp + 4 * Dk, tl.reduce(dD_acc, 1, _add), mask=mask_d)
    tl.store(dP_ptr + pp + 8 * Dk, tl.reduce(dbias_acc, 1, _add), mask=mask_d)


def _sum4_kernel(ys_ptr, y_ptr, N, BLOCK: tl.constexpr):
    # y = ys[0] + ys[1] + ys[2] + ys[3] (fp32 sums, rounded once to y's dtype); ys (4, N) contiguous, any float
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    acc = tl.load(ys_ptr + offs, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(ys_ptr + N + offs, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(ys_ptr + 2 * N + offs, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(ys_ptr + 3 * N + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=m)


def _tiles(d: int, L: int, dot: bool, backward: bool) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of the forward or backward map scan; the backward's BLOCK_L divides the forward's
    (both powers of 2): the forward saves the state entering each backward chunk."""
    bd = min(MAP_CONFIG["bwd_block_d" if backward else "block_d"], next_pow2(d))
    bl = min(MAP_CONFIG["block_l"], max(16, next_pow2(L)))
    if backward:
        bl = min(bl, MAP_CONFIG["bwd_block_l"])
    if dot:  # tl.dot takes no dimension under 16
        bd, bl = max(bd, 16), max(bl, 16)
    return bd, bl


def map_scan_launch(x, delta: Optional[torch.Tensor], wdt, p, A, Ds, bias, c: int, r: int,
                    ys_fp32: bool = True, states: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(ys, hs). ys (K, B*H*W, D), fp32 or (ys_fp32=False) x's dtype: each direction's scan output on the map;
    hs (B, K, n_saved, D) fp32, the state entering each of the backward's chunks (None unless `states`).
    x (B, H, W, D), p (B, H, W, K*C) contiguous; delta (K, B*H*W, D) from `ss2d_map_delta`, or None to form it
    in the scan from p and wdt (K, D, C); A, Ds, bias (K*D,) fp32; B / C of direction k at its rows R, R + 1."""
    b, h, w, d = x.shape
    k, L = wdt.shape[0], h * w
    assert L < MAX_L, (h, w)
    ys = torch.empty((k, b * L, d), dtype=torch.float32 if ys_fp32 else x.dtype, device=x.device)
    dot = delta is None
    save_every = _tiles(d, L, dot, backward=True)[1]
    n_saved = cdiv(L, save_every)
    hs = torch.empty((b, k, n_saved, d), dtype=torch.float32, device=x.device) if states else None
    if MAP_CONFIG["layout"] == "steps" and not dot:
        assert save_every == STEPS, save_every  # the backward's chunk: the states are saved at its start
        steps_scan_launch(x, delta, p, A, Ds, bias, c, r, ys, hs, MAP_CONFIG["steps_block_d"])
        return ys, hs
    bd, bl = _tiles(d, L, dot, backward=False)
    _kernel(_scan_fwd_map_kernel)[(b * cdiv(d, bd) * k,)](
        x, x if dot else delta, wdt.contiguous() if dot else x, p, A.reshape(-1), Ds, bias, ys,
        ys if hs is None else hs,
        h, w, d, k * c, c, r, b * L, cdiv(L, bl), n_saved,
        BLOCK_D=bd, BLOCK_L=bl, FAST=not triton_interpret(), DELTA_DOT=dot, CP=dot_rows(c),
        DOT_F32=triton_interpret() or x.dtype == torch.float32, SAVE_STATES=states, SAVE_EVERY=save_every,
        num_warps=MAP_CONFIG["warps"])
    return ys, hs


def map_scan_bwd_launch(gy, x, delta: Optional[torch.Tensor], wdt, p, A, Ds, bias, hs, c: int, r: int):
    """(dxs, ddelta, dbc, dP): the map scan's backward from gy (B, H, W, D) contiguous and the forward's hs.
    dxs, ddelta (K, B*H*W, D) in x's dtype: direction k's du and ddelta on the map; dbc (K, 2, B*H*W) fp32: dB
    and dC of each direction's projection rows R and R + 1; dP (3, K*D) fp32: dA, dD, dbias. Other arguments
    as `map_scan_launch`'s."""
    b, h, w, d = x.shape
    k, L = wdt.shape[0], h * w
    assert L < MAX_L, (h, w)
    dot = delta is None
    bd, bl = _tiles(d, L, dot, backward=True)
    n_dblk, n_chunks = cdiv(d, bd), cdiv(L, bl)
    assert hs.shape == (b, k, n_chunks, d), (hs.shape, n_chunks)  # saved under the same MAP_CONFIG
    dxs = torch.empty((k, b * L, d), dtype=x.dtype, device=x.device)
    ddelta = torch.empty((k, b * L, d), dtype=x.dtype, device=x.device)
    dbc = torch.empty((k, n_dblk, 2, b * L), dtype=torch.float32, device=x.device)  # per channel block
    dP = torch.empty((b, 3, k * d), dtype=torch.float32, device=x.device)  # per image
    _kernel(_scan_bwd_map_kernel)[(b * n_dblk * k,)](
        x, x if dot else delta, wdt.contiguous() if dot else x, p, A.reshape(-1), Ds, bias, gy, hs,
        dxs, ddelta, dbc, dP, h, w, d, k * c, c, r, b * L, n_chunks,
        BLOCK_D=bd, BLOCK_L=bl, FAST=not triton_interpret(), DELTA_DOT=dot, CP=dot_rows(c),
        DOT_F32=triton_interpret() or x.dtype == torch.float32, PREFETCH=L >= MAP_CONFIG["bwd_prefetch_l"],
        num_warps=MAP_CONFIG["bwd_warps"])
    return dxs, ddelta, dbc.sum(1), dP.sum(0)


def _sum4(ys: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ys[0] + ... + ys[3] in like's shape and dtype (fp32 sums, rounded once): the four maps merged."""
    y = torch.empty_like(like)
    n_el = y.numel()
    _kernel(_sum4_kernel)[(cdiv(n_el, 1024),)](ys, y, n_el, BLOCK=1024, num_warps=4)
    return y


@torch.library.triton_op("vmbench::ss2d_map_scan", mutates_args=())
def _map_scan_op(x: torch.Tensor, delta: Optional[torch.Tensor], wdt: torch.Tensor, p: torch.Tensor,
                 A: torch.Tensor, Ds: torch.Tensor, bias: torch.Tensor, c: int, r: int, ys_fp32: bool) -> torch.Tensor:
    return map_scan_launch(x, delta, wdt, p, A, Ds, bias, c, r, ys_fp32)[0]


def ss2d_map_delta(p: torch.Tensor, wdt: torch.Tensor) -> torch.Tensor:
    """dt_proj of every direction on the map: (K, B*H*W, D) from p (B, H, W, K*C) and wdt (K, D, C)."""
    b, h, w, kc = p.shape
    k, d, c = wdt.shape
    assert kc == k * c, (p.shape, wdt.shape)
    return torch.bmm(_by_direction(p, k), wdt.transpose(1, 2))


def _variant_delta(p: torch.Tensor, wdt: torch.Tensor, variant: str) -> tuple[Optional[torch.Tensor], bool]:
    """(delta, ys_fp32) of a variant: delta from the GEMM, or None where the scan forms it; fp32 maps or not."""
    cfg = variant_config(variant)
    return (None if cfg["delta"] == "dot" else ss2d_map_delta(p, wdt)), cfg["ys"] == "fp32"


def _by_direction(p: torch.Tensor, k: int) -> torch.Tensor:
    """p (B, H, W, K*C) as K matrices (K, B*H*W, C): a strided view, no copy."""
    return p.reshape(-1, k, p.shape[-1] // k).transpose(0, 1)


def ss2d_map_forward(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """y (B, H, W, D) in x's dtype: `_ss2d_recompute._forward(x, p, wdt, A, Ds, bias, r, n)[0]` computed on
    the map (module docstring), for calls that need no gradient. x (B, H, W, D) and p (B, H, W, K*C) contiguous;
    wdt (K, D, C) in x's dtype; A (K*D, 1), Ds and bias (K*D,) fp32; N = 1."""
    _check(x, p, wdt, n)
    c = wdt.shape[2]
    delta, ys_fp32 = _variant_delta(p, wdt, infer_variant(x.shape))  # delta (K, B*L, D) or None
    if graph_capture():  # the merge as torch ops: Inductor fuses the sum into the LayerNorm that follows
        ys = torch.ops.vmbench.ss2d_map_scan(x, delta, wdt, p, A, Ds, bias, c, r, ys_fp32)
        return ys.sum(0, dtype=torch.float32).view(x.shape).to(x.dtype)
    with direct_launch():
        return _sum4(map_scan_launch(x, delta, wdt, p, A, Ds, bias, c, r, ys_fp32)[0], x)


def _check(x, p, wdt, n: int) -> None:
    assert n == 1, "the map-layout scan is written for d_state = 1"
    b, h, w, d = x.shape
    k, _, c = wdt.shape
    assert k == 4 and p.shape == (b, h, w, k * c) and x.is_contiguous() and p.is_contiguous()


def map_train_forward(x, p, wdt, A, Ds, bias, r: int, n: int, variant: str):
    """(y, hs): `ss2d_map_forward`'s y with the variant named (one of VARIANTS) and the states its backward
    reads. Delta is not kept: `map_backward` forms it again."""
    _check(x, p, wdt, n)
    delta, ys_fp32 = _variant_delta(p, wdt, variant)
    ys, hs = map_scan_launch(x, delta, wdt, p, A, Ds, bias, wdt.shape[2], r, ys_fp32, states=True)
    return _sum4(ys, x), hs


def map_backward(gy, x, p, wdt, A, Ds, bias, hs, r: int, n: int, variant: str):
    """(dx, dp, dwdt, dA, dD, dbias) of `map_train_forward`'s y, gy its gradient; dA, dD and dbias may be views
    of one buffer. dx is the scan's part of x's gradient (x_proj's is added by autograd)."""
    b, h, w, d = x.shape
    k, _, c = wdt.shape
    delta = _variant_delta(p, wdt, variant)[0]  # formed again, not saved
    dxs, ddelta, dbc, dP = map_scan_bwd_launch(gy.contiguous(), x, delta, wdt, p, A, Ds, bias, hs, c, r)
    dpk = torch.bmm(ddelta, wdt)  # (K, B*L, C): dt_proj's adjoint, each direction's projection rows
    dpk[:, :, r:r + 2 * n] += dbc.transpose(1, 2).to(dpk.dtype)  # the B and C rows
    dp = dpk.transpose(0, 1).reshape(p.shape)
    dwdt = _weight_grad(ddelta, p, k)  # (K, D, C) fp32
    dA, dD, dbias = dP.unbind(0)
    return _sum4(dxs, x), dp, dwdt.to(wdt.dtype), dA.view(k * d, 1), dD, dbias


# dt_proj's weight gradient sums over all B*H*W positions into a (D, C) matrix per direction: as one batched GEMM,
# cuBLAS gave it 8 thread blocks at stage 1 (0.63 ms for 300 MB of input on an H100). From WGRAD_MIN_M positions up
# it is split into partial sums of at least WGRAD_ROWS positions, at most WGRAD_SPLITS of them per direction, each a
# GEMM of its own in one batched call: the map backward 1.16-1.20x / 1.06-1.07x at stages 1 / 2 (batch 128, 224², two
# H100s, benchmarks/RESULTS.md). Split, stages 3 / 4 ran 0.97-0.99x: they keep one GEMM.
WGRAD_ROWS, WGRAD_SPLITS, WGRAD_MIN_M = 1024, 256, 1 << 16
_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")  # bmm(..., out_dtype=): fp32 output of bf16 / fp16 operands


def _wgrad_splits(m: int) -> int:
    """The number of partial sums of `_weight_grad` over m positions: 1 below WGRAD_MIN_M, else the largest divisor
    of m that leaves each at least WGRAD_ROWS positions, at most WGRAD_SPLITS (1 where none does)."""
    if m < WGRAD_MIN_M:
        return 1
    s = min(m // WGRAD_ROWS, WGRAD_SPLITS)
    while s > 1 and m % s:
        s -= 1
    return max(s, 1)


def _weight_grad(ddelta: torch.Tensor, p: torch.Tensor, k: int) -> torch.Tensor:
    """dt_proj's weight gradient (K, D, C) fp32: sum over positions i of ddelta[k, i]^T p_k[i], from ddelta
    (K, M, D) contiguous and p (B, H, W, K*C), as partial sums over S slices of the M positions (S divides M) in
    fp32 (on CUDA cuBLAS writes them in fp32; on the CPU the operands are cast), then summed."""
    _, m, d = ddelta.shape
    s = _wgrad_splits(m)
    a = ddelta.view(k * s, m // s, d).transpose(1, 2)  # (K*S, D, M/S)
    b = _by_direction(p, k).reshape(k * s, m // s, -1)  # (K*S, M/S, C): for S > 1 a copy in direction order
    if not a.is_cuda:
        part = torch.bmm(a.float(), b.float())
    elif a.dtype == torch.float32 or not _BMM_OUT_DTYPE:
        part = torch.bmm(a, b)  # without out_dtype: each partial sum rounded to the operands' dtype
    else:
        part = torch.bmm(a, b, out_dtype=torch.float32)
    return part.view(k, s, d, -1).sum(1, dtype=torch.float32)


def ss2d_map_forward_ref(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """`ss2d_map_forward` in plain torch, in fp32: the directions gathered (cross_scan_ref), delta from each
    direction's projections, selective_scan_ref, the four outputs merged (cross_merge_ref); y in x's dtype.
    Differentiable: the twin of the map path's gradients too."""
    b, h, w, d = x.shape
    k = wdt.shape[0]
    ps = cross_scan_diag_ref(p.float())  # (B, K, C, L): direction k's own projection rows, in its order
    u = cross_scan_ref(x.float()).reshape(b, k * d, h * w)
    delta = torch.einsum("kdc,bkcl->bkdl", wdt.float(), ps).reshape(b, k * d, h * w)
    ys = selective_scan_ref(u, delta, A, ps[:, :, r:r + n], ps[:, :, r + n:r + 2 * n], Ds, bias, True, True)
    return cross_merge_ref(ys.view(b, k, d, h * w), h, w).to(x.dtype)
