"""Ops that VMamba's compiled graphs keep opaque to Inductor (torch.library custom ops), each for a reason found in
the compiled graphs.

- `gelu` (vmbench::gelu): the MLP's forward GELU in compiled training. As aten's GELU, the joint graph merged it
  with the backward's recomputed GELU and the partitioner then saved its output beside fc1's: one hidden-size
  activation per MLP more than needed (benchmarks/NOTES-compile.md).
- `conv2d` (vmbench::conv2d, its backward vmbench::conv2d_backward): every VMamba convolution in a compiled
  graph, cuDNN's kernels as eager runs them, on the operands' own layouts. A graph with aten convolutions turns on
  Inductor's layout optimisation, which gives the 4-D tensors around them channels_last strides. VMamba's maps are
  (B, H, W, C) tensors whose memory is already channels-last, and channels_last strides on those shapes put H
  innermost: its LayerNorms then reduce over strided rows, and its GEMMs and scans get transposing copies
  (benchmarks/NOTES-compile.md). Without aten convolutions the optimisation stays off and the maps keep their
  own layout. VMamba's `Conv2d` calls it without the bias and adds that after: cuDNN would add it in a pass of its
  own over the output, where Inductor fuses the add into the next kernel.

`USE_GELU_OP` / `USE_CONV_OP` turn them off (benchmarks: `--fusions` without `gelu` / `convop`). Eager calls never
use them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["USE_GELU_OP", "USE_CONV_OP", "gelu", "conv2d", "conv2d_backward"]

USE_GELU_OP = True
USE_CONV_OP = True


@torch.library.custom_op("vmbench::gelu", mutates_args=())
def gelu(h: torch.Tensor) -> torch.Tensor:
    """GELU as one node that the joint graph cannot merge with the backward's recomputation (aten GELU, which
    Inductor fuses with the GELU's backward). Its neighbours are GEMMs (cuBLAS), so it fuses nothing less."""
    return F.gelu(h)


@gelu.register_fake
def _(h: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(h)


@torch.library.custom_op("vmbench::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
           padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """F.conv2d (cuDNN on a GPU) with a channels_last output, whatever cuDNN picked: the fake below promises it.
    x, weight and bias come in the dtype the convolution runs in (the caller applies autocast's casts)."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return y.contiguous(memory_format=torch.channels_last)


@conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("vmbench::conv2d_backward", mutates_args=())
def conv2d_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool, stride: list[int],
                    padding: list[int], dilation: list[int], groups: int,
                    need: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`conv2d`'s gradients (dx, dweight, dbias) by aten's convolution_backward (cuDNN on a GPU) on the operands as
    they come: opaque too, so that Inductor does not re-lay them out for its own lowering of the backward. A
    gradient not in `need` comes back empty; the others with x's / weight's strides."""
    grads = torch.ops.aten.convolution_backward(gy, x, weight, [weight.shape[0]] if has_bias else None, stride,
                                                padding, dilation, False, [0, 0], groups, need)
    return tuple(_like(g, ref) if on else ref.new_empty(0)
                 for g, ref, on in zip(grads, (x, weight, gy.new_empty(weight.shape[0])), need))


@conv2d_backward.register_fake
def _(gy, x, weight, has_bias, stride, padding, dilation, groups, need):
    return tuple(torch.empty_like(ref) if on else ref.new_empty(0)
                 for ref, on in zip((x, weight, gy.new_empty(weight.shape[0])), need))


def _like(g: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """g with ref's strides (what the fake promises): g itself when cuDNN already wrote it so, else a copy."""
    return g if g.stride() == ref.stride() else torch.empty_like(ref).copy_(g)


def _conv2d_setup(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (bias is not None, stride, padding, dilation, groups)


def _conv2d_backward(ctx, gy):
    x, weight = ctx.saved_tensors
    has_bias = ctx.conf[0]
    need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
    grads = conv2d_backward(gy, x, weight, *ctx.conf, need)
    return (*(g if on else None for g, on in zip(grads, need)), None, None, None, None)


conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)
