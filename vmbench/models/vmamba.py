"""VMamba (arXiv 2401.10166), channels-last, on vmbench's SS2D kernels.

Two architecture generations share one builder:

* VMamba [sXlY] ("v05_noz"): SS2D with d_state 1, no gate branch, 3x3 depthwise conv
  without bias, LayerNorm on the scan output, a GELU MLP after every SS2D, a two-conv
  stem ("v2") and 3x3 stride-2 conv downsampling ("v3").
* Vanilla VMamba ("v0"): d_state 16, ssm_ratio 2, a SiLU-gated z-branch, conv bias,
  no MLP, a 4x4 patchify stem ("v1") and Swin-style patch merging.

Layout: every feature map is (B, H, W, C) end to end, so LayerNorm is a plain
last-dim norm and 1x1 projections are nn.Linear. Convolutions see a zero-copy
permuted view (B, C, H, W) whose memory is channels_last. Parameter names and
shapes equal the official release's, so its checkpoints load strictly
(`load_weights`, which also accepts the legacy key names and 1x1 weights stored
as (out, in, 1, 1)).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath, trunc_normal_
from timm.models._features import feature_take_indices  # timm 1.0.x: stage indices as timm resolves them

from vmbench.kernels import LayerNorm, ParamCache, derived, ss2d_core
from vmbench.kernels._backend import needs_grad
from vmbench.kernels.layer_norm import autocast_dtype

from .registry import SCAN_BACKENDS, register_model

__all__ = [
    "VMambaConfig", "VSSM", "VSSBlock", "SS2D", "Mlp", "PatchMerging2D",
    "set_scan_backend", "load_weights", "convert_official_state_dict",
]

K_DIRECTIONS = 4  # cross-scan: row, column, and both reversed
_GLOBAL_POOLS = ("avg", "")


# --------------------------------------------------------------------------- #
# Config                                                                      #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class VMambaConfig:
    """Everything that shapes a VMamba model. Defaults are VMamba-T [s1l8]."""

    dims: int | tuple[int, ...] = 96  # int: stage i gets dims * 2**i
    depths: tuple[int, ...] = (2, 2, 8, 2)
    d_state: int = 1
    ssm_ratio: float = 1.0  # d_inner = ssm_ratio * dim
    dt_rank: int | str = "auto"  # "auto": ceil(dim / 16)
    d_conv: int = 3  # depthwise conv kernel inside SS2D
    conv_bias: bool = False
    z_branch: bool = False  # v0: y * SiLU(z) gate from a second in_proj half
    mlp_ratio: float = 4.0  # 0: no MLP sub-block (v0)
    stem: str = "v2"  # "v1": 4x4/4 conv + LN; "v2": 3x3/2 conv, LN, GELU, 3x3/2 conv, LN
    downsample: str = "v3"  # "v1": patch merging (LN + Linear 4C->2C); "v3": 3x3/2 conv + LN
    drop_path_rate: float = 0.2
    ssm_drop_rate: float = 0.0
    mlp_drop_rate: float = 0.0
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"  # "avg": mean over H, W; "": no pooling (forward returns (B, H, W, C))
    drop_rate: float = 0.0  # dropout before the classifier's Linear (timm's `drop_rate`)
    scan_backend: str = "auto"

    def __post_init__(self):
        dims = self.dims
        if isinstance(dims, int):
            dims = tuple(dims * 2**i for i in range(len(self.depths)))
        object.__setattr__(self, "dims", tuple(int(d) for d in dims))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be a non-empty list of positive ints, got {self.depths}")
        if len(self.dims) != len(self.depths):
            raise ValueError(f"dims {self.dims} and depths {self.depths} must have the same length")
        if any(d < 1 for d in self.dims):
            raise ValueError(f"dims must be positive, got {self.dims}")
        if self.d_state < 1:
            raise ValueError(f"d_state must be >= 1, got {self.d_state}")
        if self.ssm_ratio <= 0:
            raise ValueError(f"ssm_ratio must be > 0, got {self.ssm_ratio}")
        if not (self.dt_rank == "auto" or (isinstance(self.dt_rank, int) and self.dt_rank >= 1)):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ValueError(f"d_conv must be a positive odd int, got {self.d_conv}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {self.mlp_ratio}")
        if self.stem not in ("v1", "v2"):
            raise ValueError(f"stem must be 'v1' or 'v2', got {self.stem!r}")
        if self.stem == "v2" and self.dims[0] % 2:
            raise ValueError(f"stem 'v2' halves dims[0] in its first conv; dims[0]={self.dims[0]} must be even")
        if self.downsample not in ("v1", "v3"):
            raise ValueError(f"downsample must be 'v1' or 'v3', got {self.downsample!r}")
        if self.global_pool not in _GLOBAL_POOLS:
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {self.global_pool!r}")
        for name in ("drop_path_rate", "ssm_drop_rate", "mlp_drop_rate", "drop_rate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {', '.join(SCAN_BACKENDS)}; got {self.scan_backend!r}")
        if self.in_chans < 1 or self.num_classes < 0:
            raise ValueError(f"in_chans must be >= 1 and num_classes >= 0; got {self.in_chans}, {self.num_classes}")


# --------------------------------------------------------------------------- #
# Layers                                                                      #
# --------------------------------------------------------------------------- #
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
    """nn.Conv2d (same state_dict) that keeps its autocast-dtype weights between no-gradient calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_casts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, *self._autocast_params(x))


