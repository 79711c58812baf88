"""`gelu(linear(x, W, b))`, the first half of a transformer-style MLP, with the GELU fused into the GEMM.

`linear_gelu_ref` is the plain-torch twin (F.linear, then the exact GELU); `linear_gelu` runs it or the Triton
kernel of kernels/_linear_gelu_triton.py by backend. Both follow autocast as F.linear does: under autocast x, W
and b are cast to its dtype and the result comes in that dtype. The Triton path rounds once (gelu of the fp32
accumulator) where the twin rounds h and gelu(h); its backward recomputes h instead of reading a saved copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from .layer_norm import in_compute_dtype, low_precision_triton

__all__ = ["linear_gelu", "linear_gelu_ref", "triton_takes", "USE_KERNEL", "MAX_K"]

# True: the inference MLP's fc1 + GELU is the kernel where `triton_takes` says so (on an H100, benchmarks/RESULTS.md:
# VMamba-T eager inference 8965 against 8810 img/s unfused, compiled 8876 against 6204). False: "auto" never takes it.
USE_KERNEL = True
# "auto" takes the kernel for inputs of at most MAX_K features: on that H100 it beat cuBLAS's GEMM + the GELU pass
# at K = 96 (1.32x) and 192 (1.06x), tied at 384 and lost at 768, where the GEMM dominates.
MAX_K = 192


def linear_gelu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """gelu(x @ weight^T + bias).

    Args:
        x: (..., K) float; weight: (N, K); bias: (N,) or None. Autocast applies as to F.linear.
    Returns:
        a: (..., N) in the autocast dtype under autocast, else x's dtype.
    """
    return F.gelu(F.linear(x, weight, bias))


def triton_takes(x: torch.Tensor, backend: str = "auto") -> bool:
    """Does `linear_gelu(x, ..., backend)` run the Triton kernel? Where the backend resolves to Triton, the
    GEMM's dtype (autocast's, else x's) is bf16 / fp16 (fp32 calls keep cuBLAS's GEMM and its TF32 settings) and
    x has at most `MAX_K` features. `USE_KERNEL` False: never."""
    return USE_KERNEL and x.shape[-1] <= MAX_K and low_precision_triton(x, backend)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                backend: str = "auto") -> torch.Tensor:
    """`linear_gelu_ref` with a chosen backend ("auto" | "torch" | "triton"); differentiable in x, weight, bias.
    "auto" takes the kernel where `triton_takes` says so; "triton" takes it for every float dtype."""
    be = resolve_backend(backend, x.device)
    if be == "torch" or (backend == "auto" and not triton_takes(x, backend)):
        return linear_gelu_ref(x, weight, bias)
    from ._linear_gelu_triton import linear_gelu_triton

    return linear_gelu_triton(*in_compute_dtype(x, weight, bias))
