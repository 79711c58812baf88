"""Triton silu(depthwise conv2d) on channels-last maps (twin and dispatcher in kernels/dwconv_silu.py).

A program owns one image row, BLOCK_W positions of it and BLOCK_D channels: it sums the k x k taps of each
position from the map (channels contiguous, so every tap is a row of BLOCK_D-wide vector loads; neighbouring taps
come from L1 / L2, the map from HBM about once), adds the bias, applies SiLU in fp32 and writes the result once.
The backward is torch's: it recomputes the conv (cuDNN), applies SiLU's derivative and calls
aten.convolution_backward, so only x is saved.

Public entry points:
    dwconv_silu_triton(x, weight, bias) -> y (B, H, W, D): differentiable, traceable by torch.compile
    dwconv_silu_launch(x, weight, bias): the raw launch
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._backend import cdiv, direct_launch, launch_or_apply, next_pow2
from ._cross_scan_triton import _kernel_for, new_buffer

__all__ = ["dwconv_silu_triton", "dwconv_silu_launch", "dw_tile", "DW_CONFIG"]

# A program covers a whole row where it can (BLOCK_W = W rounded up to a power of 2, at most 64) and BLOCK_W x
# BLOCK_D = 2048 elements (BLOCK_D at most 128). On an H100 (benchmarks/fusions.py --sweep) that rule's tiles were the
# fastest at each of VMamba-T's stages: 64 x 32 (D = 96, W = 56), 32 x 64, 16 x 128, 8 x 128 (D = 768, W = 7), 15-34 %
# less time alone than the 32 x 32 tile (the one first timed in the whole model).
DW_CONFIG = dict(max_block_w=64, tile=2048, max_block_d=128, warps=4)


def dw_tile(w: int, d: int) -> tuple:
    """(BLOCK_W, BLOCK_D) of DW_CONFIG's rule for rows of w positions and d channels."""
    bw = min(DW_CONFIG["max_block_w"], next_pow2(w))
    return bw, min(DW_CONFIG["max_block_d"], DW_CONFIG["tile"] // bw, next_pow2(d))


@triton.jit
def _dwconv_silu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, D, sxb, sxh, sxw, sxd,  # x's strides in elements; y is (B, H, W, D) contiguous
    KS: tl.constexpr, HAS_B: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    ws = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    acc = tl.zeros([BLOCK_W, BLOCK_D], dtype=tl.float32)
    for i in tl.static_range(KS):
        hh = h + i - (KS - 1) // 2
        row = x_ptr + b * sxb + hh.to(tl.int64) * sxh
        for j in tl.static_range(KS):
            ww = ws + j - (KS - 1) // 2
            m = (ww >= 0) & (ww < W) & (hh >= 0) & (hh < H)
            xv = tl.load(row + ww[:, None] * sxw + ds[None, :] * sxd, mask=m[:, None] & dmask[None, :], other=0.0)
            wv = tl.load(w_ptr + ds * (KS * KS) + (i * KS + j), mask=dmask, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_B:
        acc += tl.load(b_ptr + ds, mask=dmask, other=0.0).to(tl.float32)[None, :]
    y = acc * tl.sigmoid(acc)
    out = y_ptr + ((b * H + h) * W + ws[:, None]) * D + ds[None, :]
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=(ws < W)[:, None] & dmask[None, :])


def dwconv_silu_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       config: Optional[dict] = None) -> torch.Tensor:
    """Launch the kernel (no autograd).

    Args:
        x: (B, H, W, D) bf16 / fp16 / fp32, any strides; weight (D, 1, k, k), bias (D,) or None, in x's dtype.
        config: dict(block_w=, block_d=, warps=), a tile other than DW_CONFIG's rule (benchmarks).
    Returns:
        y: (B, H, W, D) contiguous, x's dtype.
    """
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"dwconv_silu (triton): x, weight, bias must share a dtype; got {x.dtype}, {weight.dtype}, "
                         f"{None if bias is None else bias.dtype}")
    bsz, h, w, d = x.shape
    y = new_buffer((bsz, h, w, d), x.dtype, x.device)
    if y.numel() == 0:
        return y
    if config:
        bw, bd, warps = min(config["block_w"], next_pow2(w)), min(config["block_d"], next_pow2(d)), config["warps"]
    else:
        (bw, bd), warps = dw_tile(w, d), DW_CONFIG["warps"]
    grid = (bsz * h, cdiv(w, bw), cdiv(d, bd))
    wk = weight.contiguous()
    _kernel_for(_dwconv_silu_kernel, x.device)[grid](
        x, wk, bias if bias is not None else wk, y, h, w, d, *x.stride(),
        KS=weight.shape[-1], HAS_B=bias is not None, BLOCK_W=bw, BLOCK_D=bd, num_warps=warps)
    return y


def _grads(gy, x, weight, bias, needs):
    """dx, dweight, dbias by torch: the conv recomputed (no pre-activation saved), SiLU's derivative, cuDNN's
    convolution backward."""
    k = weight.shape[-1]
    xc = x.permute(0, 3, 1, 2)
    z = F.conv2d(xc, weight, bias, padding=(k - 1) // 2, groups=x.shape[-1])
    gz = torch.ops.aten.silu_backward(gy.permute(0, 3, 1, 2).to(z.dtype), z)  # fp32 inside, one rounding
    gx, gw, gb = torch.ops.aten.convolution_backward(
        gz, xc, weight, None if bias is None else [bias.shape[0]], [1, 1], [(k - 1) // 2] * 2, [1, 1],
        False, [0, 0], x.shape[-1], [needs[0], needs[1], needs[2] and bias is not None])
    return (gx.permute(0, 2, 3, 1) if gx is not None else None), gw, gb


@torch.library.triton_op("vmbench::dwconv_silu", mutates_args=())
def _dw_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return dwconv_silu_launch(x, weight, bias)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # x, weight, bias


def _backward(ctx, gy):
    x, weight, bias = ctx.saved_tensors
    return _grads(gy, x, weight, bias, ctx.needs_input_grad)


_dw_op.register_autograd(_backward, setup_context=_setup_context)


class _DWConvSiluFn(torch.autograd.Function):
    """Eager path: the launcher directly; saves x and the weights."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        with direct_launch():
            y = dwconv_silu_launch(x, weight, bias)
        ctx.save_for_backward(x, weight, bias)
        return y

    backward = staticmethod(_backward)  # torch ops alone: the registered op's backward


def dwconv_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton twin of `dwconv_silu_ref` on operands of one dtype (differentiable; traceable by torch.compile)."""
    return launch_or_apply(torch.ops.vmbench.dwconv_silu, dwconv_silu_launch, _DWConvSiluFn, x, weight, bias)
