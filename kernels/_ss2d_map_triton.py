"""SS2D inference forward without directional copies: the scan reads its four directions straight from the map.

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

No backward: `ss2d_scan_recompute` takes `ss2d_map_forward` for calls that need no gradient while `USE_MAP` is set
(eager; compiled as the registered op `vmbench::ss2d_map_scan`, the 4-way sum left to Inductor next to out_norm).
Off by default until it is timed on a GPU. `ss2d_map_forward` has the arguments and result of
`_ss2d_recompute._forward(...)[0]`; `ss2d_map_forward_ref` is its plain-torch twin.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from ._backend import cdiv, direct_launch, graph_capture, next_pow2, triton_interpret
from .cross_scan import cross_merge_ref, cross_scan_diag_ref, cross_scan_ref
from .selective_scan import selective_scan_ref
from ._selective_scan_triton import _Helper, _add, _combine, _kernel, _softplus

__all__ = ["ss2d_map_forward", "ss2d_map_forward_ref", "ss2d_map_delta", "map_scan_launch", "variant_config",
           "dot_rows", "MAP_CONFIG", "USE_MAP", "VARIANTS"]

# The scan's tile and warps (not yet swept on a GPU); delta: "gemm" (a bmm on the map, read by the scan) or "dot"
# (formed in the scan, a tensor-core dot per chunk); ys: the four maps in "fp32" or in x's dtype ("input", as the
# official kernel writes its output; the sum is still taken in fp32).
MAP_CONFIG = dict(block_d=32, block_l=32, warps=4, delta="gemm", ys="fp32")
USE_MAP = False  # opt-in while it is measured: see the module docstring
VARIANTS = ("gemm-fp32", "dot-fp32", "gemm-input", "dot-input")  # "DELTA-YS": the two MAP_CONFIG choices by name


def variant_config(name: str) -> dict:
    """The MAP_CONFIG entries of a variant named "DELTA-YS" (one of VARIANTS)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown map variant {name!r}; choose from {', '.join(VARIANTS)}")
    delta, ys = name.split("-")
    return dict(delta=delta, ys=ys)


def dot_rows(c: int) -> int:
    """CP, the projection rows a delta-forming dot takes: C rounded up to a power of 2, at least 16 (tl.dot's least)."""
    return max(16, next_pow2(c))


