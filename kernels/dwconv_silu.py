"""SiLU(depthwise conv2d) on channels-last maps, SS2D's conv before the scan: (B, H, W, D) in, (B, H, W, D) out.

`dwconv_silu_ref` is the plain-torch twin (F.conv2d with groups = D on a (B, D, H, W) view of the channels-last map,
then F.silu); `dwconv_silu` picks it or the Triton kernel of kernels/_dwconv_silu_triton.py by backend. Autocast
applies as to F.conv2d (operands in its dtype). The kernel writes SiLU's output once, in place of cuDNN's conv
output written and read back by a separate SiLU pass, and rounds once (silu of the fp32 sum).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from .layer_norm import in_compute_dtype, low_precision_triton

__all__ = ["dwconv_silu", "dwconv_silu_ref", "triton_takes", "USE_KERNEL"]

# True: SS2D's inference calls inside torch.compile'd graphs run conv + SiLU as the kernel where `triton_takes`
# says so. False: "auto" never takes it. On an H100 (benchmarks/RESULTS.md) compiled VMamba-T inference ran 9452
# img/s with it against 6204 without (with fc1 + GELU fused too, 9261 against 7928 in another call); eager calls
# keep cuDNN's channels-last depthwise conv and a SiLU pass, faster than the kernel alone (0.74-0.88x their speed).
USE_KERNEL = True


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"dwconv_silu: x must be (B, H, W, D); got {tuple(x.shape)}")
    d = x.shape[-1]
    if weight.dim() != 4 or weight.shape[0] != d or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3] \
            or weight.shape[2] % 2 == 0:
        raise ValueError(f"dwconv_silu: weight must be ({d}, 1, k, k) with k odd; got {tuple(weight.shape)}")


def dwconv_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(depthwise conv2d(x)), stride 1, zero padding (k - 1) / 2.

    Args:
        x: (B, H, W, D) channels-last map, any strides; weight: (D, 1, k, k), k odd; bias: (D,) or None.
    Returns:
        y: (B, H, W, D), a channels-last view of the (B, D, H, W) result; autocast's dtype under autocast.
    """
    _check(x, weight)
    k = weight.shape[-1]
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=(k - 1) // 2, groups=x.shape[-1])
    return F.silu(y).permute(0, 2, 3, 1)


def triton_takes(x: torch.Tensor, backend: str = "auto") -> bool:
    """Does `dwconv_silu(x, ..., backend)` run the kernel? Inside a graph torch.compile is tracing, where the
    backend resolves to Triton and the conv's dtype (autocast's, else x's) is bf16 / fp16, and `USE_KERNEL`."""
    return USE_KERNEL and torch.compiler.is_compiling() and low_precision_triton(x, backend)


def dwconv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                backend: str = "auto") -> torch.Tensor:
    """`dwconv_silu_ref` with a chosen backend ("auto" | "torch" | "triton"); differentiable in x, weight, bias.
    "auto" takes the kernel where `triton_takes` says so; "triton" for every float dtype."""
    be = resolve_backend(backend, x.device)
    if be == "torch" or (backend == "auto" and not triton_takes(x, backend)):
        return dwconv_silu_ref(x, weight, bias)  # checks the shapes itself
    _check(x, weight)
    from ._dwconv_silu_triton import dwconv_silu_triton

    return dwconv_silu_triton(*in_compute_dtype(x, weight, bias))
