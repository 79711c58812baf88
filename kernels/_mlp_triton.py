"""Triton `linear(gelu(linear(x, W1, b1)), W2, b2)`: a whole MLP in one kernel, its hidden activation never in
memory (twin and dispatcher in kernels/mlp.py).

Unfused, the hidden activation (4x the block's channels) is written by fc1 (+ GELU) and read back by fc2: at
VMamba-T's stage 1 that is 2 x 308 MB per block at batch 128, against 2 x 77 MB for x and y. Here a program owns
BLOCK_M rows: it loads their x tile once ([BLOCK_M, KP], K padded to a power of 2 with zeros), then walks the
hidden features BLOCK_H at a time: h = x @ W1[chunk]^T + b1 (fp32, tensor-core dot), a = gelu(h) rounded to x's
dtype (where the unfused path rounds fc1's output), y += a @ W2[:, chunk]^T in fp32 registers. W1 and W2 (at most
a few hundred KB here) stay in L2. The price is the padding of K (96 -> 128, 192 -> 256) in both dots and a fp32
accumulator of [BLOCK_M, KP] per program, so the kernel is for narrow MLPs (K <= MAX_KP).

The backward is torch's: it recomputes h with cuBLAS and applies the GELU's and both GEMMs' adjoints, so only x
is saved (the kernel is meant for calls without gradients; kernels/mlp.py's USE_KERNEL).

Public entry points:
    mlp_triton(x, w1, b1, w2, b2) -> y (..., K): differentiable, traceable by torch.compile
    mlp_launch(x, w1, b1, w2, b2): the raw launch
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._backend import cdiv, direct_launch, launch_or_apply, next_pow2, rows_view, triton_interpret
from ._cross_scan_triton import _kernel_for, new_buffer
from ._linear_gelu_triton import _param_grads

__all__ = ["mlp_triton", "mlp_launch", "MLP_CONFIG", "MAX_KP", "DTYPES"]

# Per padded width KP: the fastest tile of benchmarks/fusions.py --sweep on an H100 (batch 128, VMamba-T's stage 1
# for KP = 128, stage 2 for KP = 256; benchmarks/RESULTS.md).
MLP_CONFIG = {128: dict(block_m=64, block_h=32, warps=4, stages=2),
              256: dict(block_m=128, block_h=64, warps=8, stages=2)}
# fp32 operands (backend="triton" calls only): KP = 256's tile above needs more shared memory than an H100 has.
FP32_CONFIG = dict(block_m=64, block_h=32, warps=4, stages=1)
CPU_CONFIG = dict(block_m=16, block_h=16, warps=1, stages=1)
MAX_KP = 256  # the fp32 accumulator is [BLOCK_M, KP]: wider MLPs do not fit a program's registers
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _mlp_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y_ptr,
    M, K, N, sxm,  # x's row stride (column stride 1); W1 (N, K), W2 (K, N), y (M, K) contiguous
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, DOT_F32: tl.constexpr,
    KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: M * N passes 2**31
    rk = tl.arange(0, KP)
    mmask = rm < M
    kmask = rk < K
    x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
    acc = tl.zeros([BLOCK_M, KP], dtype=tl.float32)
    for h0 in range(0, N, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        hmask = rh < N
        w1 = tl.load(w1_ptr + rh[None, :] * K + rk[:, None], mask=kmask[:, None] & hmask[None, :],
                     other=0.0)  # [KP, BLOCK_H]: W1[chunk]^T
        w2 = tl.load(w2_ptr + rk[None, :] * N + rh[:, None], mask=hmask[:, None] & kmask[None, :],
                     other=0.0)  # [BLOCK_H, KP]: W2[:, chunk]^T
        if DOT_F32:  # fp32 operands (fp32 x; the interpreter's bf16 dot is wrong): full-precision dots
            h = tl.dot(x.to(tl.float32), w1.to(tl.float32), input_precision="ieee")
        else:
            h = tl.dot(x, w1)
        if HAS_B1:
            h += tl.load(b1_ptr + rh, mask=hmask, other=0.0).to(tl.float32)[None, :]
        a = (h * 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))).to(x_ptr.dtype.element_ty)  # exact GELU
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), w2.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w2, acc)
    if HAS_B2:
        acc += tl.load(b2_ptr + rk, mask=kmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * K + rk[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & kmask[None, :])


def _check(x, w1, b1, w2, b2) -> None:
    if x.dtype not in DTYPES or any(t is not None and t.dtype != x.dtype for t in (w1, b1, w2, b2)):
        raise ValueError(f"mlp (triton): x, weights and biases must share one of {DTYPES}; got "
                         f"{[None if t is None else t.dtype for t in (x, w1, b1, w2, b2)]}")
    k = x.shape[-1]
    n = w1.shape[0] if w1.dim() == 2 else -1
    if (w1.dim() != 2 or w1.shape[1] != k or tuple(w2.shape) != (k, n) or (b1 is not None and tuple(b1.shape) != (n,))
            or (b2 is not None and tuple(b2.shape) != (k,))):
        shapes = [None if t is None else tuple(t.shape) for t in (w1, b1, w2, b2)]
        raise ValueError(f"mlp: weights / biases {shapes} do not fit x {tuple(x.shape)} (W1 (N, K), W2 (K, N))")
    if next_pow2(max(k, 16)) > MAX_KP:
        raise ValueError(f"mlp (triton): at most {MAX_KP} input features; got {k}")


def mlp_launch(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
               b2: Optional[torch.Tensor], config: Optional[dict] = None) -> torch.Tensor:
    """Launch the kernel (no autograd).

    Args:
        x: (..., K) bf16 / fp16 / fp32, K <= MAX_KP, any strides (copied unless rows are evenly strided with column
            stride 1); w1 (N, K), b1 (N,) or None, w2 (K, N), b2 (K,) or None, all in x's dtype.
        config: an MLP_CONFIG entry's override (benchmarks).
    Returns:
        y: (..., K) in x's dtype, contiguous.
    """
    _check(x, w1, b1, w2, b2)
    k, n = x.shape[-1], w1.shape[0]
    x2 = rows_view(x)
    m = x2.shape[0]
    y = new_buffer(tuple(x.shape), x.dtype, x.device)
    if m == 0 or k == 0:
        return y
    if n == 0:  # no hidden features: y is fc2's bias
        return y.copy_((b2 if b2 is not None else y.new_zeros(k)).expand_as(y))
    kp = next_pow2(max(k, 16))
    if config:
        cfg = config
    elif triton_interpret() and x.device.type == "cpu":
        cfg = CPU_CONFIG
    else:
        cfg = FP32_CONFIG if x.dtype == torch.float32 else MLP_CONFIG[max(kp, 128)]
    w1c, w2c = w1.contiguous(), w2.contiguous()
    _kernel_for(_mlp_kernel, x.device)[(cdiv(m, cfg["block_m"]),)](
        x2, w1c, b1 if b1 is not None else w1c, w2c, b2 if b2 is not None else w2c, y,
        m, k, n, x2.stride(0), HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        DOT_F32=triton_interpret() or x.dtype == torch.float32,
        KP=kp, BLOCK_M=cfg["block_m"], BLOCK_H=cfg["block_h"], num_warps=cfg["warps"], num_stages=cfg["stages"])
    return y


def _grads(gy, x, w1, b1, w2, needs):
    """dx, dW1, db1, dW2, db2 by torch ops: h recomputed by cuBLAS, then the adjoints of fc2, the GELU and fc1
    (each Linear's by `_param_grads`)."""
    h = F.linear(x, w1, b1)
    ga, gw2, gb2 = _param_grads(gy, F.gelu(h), w2, True, needs[3], needs[4])
    gh = torch.ops.aten.gelu_backward(ga, h)
    return (*_param_grads(gh, x, w1, *needs[:3]), gw2, gb2)


@torch.library.triton_op("vmbench::mlp", mutates_args=())
def _mlp_op(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
            b2: Optional[torch.Tensor]) -> torch.Tensor:
    return mlp_launch(x, w1, b1, w2, b2)


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2 = inputs
    ctx.save_for_backward(x, w1, b1, w2)
    ctx.has_bias = (b1 is not None, b2 is not None)


def _backward(ctx, gy):
    x, w1, b1, w2 = ctx.saved_tensors
    needs = list(ctx.needs_input_grad)
    needs[2] &= ctx.has_bias[0]
    needs[4] &= ctx.has_bias[1]
    return _grads(gy, x, w1, b1, w2, needs)


_mlp_op.register_autograd(_backward, setup_context=_setup_context)


class _MlpFn(torch.autograd.Function):
    """Eager path: the launcher directly; saves x and the weights, not the hidden activation."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        with direct_launch():
            y = mlp_launch(x, w1, b1, w2, b2)
        _setup_context(ctx, (x, w1, b1, w2, b2), y)
        return y

    backward = staticmethod(_backward)  # torch ops alone: the registered op's backward


def mlp_triton(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
               b2: Optional[torch.Tensor]) -> torch.Tensor:
    """Triton twin of `mlp_ref` on operands of one dtype (differentiable; traceable by torch.compile)."""
    return launch_or_apply(torch.ops.vmbench.mlp, mlp_launch, _MlpFn, x, w1, b1, w2, b2)