class Mlp(nn.Module):
    """Position-wise MLP on (B, H, W, C): fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()  # no op call per use when off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))  # (B, H, W, hidden)
        return self.drop(self.fc2(x))  # (B, H, W, C)


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


def _stem(cfg: VMambaConfig) -> nn.Sequential:
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


def _downsample(version: str, dim: int, out_dim: int, backend: str) -> nn.Module:
    """(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), out_dim)."""
    if version == "v1":
        return PatchMerging2D(dim, out_dim, backend)
    return nn.Sequential(
        ToChannelsFirst(),
        Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1),  # .1
        ToChannelsLast(),
        LayerNorm(out_dim, backend=backend),  # .3
    )


class SS2D(nn.Module):
    """2D selective-scan mixer on (B, H, W, C).

        in_proj (C -> D [, +D for z])  -> depthwise conv -> SiLU
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
        x = self.conv2d(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # depthwise conv on a (B, D, H, W) view
        x = self.act(x)
        y = ss2d_core(x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds,
                      backend=self.scan_backend, cache=self._kernel_params)  # (B, H, W, D), x's dtype
        y = self.out_norm(y)
        if self.z_branch:
            y = y * self.act(z)
        return self.dropout(self.out_proj(y))  # (B, H, W, C)

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
        self.drop_path = DropPath(drop_path)
        self.has_mlp = cfg.mlp_ratio > 0
        if self.has_mlp:
            self.norm2 = LayerNorm(dim, autocast_out=True, backend=cfg.scan_backend)
            self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), drop=cfg.mlp_drop_rate)

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