def _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev, col, offs_d, mask_d, offs_c, mask_c,
               DELTA_DOT: tl.constexpr):
    # Steps t of direction k: their map positions (row-major; 0 past L) and, in the stored dtypes, the [BLOCK_D,
    # BLOCK_L] tile of x, delta's tile (or, DELTA_DOT, the [CP, BLOCK_L] tile of direction k's projection rows) and
    # the B and C values of each step.
    tt = tl.where(rev, L - 1 - t, t)
    pos = tl.where(t < L, tl.where(col, (tt % H) * W + tt // H, tt), 0)
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


def _scan_fwd_map_kernel(
    x_ptr, dt_ptr, w_ptr, p_ptr, A_ptr, D_ptr, bias_ptr, y_ptr,
    H, W, Dk, KC, C, R, BL, n_chunks,  # BL = B * H * W: the stride of one direction in delta / y
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, FAST: tl.constexpr,
    DELTA_DOT: tl.constexpr, CP: tl.constexpr,  # delta formed here: wdt_k (BLOCK_D x C) @ p_k (C x BLOCK_L), C <= CP
    DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    k = pid % 4  # the four directions of one (image, channel block) are neighbours: x's tile stays in L2
    rest = pid // 4
    n_dblk = (Dk + BLOCK_D - 1) // BLOCK_D
    dblk = rest % n_dblk
    b = rest // n_dblk
    L = H * W
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dk
    ch = k * Dk + offs_d  # channel index in K*D
    A2 = tl.load(A_ptr + ch, mask=mask_d, other=0.0) * 1.4426950408889634
    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    rev = k >= 2
    col = (k % 2) == 1
    img = b.to(tl.int64) * L  # the image's first row of the (B*L, ...) maps
    kdir = k.to(tl.int64) * BL  # direction k's first row of delta / y
    lidx = tl.arange(0, BLOCK_L)
    h = tl.full([BLOCK_D], 0.0, tl.float32)
    offs_c = tl.arange(0, CP)
    mask_c = offs_c < C
    if DELTA_DOT:  # this program's rows of dt_proj's weight (K, D, C), zero columns past C
        wk = tl.load(w_ptr + ch[:, None] * C + offs_c[None, :], mask=mask_d[:, None] & mask_c[None, :], other=0.0)
    # chunk 0's loads; in the loop, chunk c + 1's are issued before chunk c's arithmetic (latency overlapped)
    t = lidx
    pos, nu, ndt, nB, nC = _map_loads(x_ptr, dt_ptr, p_ptr, t, L, H, W, Dk, KC, C, R, k, img, kdir, rev, col,
                                      offs_d, mask_d, offs_c, mask_c, DELTA_DOT)
    for c in range(n_chunks):
        if DELTA_DOT:  # [BLOCK_D, BLOCK_L] fp32. DOT_F32: fp32 operands (fp32 x; the interpreter's bf16 dot is wrong)
            if DOT_F32:
                dt = tl.dot(wk.to(tl.float32), ndt.to(tl.float32), input_precision="ieee")
            else:
                dt = tl.dot(wk, ndt)
        else:
            dt = ndt.to(tl.float32)
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
        h = tl.reduce(tl.where((lidx == BLOCK_L - 1)[None, :], hh, 0.0), 1, _add)


def _sum4_kernel(ys_ptr, y_ptr, N, BLOCK: tl.constexpr):
    # y = ys[0] + ys[1] + ys[2] + ys[3] (fp32 sums, rounded once to y's dtype); ys (4, N) contiguous, any float
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    acc = tl.load(ys_ptr + offs, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(ys_ptr + N + offs, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(ys_ptr + 2 * N + offs, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(ys_ptr + 3 * N + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=m)


def map_scan_launch(x, delta: Optional[torch.Tensor], wdt, p, A, Ds, bias, c: int, r: int,
                    ys_fp32: bool = True) -> torch.Tensor:
    """ys (K, B*H*W, D), fp32 or (ys_fp32=False) x's dtype: each direction's scan output on the map.
    x (B, H, W, D), p (B, H, W, K*C) contiguous; delta (K, B*H*W, D) from `ss2d_map_delta`, or None to form it
    in the scan from p and wdt (K, D, C); A, Ds, bias (K*D,) fp32; B / C of direction k at its rows R, R + 1."""
    b, h, w, d = x.shape
    k, L = wdt.shape[0], h * w
    ys = torch.empty((k, b * L, d), dtype=torch.float32 if ys_fp32 else x.dtype, device=x.device)
    dot = delta is None
    bd = min(MAP_CONFIG["block_d"], next_pow2(d))
    bl = min(MAP_CONFIG["block_l"], max(16, next_pow2(L)))
    if dot:  # tl.dot takes no dimension under 16
        bd, bl = max(bd, 16), max(bl, 16)
    _kernel(_scan_fwd_map_kernel)[(b * cdiv(d, bd) * k,)](
        x, x if dot else delta, wdt.contiguous() if dot else x, p, A.reshape(-1), Ds, bias, ys,
        h, w, d, k * c, c, r, b * L, cdiv(L, bl),
        BLOCK_D=bd, BLOCK_L=bl, FAST=not triton_interpret(), DELTA_DOT=dot, CP=dot_rows(c),
        DOT_F32=triton_interpret() or x.dtype == torch.float32,
        num_warps=MAP_CONFIG["warps"])
    return ys


@torch.library.triton_op("vmbench::ss2d_map_scan", mutates_args=())
def _map_scan_op(x: torch.Tensor, delta: Optional[torch.Tensor], wdt: torch.Tensor, p: torch.Tensor,
                 A: torch.Tensor, Ds: torch.Tensor, bias: torch.Tensor, c: int, r: int, ys_fp32: bool) -> torch.Tensor:
    return map_scan_launch(x, delta, wdt, p, A, Ds, bias, c, r, ys_fp32)


def ss2d_map_delta(p: torch.Tensor, wdt: torch.Tensor) -> torch.Tensor:
    """dt_proj of every direction on the map: (K, B*H*W, D) from p (B, H, W, K*C) and wdt (K, D, C)."""
    b, h, w, kc = p.shape
    k, d, c = wdt.shape
    assert kc == k * c, (p.shape, wdt.shape)
    return torch.bmm(p.reshape(b * h * w, k, c).transpose(0, 1), wdt.transpose(1, 2))


def ss2d_map_forward(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """y (B, H, W, D) in x's dtype: `_ss2d_recompute._forward(x, p, wdt, A, Ds, bias, r, n)[0]` computed on
    the map (module docstring). x (B, H, W, D) and p (B, H, W, K*C) contiguous; wdt (K, D, C) in x's dtype;
    A (K*D, 1), Ds and bias (K*D,) fp32; N = 1."""
    assert n == 1, "the map-layout scan is written for d_state = 1"
    b, h, w, d = x.shape
    k, _, c = wdt.shape
    assert k == 4 and p.shape == (b, h, w, k * c) and x.is_contiguous() and p.is_contiguous()
    delta = None if MAP_CONFIG["delta"] == "dot" else ss2d_map_delta(p, wdt)  # (K, B*L, D)
    ys_fp32 = MAP_CONFIG["ys"] == "fp32"
    if graph_capture():  # the merge as torch ops: Inductor fuses the sum into the LayerNorm that follows
        ys = torch.ops.vmbench.ss2d_map_scan(x, delta, wdt, p, A, Ds, bias, c, r, ys_fp32)
        return ys.sum(0, dtype=torch.float32).view(b, h, w, d).to(x.dtype)
    y = torch.empty_like(x)
    with direct_launch():
        ys = map_scan_launch(x, delta, wdt, p, A, Ds, bias, c, r, ys_fp32)
        n_el = y.numel()
        _kernel(_sum4_kernel)[(cdiv(n_el, 1024),)](ys, y, n_el, BLOCK=1024, num_warps=4)  # the merge
    return y


def ss2d_map_forward_ref(x, p, wdt, A, Ds, bias, r: int, n: int) -> torch.Tensor:
    """`ss2d_map_forward` in plain torch, in fp32: the directions gathered (cross_scan_ref), delta from each
    direction's projections, selective_scan_ref, the four outputs merged (cross_merge_ref); y in x's dtype."""
    b, h, w, d = x.shape
    k = wdt.shape[0]
    ps = cross_scan_diag_ref(p.float())  # (B, K, C, L): direction k's own projection rows, in its order
    u = cross_scan_ref(x.float()).reshape(b, k * d, h * w)
    delta = torch.einsum("kdc,bkcl->bkdl", wdt.float(), ps).reshape(b, k * d, h * w)
    ys = selective_scan_ref(u, delta, A, ps[:, :, r:r + n], ps[:, :, r + n:r + 2 * n], Ds, bias, True, True)
    return cross_merge_ref(ys.view(b, k, d, h * w), h, w).to(x.dtype)
