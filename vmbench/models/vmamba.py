"""VMamba (arXiv 2401.10166), channels-last, on vmbench's SS2D kernels: the model and its variants.

`VSSM` assembles the stem, the VSS stages and the classifier; `_create_vmamba` is the one builder behind the
registered variants (`vmamba_t` ... `vanilla_vmamba_b`: VMamba [sXlY] "v05_noz" and Vanilla VMamba "v0");
`load_weights` / `convert_official_state_dict` read official checkpoints (keys identical, legacy names mapped).
The parts live in vmamba_config.py (VMambaConfig), vmamba_layers.py (plain layers, stem, downsampling),
vmamba_blocks.py (SS2D, VSSBlock, VSSLayer) and vmamba_keys.py; every public name is importable from here.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices  # timm 1.0.x: stage indices as timm resolves them

from vmbench.kernels import LayerNorm

from .graph_replay import GraphReplay
from .registry import SCAN_BACKENDS, register_model
from .vmamba_blocks import K_DIRECTIONS, SS2D, VSSBlock, VSSLayer
from .vmamba_config import GLOBAL_POOLS, VMambaConfig
from .vmamba_keys import convert_in_place, official_compat_hook
from .vmamba_layers import (Conv2d, DropPath, GlobalAvgPoolNHWC, Linear, Mlp, PatchMerging2D, ToChannelsFirst,
                            ToChannelsLast, make_downsample, make_pool, make_stem)

__all__ = [
    "VMambaConfig", "VSSM", "VSSBlock", "VSSLayer", "SS2D", "Mlp", "PatchMerging2D", "Linear", "Conv2d",
    "ToChannelsLast", "ToChannelsFirst", "GlobalAvgPoolNHWC", "DropPath", "K_DIRECTIONS",
    "set_scan_backend", "load_weights", "convert_official_state_dict",
]


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
        self.patch_embed = make_stem(cfg)
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
            down = nn.Identity() if last else make_downsample(cfg.downsample, dim, cfg.dims[i + 1],
                                                              cfg.scan_backend)
            self.layers.append(VSSLayer(blocks, down))
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm(self.num_features, backend=cfg.scan_backend),
            pool=make_pool(cfg.global_pool),
            drop=nn.Dropout(cfg.drop_rate),
            head=nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity(),
        ))
        self.apply(self._init_weights)
        self.register_load_state_dict_pre_hook(official_compat_hook)
        self.register_load_state_dict_post_hook(_drop_graphs)  # load_state_dict(assign=True) replaces tensors
        # The drop-path keep probabilities (buffers, see DropPath) are equal on every rank: DDP need not broadcast
        # them before every forward, as it does with other buffers.
        self._ddp_params_and_buffers_to_ignore = [n for n, _ in self.named_buffers() if n.endswith(".keep_prob")]
        # CUDA calls replay CUDA graphs (graph_replay.py), eval and training; dropped at every change below
        self.graph_replay = GraphReplay()

    def train(self, mode: bool = True):
        """nn.Module.train; also drops the CUDA graphs of earlier calls (and the memory they hold)."""
        self.graph_replay.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): parameters move, graphs go
        self.graph_replay.clear()
        return super()._apply(fn, *args, **kwargs)

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
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.classifier.pool = make_pool(global_pool)
        self.graph_replay.clear()
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
        self.graph_replay.clear()
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
        if x.is_cuda and not torch.compiler.is_compiling():
            return self.graph_replay(self, self._forward, x)  # the eager forward where a replay does not apply
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
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
        elif isinstance(m, VSSM):
            m.graph_replay.clear()  # graphs recorded with the previous kernels
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no SS2D module; scan backends apply to VMamba models only")
    return model


def _drop_graphs(module: nn.Module, _incompatible) -> None:
    module.graph_replay.clear()


def convert_official_state_dict(model: nn.Module, sd: dict) -> dict:
    """A copy of `sd` with official/legacy VMamba key names and 1x1 weight shapes mapped onto `model`'s."""
    out = dict(sd)
    if any(k.startswith("module.") for k in out) and not any(k.startswith("module.") for k in model.state_dict()):
        out = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in out.items()}
    if isinstance(model, VSSM):
        convert_in_place(model, out)
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
