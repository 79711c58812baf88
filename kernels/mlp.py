"""`linear(gelu(linear(x, W1, b1)), W2, b2)`, a transformer-style MLP, as one kernel that never writes its hidden
activation.

`mlp_ref` is the plain-torch twin (F.linear, the exact GELU, F.linear); `mlp` runs it or the Triton kernel of
kernels/_mlp_triton.py by backend. Both follow autocast as F.linear does: under autocast every operand is cast
to its dtype and the result comes in that dtype. The Triton path rounds the hidden activation once (gelu of the
fp32 accumulator) where the twin rounds fc1's output and the GELU's; its backward recomputes the hidden
activation with torch ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from .layer_norm import in_compute_dtype, low_precision_triton

__all__ = ["mlp", "mlp_ref", "triton_takes", "USE_KERNEL", "MAX_K"]

# True: calls without gradients run the kernel where `triton_takes` says so. False: "auto" never takes it.
USE_KERNEL = True
# "auto" takes the kernel for inputs of at most MAX_K features. On an H100 (benchmarks/RESULTS.md, batch 128) it ran
# VMamba-T's stage-1 MLP (C = 96) in 0.389 ms against 0.446 for fc1 + GELU fused then cuBLAS's fc2 (0.519 unfused),
# and lost at C = 192 (0.290 against 0.259): K padded to 256 and the [BLOCK_M, 256] accumulator cost more than the
# hidden activation's round trip. The kernel's own limit is _mlp_triton.MAX_KP = 256.
MAX_K = 96


def mlp_ref(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
            b2: torch.Tensor | None) -> torch.Tensor:
    """linear(gelu(x @ w1^T + b1), w2, b2).

    Args:
        x: (..., K) float; w1: (N, K); b1: (N,) or None; w2: (K, N); b2: (K,) or None. Autocast applies as to
            F.linear.
    Returns:
        y: (..., K) in the autocast dtype under autocast, else x's dtype.
    """
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def triton_takes(x: torch.Tensor, backend: str = "auto") -> bool:
    """Does `mlp(x, ..., backend)` run the Triton kernel? Where the backend resolves to Triton, the GEMMs' dtype
    (autocast's, else x's) is bf16 / fp16 and x has at most `MAX_K` features. `USE_KERNEL` False: never."""
    return USE_KERNEL and x.shape[-1] <= MAX_K and low_precision_triton(x, backend)


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
        backend: str = "auto") -> torch.Tensor:
    """`mlp_ref` with a chosen backend ("auto" | "torch" | "triton"); differentiable in every operand. "auto" takes
    the kernel where `triton_takes` says so; "triton" for every float dtype and K up to the kernel's MAX_KP."""
    be = resolve_backend(backend, x.device)
    if be == "torch" or (backend == "auto" and not triton_takes(x, backend)):
        return mlp_ref(x, w1, b1, w2, b2)
    from ._mlp_triton import mlp_triton

    return mlp_triton(*in_compute_dtype(x, w1, b1, w2, b2))