class GlobalAvgPoolNHWC(nn.Module):
    """(B, H, W, C) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2))


def _pool(global_pool: str) -> nn.Module:
    return GlobalAvgPoolNHWC() if global_pool == "avg" else nn.Identity()


class VSSM(nn.Module):
    """VMamba backbone + classifier. Input (B, in_chans, H, W); output (B, num_classes).

    Besides the plain forward it has timm's model API (what `timm.create_model` and timm's scripts use):
    `forward_features` (B, H/32, W/32, C) · `forward_head(x, pre_logits=)` · `reset_classifier` ·
    `forward_intermediates` (the four stage outputs, NCHW by default: `features_only=True` is built on it) ·
    `set_grad_checkpointing` (torch.utils.checkpoint around every block) · `group_matcher` (layer-wise lr
    decay) · `no_weight_decay`. Stage i's output has dims[i] channels at stride 4 * 2**i (`feature_info`).
    """

    output_fmt = "NHWC"  # forward_features' layout (timm reads it to find the channel axis)

    def __init__(self, cfg: VMambaConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = cfg.dims[-1]
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=d, reduction=4 * 2**i, module=f"layers.{i}.blocks")
                             for i, d in enumerate(cfg.dims)]
        self.patch_embed = _stem(cfg)
        n_blocks = sum(cfg.depths)
        # Stochastic depth rises linearly from 0 to drop_path_rate over all blocks (plain
        # Python, so the model can also be built on the meta device).
        dpr = [cfg.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        start = 0
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            blocks = [VSSBlock(dim, dpr[start + j], cfg) for j in range(depth)]
            start += depth
            last = i == len(cfg.depths) - 1
            down = nn.Identity() if last else _downsample(cfg.downsample, dim, cfg.dims[i + 1], cfg.scan_backend)
            self.layers.append(VSSLayer(blocks, down))
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm(self.num_features, backend=cfg.scan_backend),
            pool=_pool(cfg.global_pool),
            drop=nn.Dropout(cfg.drop_rate),
            head=nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity(),
        ))
        self.apply(self._init_weights)
        self.register_load_state_dict_pre_hook(_official_compat_hook)

    @property
    def scan_backend(self) -> str:
        return next(m.scan_backend for m in self.modules() if isinstance(m, SS2D))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Convs keep PyTorch's default init; SS2D's scan parameters have their own (reset_ssm_parameters).
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- timm's model API ------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (A_logs, Ds)."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups in depth order (timm's layer-wise lr decay): stem, then blocks stage by stage,
        each stage's downsample after its blocks; the classifier norm joins the last block (timm's 99999:
        "the previous group"); the head is left unmatched (last)."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99998,)),
                (r"^classifier\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block's activations in backward (torch.utils.checkpoint, non-reentrant, RNG state
        kept: drop path and dropout draw the same masks), storing only the blocks' inputs."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head with `num_classes` outputs (0: none, forward returns features); `global_pool` "avg"
        or "" (no pooling: (B, H, W, C) out) replaces the pooling when given."""
        if global_pool is not None:
            if global_pool not in _GLOBAL_POOLS:
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.classifier.pool = _pool(global_pool)
        ref = self.patch_embed[0].weight  # device and dtype for the new head
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(head)
        self.classifier.head = head.to(device=ref.device, dtype=ref.dtype)
        self.num_classes = num_classes
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes,
                                       global_pool=self.cfg.global_pool if global_pool is None else global_pool)

    def _run_blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for blk in blocks:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            return x
        return blocks(x)

    def _stem_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # stem convs then emit channels_last memory
        return self.patch_embed(x)  # (B, H/4, W/4, dims[0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, H/32, W/32, dims[-1]) (before the classifier norm)."""
        x = self._stem_nhwc(x)
        for layer in self.layers:
            x = layer.downsample(self._run_blocks(layer.blocks, x))
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs (before each downsample) and, unless `intermediates_only`, forward_features' output.

        indices: stages to return (None: all; int n: the last n; negatives count from the end).
        norm: apply the classifier norm to the last stage's output. stop_early: skip stages after the last
        one taken. output_fmt: "NCHW" (B, dims[i], H_i, W_i) views of the channels-last maps, or "NHWC".
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        intermediates = []
        x = self._stem_nhwc(x)
        layers = self.layers if torch.jit.is_scripting() or not stop_early else self.layers[:max_index + 1]
        for i, layer in enumerate(layers):
            x = self._run_blocks(layer.blocks, x)  # (B, H_i, W_i, dims[i])
            if i in take:
                y = self.classifier.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
            x = layer.downsample(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages (and the downsample) after the last of `indices`; the classifier norm / head too
        when asked. Returns the absolute indices kept (what timm's FeatureGetterNet calls)."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = nn.Identity()
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, H, W, C) features -> (B, num_classes) logits, or the pooled (B, C) features with pre_logits."""
        c = self.classifier
        x = c.drop(c.pool(c.norm(x)))
        return x if pre_logits else c.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- #
# Backend switch, checkpoints                                                 #
# --------------------------------------------------------------------------- #
def set_scan_backend(model: nn.Module, name: str) -> nn.Module:
    """Set the kernel backend ("auto" | "torch" | "triton") of every SS2D and block LayerNorm in `model`."""
    if name not in SCAN_BACKENDS:
        raise ValueError(f"scan backend must be one of {', '.join(SCAN_BACKENDS)}; got {name!r}")
    n = 0
    for m in model.modules():
        if isinstance(m, SS2D):
            m.scan_backend = name
            n += 1
        elif isinstance(m, LayerNorm):
            m.backend = name
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no SS2D module; scan backends apply to VMamba models only")
    return model


# Legacy names (early official releases) -> current names; applied to keys under the model's prefix.
_LEGACY_RENAMES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)ln_1\."), r"\1norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)self_attention\."), r"\1op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)


def _convert_in_place(model: nn.Module, sd: dict, prefix: str = "") -> None:
    for key in [k for k in sd if k.startswith(prefix)]:
        rest = key[len(prefix):]
        new = rest
        for pat, repl in _LEGACY_RENAMES:
            new = pat.sub(repl, new)
        if new != rest:
            sd[prefix + new] = sd.pop(key)
    # 1x1 projections saved as conv weights (out, in, 1, 1) -> nn.Linear's (out, in).
    for name, p in model.named_parameters():
        t = sd.get(prefix + name)
        if isinstance(t, torch.Tensor) and p.dim() == 2 and t.dim() == 4 and t.shape[2:] == (1, 1):
            sd[prefix + name] = t[:, :, 0, 0]


def _official_compat_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    _convert_in_place(module, state_dict, prefix)


def convert_official_state_dict(model: nn.Module, sd: dict) -> dict:
    """A copy of `sd` with official/legacy VMamba key names and 1x1 weight shapes mapped onto `model`'s."""
    out = dict(sd)
    if any(k.startswith("module.") for k in out) and not any(k.startswith("module.") for k in model.state_dict()):
        out = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in out.items()}
    if isinstance(model, VSSM):
        _convert_in_place(model, out)
    return out


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a state dict strictly into `model` (in place) and return it.

    The file holds a state dict bare or under the key "model" (read with
    `torch.load(weights_only=True)`; see vmbench.weights for every format). For VMamba,
    official checkpoints load as is: legacy key names (patch_embed.proj/norm, ln_1,
    self_attention, norm, head) are renamed and 1x1 weights stored as (out, in, 1, 1) are
    reshaped. Any missing or unexpected key, or a shape mismatch, raises ValueError naming
    a few of them.
    """
    from vmbench.weights import load_strict, read_weights

    load_strict(model, read_weights(path))
    return model


# --------------------------------------------------------------------------- #
# Registered variants (metadata: vmbench.models.registry.VMAMBA_ENTRIES)       #
# --------------------------------------------------------------------------- #
_FIELDS = {f.name for f in dataclasses.fields(VMambaConfig)}

# Vanilla VMamba (v0) differs from the VMamba defaults in these fields.
_V0 = dict(d_state=16, ssm_ratio=2.0, conv_bias=True, z_branch=True, mlp_ratio=0.0, stem="v1", downsample="v1")


def _create_vmamba(arch: dict[str, Any], num_classes: int = 1000, scan_backend: str = "auto",
                   drop_path_rate: float | None = None, **overrides: Any) -> VSSM:
    """The one builder behind every variant; `overrides` may change any VMambaConfig field."""
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown VMamba option(s) {', '.join(unknown)}; valid: {', '.join(sorted(_FIELDS))}")
    fields = {**arch, **overrides, "num_classes": num_classes, "scan_backend": scan_backend}
    if drop_path_rate is not None:
        fields["drop_path_rate"] = drop_path_rate
    return VSSM(VMambaConfig(**fields))


@register_model
def vmamba_t(**kw) -> VSSM:
    return _create_vmamba(dict(dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2), **kw)


@register_model
def vmamba_s(**kw) -> VSSM:
    return _create_vmamba(dict(dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3), **kw)


@register_model
def vmamba_b(**kw) -> VSSM:
    return _create_vmamba(dict(dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6), **kw)


@register_model
def vmamba_s_s1l20(**kw) -> VSSM:
    return _create_vmamba(dict(dims=96, depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.3), **kw)


@register_model
def vmamba_b_s1l20(**kw) -> VSSM:
    return _create_vmamba(dict(dims=128, depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.5), **kw)


@register_model
def vmamba_t_s2l5(**kw) -> VSSM:
    return _create_vmamba(dict(dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0, drop_path_rate=0.2), **kw)


@register_model
def vanilla_vmamba_t(**kw) -> VSSM:
    return _create_vmamba(dict(_V0, dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2), **kw)


@register_model
def vanilla_vmamba_s(**kw) -> VSSM:
    return _create_vmamba(dict(_V0, dims=96, depths=(2, 2, 27, 2), drop_path_rate=0.3), **kw)


@register_model
def vanilla_vmamba_b(**kw) -> VSSM:
    return _create_vmamba(dict(_V0, dims=128, depths=(2, 2, 27, 2), drop_path_rate=0.6), **kw)
