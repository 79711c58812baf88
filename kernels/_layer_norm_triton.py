"""Triton LayerNorm over the last dim (see kernels/layer_norm.py for the twin and the module).

x is seen as R rows of C (channels-last maps: R = B*H*W, C = 96..768 in VMamba-T), many short rows,
so a program owns a [BLOCK_R, BLOCK_C] tile of whole rows (BLOCK_C = next pow2 of C) instead of
one row: enough bytes in flight per program even at C = 96.

forward: one program normalises BLOCK_R rows in registers (two-pass mean / variance in fp32),
    writes y in the requested dtype and the per-row mean and rstd (fp32) for the backward.
backward: a fixed grid of programs walks the row tiles grid-stride (tile t goes to program
    t mod P); each recomputes x_hat from x, mean, rstd, writes
        dx = rstd * (g - x_hat * mean(g * x_hat) - mean(g)),   g = dy * weight,
    and accumulates dy * x_hat and dy per column in registers; each program stores one row of
    the (P, C) fp32 partials of dweight / dbias, which torch sums. No atomics: the result
    depends only on P (a function of R and the SM count), so it is bitwise reproducible run to run.

Rows are addressed through a row stride (the last dim must have stride 1; the launcher copies
otherwise), so row-strided views such as x[..., :C] of a wider buffer read without a copy.

Public entry points (autograd + torch.compile through `torch.library.triton_op`):
    layer_norm_triton(x, weight, bias, eps, out_dtype) -> y (..., C), out_dtype or x.dtype
    layer_norm_compiled(x, weight, bias, eps, out_dtype): for compiled graphs with gradients, the forward in torch
        ops (Inductor fuses it with its neighbours), the backward on this kernel
    layer_norm_fwd_launch / layer_norm_bwd_launch: the raw launches (benchmarks, tests)
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._backend import cdiv, direct_launch, graph_capture, needs_grad, next_pow2, rows_view
from ._cross_scan_triton import _kernel_for, new_buffer
from .layer_norm import TRITON_DTYPES, TRITON_MAX_C

__all__ = ["layer_norm_triton", "layer_norm_compiled", "layer_norm_fwd_launch", "layer_norm_bwd_launch"]

FWD_ELEMS = 4096  # elements per forward program: 32 per thread at 4 warps, ~70 registers (ptxas sm_90) -> 7 resident per SM
BWD_ELEMS = 4096  # elements per backward tile: 16 per thread at 8 warps (x, dy, x_hat, two accumulators: <= 128 registers)
BWD_WAVES = 2  # backward programs per SM: <= 128 registers x 256 threads lets 2 be resident, so the grid is one wave
BWD_MIN_ROWS = 16  # rows per backward program at least: a partial row never costs more than the rows it sums
CPU_PROGRAMS = 3  # interpreter: a few programs, so each walks several tiles (the grid-stride loop is exercised)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _ln_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    R, C, sxr,  # sxr: x's row stride in elements (column stride is 1); y is contiguous (row stride C)
    eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    SAVE_STATS: tl.constexpr,  # write mean / rstd (for a backward)
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)  # int64: R * C may pass 2**31
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < R
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]  # [BLOCK_R, BLOCK_C]
    x = tl.load(x_ptr + rows[:, None] * sxr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C  # [BLOCK_R]
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padding columns stay 0 for the variance
    var = tl.sum(xc * xc, axis=1) / C  # biased, as nn.LayerNorm
    # once per row: the correctly rounded sqrt costs nothing here; eps arrives as fp64 from an Inductor graph
    rstd = 1.0 / tl.sqrt_rn((var + eps).to(tl.float32))
    y = xc * rstd[:, None]
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_B:
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(y_ptr + rows[:, None] * C + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE_STATS:
        tl.store(mean_ptr + rows, mean, mask=rmask)
        tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def _ln_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dwp_ptr, dbp_ptr,
    R, C, sdyr, sxr, n_tiles,  # row strides of dy and x (column stride 1); dx is contiguous
    HAS_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)  # reduced over rows once, after the loop
    db_acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for t in range(pid, n_tiles, nprog):
        rows = (t * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = rows < R
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * sxr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * sdyr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_W:
            g = dy * w[None, :]
        else:
            g = dy
        c1 = tl.sum(xhat * g, axis=1) / C  # [BLOCK_R] mean(g * x_hat)
        c2 = tl.sum(g, axis=1) / C  # [BLOCK_R] mean(g)
        dx = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * C + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(dwp_ptr + pid * C + cols, tl.sum(dw_acc, axis=0), mask=cmask)
    tl.store(dbp_ptr + pid * C + cols, tl.sum(db_acc, axis=0), mask=cmask)


# ----------------------------------------------------------------------------- launchers


def _warps(elems: int, per_thread: int) -> int:
    return max(4, min(16, elems // (32 * per_thread)))


def fwd_config(R: int, C: int) -> Tuple[int, int]:
    """(BLOCK_R, num_warps) of the forward: ~FWD_ELEMS elements per program, <= 32 per thread."""
    block_c = next_pow2(C)
    block_r = max(1, min(FWD_ELEMS // block_c, next_pow2(R)))
    return block_r, _warps(block_r * block_c, 32)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def bwd_config(R: int, C: int, device: torch.device) -> Tuple[int, int, int]:
    """(BLOCK_R, num_warps, programs) of the backward: ~BWD_ELEMS per tile, <= 16 per thread, a fixed grid."""
    block_c = next_pow2(C)
    block_r = max(1, min(BWD_ELEMS // block_c, next_pow2(R)))
    if device.type == "cuda":
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        programs = min(BWD_WAVES * sms, cdiv(R, BWD_MIN_ROWS))
    else:
        programs = CPU_PROGRAMS
    return block_r, _warps(block_r * block_c, 16), programs


def _param(p: Optional[torch.Tensor], c: int, name: str) -> Optional[torch.Tensor]:
    if p is None:
        return None
    if tuple(p.shape) != (c,) or not p.is_floating_point():
        raise ValueError(f"layer_norm: {name} must be a float tensor of shape ({c},); got {p.dtype} {tuple(p.shape)}")
    return p.contiguous()


def _check_x(x: torch.Tensor, what: str = "x") -> int:
    if x.dim() < 1:
        raise ValueError(f"layer_norm: {what} must have at least one dimension")
    if x.dtype not in TRITON_DTYPES:
        raise ValueError(f"layer_norm (triton): {what} dtype {x.dtype} unsupported; use one of {TRITON_DTYPES}")
    c = x.shape[-1]
    if not 0 < c <= TRITON_MAX_C:
        raise ValueError(f"layer_norm (triton): last dim {c} outside 1..{TRITON_MAX_C}")
    return c


def layer_norm_fwd_launch(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                          eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None, config=None,
                          stats: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Launch the forward kernel (no autograd).

    Args:
        x: (..., C) fp32 / bf16 / fp16; last dim stride 1 (copied otherwise), rows evenly strided.
        weight, bias: (C,) float (fp32 in VMamba) or None.
        out_dtype: y's dtype (fp32 / bf16 / fp16), default x.dtype.
        config: optional (BLOCK_R, num_warps) override (benchmark sweeps).
        stats: also return mean and rstd (what the backward needs); False returns None for both.
    Returns:
        y: (..., C) out_dtype, contiguous.
        mean, rstd: (...) fp32, contiguous: per-row mean and 1 / sqrt(var + eps); None unless `stats`.
    """
    c = _check_x(x)
    out_dtype = out_dtype or x.dtype
    if out_dtype not in TRITON_DTYPES:
        raise ValueError(f"layer_norm (triton): out_dtype {out_dtype} unsupported; use one of {TRITON_DTYPES}")
    w, b = _param(weight, c, "weight"), _param(bias, c, "bias")
    x2 = rows_view(x)  # (R, C)
    R = x2.shape[0]
    y = new_buffer(x.shape, out_dtype, x.device)
    mean = new_buffer(x.shape[:-1], torch.float32, x.device) if stats else None
    rstd = new_buffer(x.shape[:-1], torch.float32, x.device) if stats else None
    if R == 0:
        return y, mean, rstd
    block_r, nw = config or fwd_config(R, c)
    grid = (cdiv(R, block_r),)
    _kernel_for(_ln_fwd_kernel, x.device)[grid](
        x2, w if w is not None else x2, b if b is not None else x2, y, mean if stats else y, rstd if stats else y,
        R, c, x2.stride(0), float(eps),
        HAS_W=w is not None, HAS_B=b is not None, BLOCK_R=block_r, BLOCK_C=next_pow2(c), SAVE_STATS=stats,
        num_warps=nw)
    return y, mean, rstd


