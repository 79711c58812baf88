"""VMamba's plain layers on channels-last maps (B, H, W, C): layout permutes, the Linear / Conv2d that keep
their autocast-dtype weights between no-gradient calls, the MLP, patch merging, the stem, the downsampling
and the pooling. Convolutions see a zero-copy (B, C, H, W) view whose memory is channels_last. The SS2D mixer
and the blocks are in vmamba_blocks.py; the model in vmamba.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vmbench.kernels import LayerNorm, ParamCache, derived
from vmbench.kernels._backend import needs_grad
from vmbench.kernels import linear_gelu as lg
from vmbench.kernels import mlp as fused_mlp
from vmbench.kernels.layer_norm import autocast_dtype, in_compute_dtype

from . import opaque_ops
from .vmamba_config import VMambaConfig

__all__ = ["ToChannelsLast", "ToChannelsFirst", "Linear", "Conv2d", "Mlp", "PatchMerging2D", "GlobalAvgPoolNHWC",
           "DropPath", "make_stem", "make_downsample", "make_pool"]


class ToChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C) view (contiguous when the input's memory is channels_last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W) view whose memory is channels_last (what convs prefer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class _KeptCasts:
    """For nn.Linear / nn.Conv2d subclasses: under autocast, when no gradient is needed, the weight and bias in the
    autocast dtype are kept (vmbench.kernels.derived: rebuilt when they change, after an optimizer step, at a
    train() / eval() switch) instead of being cast by autocast on every call, one cast kernel each. Same
    results: autocast then finds every operand in its dtype and casts nothing. With gradients, under
    torch.compile or without autocast, the module is its base class."""

    def _init_casts(self) -> None:
        self._casts = ParamCache()

    def _autocast_params(self, x: torch.Tensor):
        w, b = self.weight, self.bias
        if torch.compiler.is_compiling() or needs_grad(x, w, b):
            return w, b
        dtype = autocast_dtype(x.device.type)
        if dtype is None or w.dtype == dtype:
            return w, b
        return derived(self._casts, "wb", (w, b),
                       lambda: (w.to(dtype), b.to(dtype) if b is not None else None), dtype)

    def train(self, mode: bool = True):
        if mode != self.training:
            self._casts.clear()
        return super().train(mode)


class Linear(_KeptCasts, nn.Linear):
    """nn.Linear (same state_dict) that keeps its autocast-dtype weights between no-gradient calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_casts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, *self._autocast_params(x))


class Conv2d(_KeptCasts, nn.Conv2d):
    """nn.Conv2d (same state_dict) that keeps its autocast-dtype weights between no-gradient calls. In a compiled
    graph it is the op `vmbench::conv2d` (opaque_ops.py: Inductor's layout optimisation stays off) without the bias,
    with autocast's casts applied here."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_casts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if opaque_ops.USE_CONV_OP and torch.compiler.is_compiling() and self.padding_mode == "zeros" \
                and not isinstance(self.padding, str):
            x, w, b = in_compute_dtype(x, self.weight, self.bias)
            y = opaque_ops.conv2d(x, w, None, list(self.stride), list(self.padding), list(self.dilation), self.groups)
            # The bias outside the op: Inductor fuses its add into the kernel that reads y next, where F.conv2d on
            # cuDNN adds it in a pass over y of its own.
            return y if b is None else y + b.view(-1, 1, 1)
        return self._conv_forward(x, *self._autocast_params(x))


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's DropPath: keep a sample's branch with probability 1 - drop_prob and
    scale it by 1 / (1 - drop_prob), in training only) with the keep probability in a 0-dim buffer (not saved:
    the state_dict is timm's). A float attribute is a constant to torch.compile, guarded by value, so every
    block of a stage — each with its own rate — would be compiled again when blocks are compiled one by one
    (`block.compile()`); as a buffer it is a graph input and the blocks share one graph. `active` (default:
    drop_prob > 0) applies the mask even at rate 0 (a mask of ones): a model whose first block has rate 0 passes
    True to every block, so that block too shares its stage's graph."""

    def __init__(self, drop_prob: float = 0.0, active: bool | None = None):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.active = self.drop_prob > 0.0 if active is None else bool(active)  # a bool guard, alike in every block
        self.register_buffer("keep_prob", torch.tensor(1.0 - self.drop_prob), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return x
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(self.keep_prob)  # (B, 1, 1, 1)
        return x * mask.div_(self.keep_prob)  # x's dtype (a 0-dim tensor does not promote), as timm's

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class _GeluLinear(torch.autograd.Function):
    """linear(gelu(h), weight, bias) that saves h for the backward, not gelu(h): the backward recomputes the GELU
    (one pointwise pass over h) so a training MLP keeps one hidden-size activation per position instead of two
    (1.6 GB of VMamba-T's 9.9 GB training peak at batch 128, 224²). `dtype`: the dtype the GEMM runs in (autocast's, or
    None to use the operands as they are); the gradients come back in the parameters' own dtypes, as autocast's
    casts would return them."""

    @staticmethod
    def forward(ctx, h, weight, bias, dtype):
        w = weight if dtype is None else weight.to(dtype)
        b = bias if dtype is None or bias is None else bias.to(dtype)
        a = opaque_ops.gelu(h) if opaque_ops.USE_GELU_OP and torch.compiler.is_compiling() else nn.functional.gelu(h)
        y = nn.functional.linear(a if dtype is None else a.to(dtype), w, b)
        ctx.save_for_backward(h, w)
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, gy):
        h, w = ctx.saved_tensors
        need_h, need_w, need_b, _ = ctx.needs_input_grad
        g2 = gy.reshape(-1, gy.shape[-1])  # (positions, C)
        gh = gw = gb = None
        if need_h:
            ga = torch.mm(g2, w).view(*gy.shape[:-1], w.shape[1])  # (..., hidden)
            gh = torch.ops.aten.gelu_backward(ga.to(h.dtype), h)
        if need_w:
            a = nn.functional.gelu(h).reshape(-1, h.shape[-1]).to(gy.dtype)  # recomputed, not saved
            gw = torch.mm(g2.t(), a).to(ctx.param_dtypes[0])
        if need_b:
            gb = g2.sum(0, dtype=torch.float32).to(ctx.param_dtypes[1])  # fp32 sums, as cuBLAS's bias epilogue
        return gh, gw, gb, None


