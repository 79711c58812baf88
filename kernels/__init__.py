"""vmbench.kernels — VMamba's selective scan, cross-scan/merge and SS2D core.

Every op comes as a pair: a fast Triton kernel and a plain-torch `_ref` twin
with the same signature. `backend="auto"` picks Triton on CUDA.
"""
from ._backend import BACKENDS, resolve_backend, triton_available
from .cross_scan import (cross_merge, cross_merge_diag_ref, cross_merge_ref, cross_scan, cross_scan_diag_ref,
                         cross_scan_ref)
from .layer_norm import LayerNorm, layer_norm, layer_norm_ref
from .selective_scan import selective_scan, selective_scan_loop, selective_scan_ref
from ._param_cache import ParamCache, derived, frozen_parameters
from .ss2d import ss2d_core, ss2d_core_ref

__all__ = [
    "BACKENDS", "resolve_backend", "triton_available",
    "selective_scan", "selective_scan_ref", "selective_scan_loop",
    "cross_scan", "cross_scan_ref", "cross_merge", "cross_merge_ref", "cross_scan_diag_ref", "cross_merge_diag_ref",
    "ss2d_core", "ss2d_core_ref", "ParamCache", "derived", "frozen_parameters",
    "layer_norm", "layer_norm_ref", "LayerNorm",
]