def layer_norm_bwd_launch(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                          mean: torch.Tensor, rstd: torch.Tensor, config=None
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel (no autograd).

    Args:
        dy: (..., C) cotangent of y, fp32 / bf16 / fp16, any strides.
        x: (..., C) the forward's input; weight: (C,) or None.
        mean, rstd: (...) fp32 from `layer_norm_fwd_launch`.
        config: optional (BLOCK_R, num_warps, programs) override.
    Returns:
        dx: (..., C) x.dtype, contiguous.
        dweight, dbias: (C,) fp32 (sum over rows of dy * x_hat and of dy; computed with or without weight);
            views of one buffer.
    """
    c = _check_x(x)
    _check_x(dy, "dy")
    if dy.shape != x.shape or mean.shape != x.shape[:-1] or rstd.shape != x.shape[:-1]:
        raise ValueError(f"layer_norm backward: dy {tuple(dy.shape)}, mean {tuple(mean.shape)}, "
                         f"rstd {tuple(rstd.shape)} do not match x {tuple(x.shape)}")
    w = _param(weight, c, "weight")
    x2, dy2 = rows_view(x), rows_view(dy)
    mean = mean.reshape(-1).float().contiguous()
    rstd = rstd.reshape(-1).float().contiguous()
    R = x2.shape[0]
    dx = new_buffer(x.shape, x.dtype, x.device)
    if R == 0:
        zero = torch.zeros(c, dtype=torch.float32, device=x.device)
        return dx, zero, zero.clone()
    block_r, nw, programs = config or bwd_config(R, c, x.device)
    n_tiles = cdiv(R, block_r)
    programs = max(1, min(programs, n_tiles))
    part = new_buffer((2, programs, c), torch.float32, x.device)  # per-program partial sums of dweight, dbias
    _kernel_for(_ln_bwd_kernel, x.device)[(programs,)](
        dy2, x2, w if w is not None else x2, mean, rstd, dx, part[0], part[1],
        R, c, dy2.stride(0), x2.stride(0), n_tiles,
        HAS_W=w is not None, BLOCK_R=block_r, BLOCK_C=next_pow2(c), num_warps=nw)
    dw, db = part.sum(1).unbind(0)  # one reduction; two views of one (2, C) buffer
    return dx, dw, db


# ----------------------------------------------------------------------------- custom ops + autograd


@torch.library.triton_op("vmbench::layer_norm_fwd", mutates_args=())
def _ln_fwd_op(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
               out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_fwd_launch(x, weight, bias, eps, out_dtype)


@torch.library.triton_op("vmbench::layer_norm_bwd", mutates_args=())
def _ln_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor,
               rstd: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = layer_norm_bwd_launch(dy, x, weight, mean, rstd)
    return dx, dw, db.clone()  # a custom op's outputs may not share storage


def _save(ctx, x, weight, bias, mean, rstd):
    """What every backward here reads: x, weight and the per-row statistics; bias's dtype for its gradient."""
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _setup_context(ctx, inputs, output):
    x, weight, bias, _eps, _out_dtype = inputs
    _, mean, rstd = output
    _save(ctx, x, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _grads(ctx, weight, g):
    dx, dw, db = g
    dw = dw.to(weight.dtype) if weight is not None else None
    db = db.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return dx, dw, db, None, None


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    return _grads(ctx, weight, torch.ops.vmbench.layer_norm_bwd(dy, x, weight, mean, rstd))


_ln_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _LayerNormFn(torch.autograd.Function):
    """Eager path: the launchers directly, without the dispatcher round trip of the custom ops."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        with direct_launch():
            y, mean, rstd = layer_norm_fwd_launch(x, weight, bias, eps, out_dtype)
        _save(ctx, x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        with direct_launch():
            return _grads(ctx, weight, layer_norm_bwd_launch(dy, x, weight, mean, rstd))


class _InductorForwardFn(torch.autograd.Function):
    """Compiled graphs with gradients: the forward as aten's native_layer_norm in fp32, which Inductor fuses with the
    residual add before it and the cast after it; the backward on `_ln_bwd_kernel` (dx and the weight / bias partial
    sums in one pass over x and dy), in place of Inductor's decomposition, which reduces the weight gradients over
    the rows in kernels of its own."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        f32 = [t.float() if t is not None else None for t in (x, weight, bias)]
        y, mean, rstd = torch.native_layer_norm(f32[0], (x.shape[-1],), f32[1], f32[2], eps)
        stats = x.shape[:-1]
        _save(ctx, x, weight, bias, mean.view(stats), rstd.view(stats))
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, dy):
        return _backward(ctx, dy, None, None)  # the registered op's backward


def layer_norm_compiled(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                        out_dtype: torch.dtype) -> torch.Tensor:
    """`layer_norm_triton`'s function for code that torch.compile traces with gradients: the forward is Inductor's,
    the backward the registered op `vmbench::layer_norm_bwd` (kernels/layer_norm.py's `USE_KERNEL`). Compiled on a
    GPU with an fp32 `out_dtype` it gave zero gradients upstream (cause not found; right on the CPU), so
    `LayerNorm` calls it for bf16 / fp16 outputs only."""
    _check_x(x)
    return _InductorForwardFn.apply(x, weight, bias, float(eps), out_dtype)


def layer_norm_triton(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                      eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Triton twin of `layer_norm_ref` (differentiable in x, weight, bias; traceable by torch.compile).

    Args:
        x: (..., C) fp32 / bf16 / fp16, C <= 16384; any strides (copied unless the last dim has stride 1).
        weight, bias: (C,) fp32 (any float dtype) or None.
        eps: added to the variance.
        out_dtype: y's dtype (fp32 / bf16 / fp16), default x.dtype.
    Returns:
        y: (..., C) out_dtype, contiguous. Gradients: dx in x.dtype, dweight / dbias in their dtypes.
    """
    _check_x(x)
    if graph_capture():
        return torch.ops.vmbench.layer_norm_fwd(x, weight, bias, float(eps), out_dtype or x.dtype)[0]
    if not needs_grad(x, weight, bias):  # inference: no autograd node, no mean / rstd
        with direct_launch():
            return layer_norm_fwd_launch(x, weight, bias, eps, out_dtype, stats=False)[0]
    return _LayerNormFn.apply(x, weight, bias, float(eps), out_dtype or x.dtype)
