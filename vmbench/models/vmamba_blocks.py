"""VMamba's token mixer and blocks on channels-last maps (B, H, W, C): `SS2D` (in_proj, depthwise conv, the SS2D
core of vmbench.kernels, out_norm, out_proj), `VSSBlock` (pre-norm residual SS2D [+ MLP]) and `VSSLayer` (one
stage: blocks, then the downsampling). The model that stacks them is vmbench.models.vmamba.VSSM.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from vmbench.kernels import LayerNorm, ParamCache, ss2d_core
from vmbench.kernels._backend import needs_grad
from vmbench.kernels.dwconv_silu import dwconv_silu
from vmbench.kernels.dwconv_silu import triton_takes as dwconv_triton_takes

from .registry import SCAN_BACKENDS
from .vmamba_config import VMambaConfig
from .vmamba_layers import Conv2d, DropPath, Linear, Mlp

__all__ = ["SS2D", "VSSBlock", "VSSLayer", "K_DIRECTIONS"]

K_DIRECTIONS = 4  # cross-scan: row, column, and both reversed


class SS2D(nn.Module):
    """2D selective-scan mixer on (B, H, W, C).

        in_proj (C -> D [, +D for z])  -> depthwise conv -> SiLU (one kernel in compiled inference:
        kernels/dwconv_silu.py)
        -> SS2D core (cross-scan, per-direction x/dt projections, selective scan, cross-merge)
        -> LayerNorm(D) [-> * SiLU(z)] -> out_proj (D -> C)

    D = ssm_ratio * C, N = d_state, R = dt_rank, K = 4 scan directions.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        z_branch: bool = False,
        dropout: float = 0.0,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {', '.join(SCAN_BACKENDS)}; got {scan_backend!r}")
        d_inner = int(ssm_ratio * d_model)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_model, self.d_inner, self.d_state, self.dt_rank = d_model, d_inner, d_state, rank
        self.z_branch = z_branch
        self.scan_backend = scan_backend

        self.in_proj = Linear(d_model, d_inner * (2 if z_branch else 1), bias=False)
        self.act = nn.SiLU()
        self.conv2d = Conv2d(d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2,
                                groups=d_inner, bias=conv_bias)
        k = K_DIRECTIONS
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, d_inner))  # (K, R+2N, D)
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, rank))  # (K, D, R)
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))  # (K, D)
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))  # (K*D, N); A = -exp(A_logs)
        self.Ds = nn.Parameter(torch.empty(k * d_inner))  # (K*D,)
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = LayerNorm(d_inner, autocast_out=True, backend=scan_backend)  # feeds out_proj
        self.out_proj = Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # the scan parameters as the kernels take them, kept between calls that need no gradient
        self._kernel_params = ParamCache()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        """Mamba initialisation of the scan parameters.

        x_proj: nn.Linear's default U(-1/sqrt(D), 1/sqrt(D)); dt_proj weight U(-R^-1/2, R^-1/2);
        dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]; A = -(1..N) (S4D-real); D = 1.
        """
        bound = self.d_inner ** -0.5
        self.x_proj_weight.uniform_(-bound, bound)
        std = self.dt_rank ** -0.5
        self.dt_projs_weight.uniform_(-std, std)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def train(self, mode: bool = True):
        """nn.Module.train; a switch of mode also empties the kernel-form parameter cache (ParamCache: what
        trained the parameters since the last eval pass needs no version counter to be noticed)."""
        if mode != self.training:
            self._kernel_params.clear()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = self.in_proj(x)  # (B, H, W, D) or (B, H, W, 2D)
        if self.z_branch:
            x, z = x.chunk(2, dim=-1)  # (B, H, W, D) each
        if self._fused_conv(x):  # compiled inference on the Triton backend: conv + SiLU as one kernel
            x = dwconv_silu(x, *self.conv2d._autocast_params(x), backend=self.scan_backend)
        else:
            x = self.conv2d(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # depthwise conv on a (B, D, H, W) view
            x = self.act(x)
        y = ss2d_core(x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds,
                      backend=self.scan_backend, cache=self._kernel_params)  # (B, H, W, D), x's dtype
        y = self.out_norm(y)
        if self.z_branch:
            y = y * self.act(z)
        return self.dropout(self.out_proj(y))  # (B, H, W, C)

    def _fused_conv(self, x: torch.Tensor) -> bool:
        """Calls without gradients where `dwconv_silu` takes its kernel (`triton_takes`: USE_KERNEL, inside a
        compiled graph, bf16 / fp16 on the Triton backend); calls with gradients keep cuDNN's conv and its saved
        output (the kernel's backward would recompute it)."""
        return not torch.jit.is_tracing() and dwconv_triton_takes(x, self.scan_backend) \
            and not needs_grad(x, self.conv2d.weight, self.conv2d.bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, z_branch={self.z_branch}, scan_backend={self.scan_backend!r}")


class VSSBlock(nn.Module):
    """Pre-norm residual block on (B, H, W, C): x + SS2D(LN(x)) [then x + MLP(LN(x))]."""

    def __init__(self, dim: int, drop_path: float, cfg: VMambaConfig):
        super().__init__()
        # The block norms feed Linears (in_proj, fc1): vmbench's LayerNorm emits their autocast dtype directly.
        self.norm = LayerNorm(dim, autocast_out=True, backend=cfg.scan_backend)
        self.op = SS2D(dim, d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, dt_rank=cfg.dt_rank,
                       d_conv=cfg.d_conv, conv_bias=cfg.conv_bias, z_branch=cfg.z_branch,
                       dropout=cfg.ssm_drop_rate, scan_backend=cfg.scan_backend)
        self.drop_path = DropPath(drop_path, active=cfg.drop_path_rate > 0)  # rate 0 in block 0, same graph
        self.has_mlp = cfg.mlp_ratio > 0
        if self.has_mlp:
            self.norm2 = LayerNorm(dim, autocast_out=True, backend=cfg.scan_backend)
            self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), drop=cfg.mlp_drop_rate, backend=cfg.scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.has_mlp:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VSSLayer(nn.Module):
    """One stage: `blocks` at a fixed resolution, then `downsample` (Identity after the last stage)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.blocks(x))