def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`linear(gelu(h), weight, bias)` (autocast applied as eager would) keeping only h for the backward."""
    return _GeluLinear.apply(h, weight, bias, autocast_dtype(h.device.type))


def gelu_linear_ref(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`gelu_linear` in plain torch ops (saves both h and gelu(h))."""
    return nn.functional.linear(nn.functional.gelu(h), weight, bias)


class Mlp(nn.Module):
    """Position-wise MLP on (B, H, W, C): fc1 -> GELU -> fc2. Without dropout:
    - without gradients, where kernels/mlp.py takes its Triton kernel (`triton_takes`: its USE_KERNEL flag, bf16 /
      fp16 GEMMs on the Triton backend, C <= its MAX_K), the whole MLP is that one kernel, eager and compiled: the
      hidden activation is never written;
    - else without gradients, where `linear_gelu` takes its kernel (the same conditions with its own flag and
      MAX_K), fc1 -> GELU is one kernel: the hidden activation is written once instead of written, read and
      written again by a GELU pass;
    - with gradients, GELU -> fc2 runs as `gelu_linear`, which recomputes the GELU in the backward instead of
      saving its output (Inductor's partitioner would save both: benchmarks/NOTES-compile.md). The fused kernel's
      backward would recompute fc1's GEMM too, which cost more than the pass it saves (benchmarks/RESULTS.md).
    Under torch.jit.trace (fvcore's FLOP count) the plain ops."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()  # no op call per use when off
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = not isinstance(self.drop, nn.Identity) or torch.jit.is_tracing()
        if not plain and not needs_grad(x, self.fc1.weight, self.fc1.bias):
            if not needs_grad(self.fc2.weight, self.fc2.bias) and fused_mlp.triton_takes(x, self.backend):
                return fused_mlp.mlp(x, *self.fc1._autocast_params(x), *self.fc2._autocast_params(x),
                                     backend=self.backend)
            if lg.triton_takes(x, self.backend):
                return self.fc2(lg.linear_gelu(x, *self.fc1._autocast_params(x), backend=self.backend))
        h = self.fc1(x)  # (B, H, W, hidden)
        if not plain and needs_grad(h, self.fc2.weight, self.fc2.bias):
            return gelu_linear(h, self.fc2.weight, self.fc2.bias)  # (B, H, W, C)
        return self.drop(self.fc2(self.drop(self.act(h))))


class PatchMerging2D(nn.Module):
    """Vanilla-VMamba downsampling: 2x2 neighbours concatenated, LayerNorm(4C), Linear 4C -> out."""

    def __init__(self, dim: int, out_dim: int, backend: str = "auto"):
        super().__init__()
        self.norm = LayerNorm(4 * dim, autocast_out=True, backend=backend)  # feeds the Linear
        self.reduction = Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:  # shape-only branch: pad odd maps with a zero row / column
            x = nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Concatenation order (even, even), (odd, even), (even, odd), (odd, odd) — fixed by the weights.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, out)


def make_stem(cfg: VMambaConfig) -> nn.Sequential:
    """Image (B, 3, H, W) channels_last -> (B, H/4, W/4, dims[0]). Module indices match the release.

    Every norm of the model is vmbench's LayerNorm (nn.LayerNorm's state_dict and dtypes, Triton kernel on
    CUDA): PyTorch's kernel is slow on these short channel-last rows (48-768 channels)."""
    c, be = cfg.dims[0], cfg.scan_backend
    if cfg.stem == "v1":
        return nn.Sequential(
            Conv2d(cfg.in_chans, c, kernel_size=4, stride=4),  # .0
            ToChannelsLast(),
            LayerNorm(c, backend=be),  # .2
        )
    return nn.Sequential(
        Conv2d(cfg.in_chans, c // 2, kernel_size=3, stride=2, padding=1),  # .0
        ToChannelsLast(),
        LayerNorm(c // 2, backend=be),  # .2
        ToChannelsFirst(),
        nn.GELU(),
        Conv2d(c // 2, c, kernel_size=3, stride=2, padding=1),  # .5
        ToChannelsLast(),
        LayerNorm(c, backend=be),  # .7
    )


def make_downsample(version: str, dim: int, out_dim: int, backend: str) -> nn.Module:
    """(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), out_dim)."""
    if version == "v1":
        return PatchMerging2D(dim, out_dim, backend)
    return nn.Sequential(
        ToChannelsFirst(),
        Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1),  # .1
        ToChannelsLast(),
        LayerNorm(out_dim, backend=backend),  # .3
    )



class GlobalAvgPoolNHWC(nn.Module):
    """(B, H, W, C) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2))


def make_pool(global_pool: str) -> nn.Module:
    return GlobalAvgPoolNHWC() if global_pool == "avg" else nn.Identity()

