"""LayerNorm over the last dim of channels-last activations (VMamba's norms: (B, H, W, C), C = 96..768).

`layer_norm_ref` is the plain-torch twin (F.layer_norm in fp32); `layer_norm` picks it or the Triton
kernel (kernels/_layer_norm_triton.py) by backend; `LayerNorm` is an `nn.LayerNorm` with the same
state_dict that routes through `layer_norm` and can emit the autocast dtype directly
(`autocast_out=True`): every LayerNorm output in VMamba feeds a Linear, which would cast it anyway,
so writing bf16 once saves the fp32 write and the cast pass. In a compiled graph the forward is Inductor's (fused
with the residual add and the casts around it); with gradients and `USE_KERNEL`, the backward is the Triton one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._backend import needs_grad, resolve_backend

__all__ = ["layer_norm", "layer_norm_ref", "LayerNorm", "TRITON_DTYPES", "TRITON_MAX_C", "USE_KERNEL",
           "USE_KERNEL_FWD"]

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # x dtypes the kernel takes
TRITON_MAX_C = 16384  # the kernel keeps whole rows in registers; beyond this it would spill
# Compiled graphs with gradients: the LayerNorm's backward on the Triton kernel (one pass for dx and the weight /
# bias partial sums), its forward left to Inductor (kernels/_layer_norm_triton.py, `layer_norm_compiled`). False:
# Inductor's own backward. Eager calls take the Triton kernel for both passes either way (`LayerNorm.backend`).
USE_KERNEL = True
USE_KERNEL_FWD = False  # True: the forward too (then the residual add before the norm is a pass of its own)


def _check(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> int:
    if x.dim() < 1:
        raise ValueError("layer_norm: x must have at least one dimension (the normalised one)")
    if not x.is_floating_point():
        raise ValueError(f"layer_norm: x must be a float tensor, got {x.dtype}")
    c = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"layer_norm: {name} must have shape ({c},) to match x's last dim; got {tuple(t.shape)}")
    return c


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                   eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LayerNorm over the last dim, computed in fp32 (fp64 for fp64 inputs).

    Args:
        x: (..., C) fp32 / bf16 / fp16 (fp64 too), any strides.
        weight, bias: (C,) fp32 (any float dtype) or None.
        eps: added to the variance.
        out_dtype: dtype of y; default x.dtype.
    Returns:
        y: (..., C) in out_dtype, contiguous; y = (x - mean) / sqrt(var + eps) * weight + bias,
           mean / var (biased) over the last dim.
    """
    c = _check(x, weight, bias)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = weight.to(acc) if weight is not None else None
    b = bias.to(acc) if bias is not None else None
    y = F.layer_norm(x.to(acc), (c,), w, b, eps)
    return y.to(out_dtype or x.dtype)


def triton_supports(x: torch.Tensor) -> bool:
    """Can the Triton kernel take this x (dtype, row length)?"""
    return x.dtype in TRITON_DTYPES and 0 < x.shape[-1] <= TRITON_MAX_C


def _pick_backend(backend: str, x: torch.Tensor) -> str:
    """resolve_backend, plus: "auto" keeps the torch twin for inputs the kernel does not take (fp64, huge C)."""
    be = resolve_backend(backend, x.device)
    if be == "triton" and backend == "auto" and not triton_supports(x):
        return "torch"
    return be


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, out_dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """`layer_norm_ref` with a chosen backend ("auto" | "torch" | "triton"); differentiable in x, weight, bias."""
    _check(x, weight, bias)
    if _pick_backend(backend, x) == "triton":
        from ._layer_norm_triton import layer_norm_triton

        return layer_norm_triton(x, weight, bias, eps, out_dtype)
    return layer_norm_ref(x, weight, bias, eps, out_dtype)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype for `device_type` if autocast is on there, else None (torch >= 2.4 API)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an autocast-listed op (linear, conv) computes x in: autocast's on x's device, else x's own."""
    return autocast_dtype(x.device.type) or x.dtype


def low_precision_triton(x: torch.Tensor, backend: str) -> bool:
    """Whether a fused GEMM / conv kernel fits this call: `backend` resolves to Triton and the op computes in bf16 /
    fp16 (fp32 calls keep cuBLAS / cuDNN and their TF32 settings)."""
    return resolve_backend(backend, x.device) == "triton" and compute_dtype(x) in (torch.bfloat16, torch.float16)


def in_compute_dtype(x: torch.Tensor, *tensors: torch.Tensor | None) -> list:
    """x and `tensors` (None entries kept) cast to `compute_dtype(x)`, as autocast casts an op's operands."""
    dtype = compute_dtype(x)
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in (x, *tensors)]


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` over the last dim (same constructor, same state_dict keys weight / bias) on `layer_norm`.

    Extra attributes:
        autocast_out: when True and autocast is on for x's device type, y is emitted in the autocast
            dtype (the next Linear's input dtype). When False, y's dtype follows nn.LayerNorm on every
            backend: float32 while autocast is on (autocast runs layer_norm in fp32), x's dtype otherwise.
        backend: "auto" | "torch" | "triton". On the torch backend with autocast_out=False (or autocast
            off) forward is exactly nn.LayerNorm's, autocast policy included. Code being compiled by
            torch.compile runs the forward in torch ops (Inductor fuses the norm itself); see `USE_KERNEL`.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, autocast_out: bool = False, backend: str = "auto"):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"LayerNorm normalises the last dim only; got normalized_shape={self.normalized_shape}")
        self.autocast_out = bool(autocast_out)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"LayerNorm({self.normalized_shape[0]}) got x of shape {tuple(x.shape)}")
        cast = autocast_dtype(x.device.type)
        out_dtype = cast if self.autocast_out else (torch.float32 if cast is not None else None)
        # Under torch.compile the forward is Inductor's: it fuses the norm with the residual add and the casts around
        # it, which an opaque custom op would prevent. With gradients, the backward can still be the Triton kernel's.
        be = _pick_backend(self.backend, x)
        if torch.compiler.is_compiling():
            # Only where y (so dy) is bf16 / fp16: with an fp32 y, compiled steps on a GPU gave wrong gradients
            # upstream of the norm (benchmarks/RESULTS.md, eighteenth pass), so fp32 outputs keep Inductor's norm.
            low = (out_dtype or x.dtype) in (torch.bfloat16, torch.float16)
            if be == "triton" and low and needs_grad(x, self.weight, self.bias) and (USE_KERNEL or USE_KERNEL_FWD):
                if USE_KERNEL_FWD:
                    from ._layer_norm_triton import layer_norm_triton

                    return layer_norm_triton(x, self.weight, self.bias, self.eps, out_dtype)
                from ._layer_norm_triton import layer_norm_compiled

                return layer_norm_compiled(x, self.weight, self.bias, self.eps, out_dtype or x.dtype)
            be = "torch"
        if be == "torch":
            if out_dtype is None or not self.autocast_out:
                return super().forward(x)  # nn.LayerNorm, autocast policy included
            return layer_norm_ref(x, self.weight, self.bias, self.eps, out_dtype)
        from ._layer_norm_triton import layer_norm_triton

        return layer_norm_triton(x, self.weight, self.bias, self.eps, out_dtype)  # `layer_norm`, checks done

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, autocast_out={self.autocast_out}, backend={self.backend!r}"
