"""Triton `gelu(x @ W^T + b)`: the MLP's first Linear with its GELU in the GEMM's epilogue (twin and dispatcher in
kernels/linear_gelu.py).

Unfused, the hidden activation h (4x the block's channels) is written by the GEMM, read and written again by the
GELU: two of the three passes over the largest tensor of a VMamba block. Here a program computes a
[BLOCK_M, BLOCK_N] tile of h in fp32 registers (K loop of tensor-core dots), applies the exact (erf) GELU and
writes a = gelu(h) once. The backward is the same GEMM with the other epilogue: it recomputes h from x (saved; h
is not) and writes gh = ga * gelu'(h), so the GELU's backward reads no saved hidden-size tensor either.

Programs walk the output row tile by row tile, a row tile's column tiles adjacent in the grid: those share their
x tile in L2, and W (at most a few MB in VMamba) stays there. fp32 inputs take full-precision dots (no TF32).

Public entry points:
    linear_gelu_triton(x, weight, bias) -> a (..., N): differentiable, traceable by torch.compile
    linear_gelu_launch(x, weight, bias, ga=None): the raw launch (forward, or with ga the backward's gh)
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._backend import cdiv, direct_launch, launch_or_apply, rows_view, triton_interpret
from ._cross_scan_triton import _kernel_for, new_buffer

__all__ = ["linear_gelu_triton", "linear_gelu_launch", "LG_CONFIG", "DTYPES"]

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the interpreter's tiles are small so tiny shapes give several
# programs and ragged edges. The GPU's: the fastest of benchmarks/fusions.py --sweep at K = 96 and 192 on an H100.
LG_CONFIG = dict(block_m=64, block_n=128, block_k=32, warps=4, stages=4)
CPU_CONFIG = dict(block_m=16, block_n=16, block_k=16, warps=1, stages=1)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _linear_gelu_kernel(
    x_ptr, w_ptr, b_ptr, g_ptr, out_ptr,
    M, N, K, sxm, sgm,  # x's and ga's row strides (column stride 1); W is (N, K) contiguous, out (M, N) contiguous
    HAS_B: tl.constexpr, BACKWARD: tl.constexpr, EVEN_K: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    pid_m = pid // n_tiles_n
    pid_n = pid % n_tiles_n
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: M * N passes 2**31 at batch 128
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    nmask = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        if EVEN_K:
            a = tl.load(x_ptr + rm[:, None] * sxm + kk[None, :], mask=mmask[:, None], other=0.0)
            w = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=nmask[None, :], other=0.0)
        else:
            kmask = kk < K
            a = tl.load(x_ptr + rm[:, None] * sxm + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=nmask[None, :] & kmask[:, None], other=0.0)
        if DOT_F32:  # fp32 operands (fp32 x; the interpreter's bf16 dot is wrong): full-precision dots
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    if HAS_B:
        acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    mask = mmask[:, None] & nmask[None, :]
    cdf = 0.5 * (1.0 + tl.math.erf(acc * 0.7071067811865476))  # Phi(h): GELU(h) = h * Phi(h)
    if BACKWARD:
        ga = tl.load(g_ptr + rm[:, None] * sgm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        pdf = tl.exp(-0.5 * acc * acc) * 0.3989422804014327  # phi(h)
        out = ga * (cdf + acc * pdf)
    else:
        out = acc * cdf
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def linear_gelu_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       ga: Optional[torch.Tensor] = None, config: Optional[dict] = None) -> torch.Tensor:
    """Launch the kernel (no autograd).

    Args:
        x: (..., K) bf16 / fp16 / fp32, any strides (copied unless rows are evenly strided with column stride 1).
        weight: (N, K), bias: (N,) or None, in x's dtype (the caller casts, as autocast would).
        ga: None for the forward; else (..., N), the gradient of the forward's output.
        config: LG_CONFIG-like override (benchmarks).
    Returns:
        forward: a = gelu(x @ W^T + b), (..., N) in x's dtype, contiguous;
        with ga: gh = ga * gelu'(x @ W^T + b), the gradient of the pre-activation, same shape and dtype.
    """
    if x.dtype not in DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"linear_gelu (triton): x, weight, bias must share one of {DTYPES}; got {x.dtype}, "
                         f"{weight.dtype}, {None if bias is None else bias.dtype}")
    k = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != k or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        bshape = None if bias is None else tuple(bias.shape)
        raise ValueError(f"linear_gelu: weight {tuple(weight.shape)} / bias {bshape}"
                         f" do not fit x {tuple(x.shape)}")
    n = weight.shape[0]
    x2 = rows_view(x)
    m = x2.shape[0]
    out = new_buffer((*x.shape[:-1], n), x.dtype, x.device)
    g2 = None
    if ga is not None:
        if tuple(ga.shape) != tuple(out.shape):
            raise ValueError(f"linear_gelu backward: ga {tuple(ga.shape)} does not match {tuple(out.shape)}")
        g2 = rows_view(ga)
    if m == 0 or n == 0:
        return out
    w = weight.contiguous()
    cfg = config or (CPU_CONFIG if triton_interpret() and x.device.type == "cpu" else LG_CONFIG)
    bm, bn, bk = cfg["block_m"], cfg["block_n"], cfg["block_k"]
    grid = (cdiv(m, bm) * cdiv(n, bn),)
    _kernel_for(_linear_gelu_kernel, x.device)[grid](
        x2, w, bias if bias is not None else w, g2 if g2 is not None else x2, out,
        m, n, k, x2.stride(0), g2.stride(0) if g2 is not None else 0,
        HAS_B=bias is not None, BACKWARD=g2 is not None, EVEN_K=k % bk == 0,
        DOT_F32=triton_interpret() or x.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=cfg["warps"], num_stages=cfg["stages"])
    return out


def _param_grads(gh: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool, need_w: bool,
                 need_b: bool):
    """dx, dW, db of h = x @ W^T + b from gh (all in x's dtype; db summed in fp32 as cuBLAS's bias epilogue)."""
    gh2, x2 = gh.reshape(-1, gh.shape[-1]), x.reshape(-1, x.shape[-1])
    gx = torch.mm(gh2, weight).view(x.shape) if need_x else None
    gw = torch.mm(gh2.t(), x2) if need_w else None
    gb = gh2.sum(0, dtype=torch.float32).to(gh.dtype) if need_b else None
    return gx, gw, gb


# ----------------------------------------------------------------------------- custom ops + autograd


@torch.library.triton_op("vmbench::linear_gelu", mutates_args=())
def _lg_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return linear_gelu_launch(x, weight, bias)


@torch.library.triton_op("vmbench::linear_gelu_bwd", mutates_args=())
def _lg_bwd_op(ga: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return linear_gelu_launch(x, weight, bias, ga)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.has_bias = bias is not None


def _backward(ctx, ga):
    x, weight, bias = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    gh = torch.ops.vmbench.linear_gelu_bwd(ga, x, weight, bias)
    return _param_grads(gh, x, weight, need_x, need_w, need_b and ctx.has_bias)


_lg_op.register_autograd(_backward, setup_context=_setup_context)


class _LinearGeluFn(torch.autograd.Function):
    """Eager path: the launcher directly, without the dispatcher round trip of the custom ops. Saves x (and the
    weights), not the hidden activation: the backward recomputes it inside its GEMM."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        with direct_launch():
            a = linear_gelu_launch(x, weight, bias)
        ctx.save_for_backward(x, weight, bias)
        return a

    @staticmethod
    def backward(ctx, ga):
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        with direct_launch():
            gh = linear_gelu_launch(x, weight, bias, ga)
        return _param_grads(gh, x, weight, need_x, need_w, need_b and bias is not None)


def linear_gelu_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton twin of `linear_gelu_ref` on operands of one dtype (differentiable; traceable by torch.compile)."""
    return launch_or_apply(torch.ops.vmbench.linear_gelu, linear_gelu_launch, _LinearGeluFn, x, weight, bias)
