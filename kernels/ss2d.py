"""SS2D core of VMamba: cross-scan -> per-direction projections -> selective scan -> cross-merge.

    x (B, H, W, D) --cross_scan--> xs (B, 4, D, L)
    x_dbl = x_proj_weight[k] @ xs[:, k]          (B, 4, R + 2N, L) -> dts_r, Bs, Cs
    dts   = dt_projs_weight[k] @ dts_r           (B, 4, D, L)
    ys    = selective_scan(xs, dts, -exp(A_logs), Bs, Cs, Ds, dt_projs_bias, softplus)
    y     = cross_merge(ys)                      (B, H, W, D)

`ss2d_core(backend="triton")` runs the Triton composition: Triton cross-scan / cross-merge and
selective scan, with x_proj applied on the map (one well-shaped GEMM) instead of on the four
directional copies. `fused=True` selects the fused forward of kernels/_ss2d_triton.py (no
(B, 4, D, L) tensor in HBM) for inference.
"""
from __future__ import annotations

import torch

from ._backend import cdiv, graph_capture, needs_grad, resolve_backend
from ._param_cache import ParamCache, derived, frozen_parameters
from .cross_scan import cross_merge, cross_merge_ref, cross_scan, cross_scan_ref
from .selective_scan import selective_scan, selective_scan_ref

__all__ = ["ss2d_core", "ss2d_core_ref", "ParamCache", "frozen_parameters"]


def _check(x, x_proj_weight, dt_projs_weight, A_logs):
    if x.dim() != 4:
        raise ValueError(f"x must be (B, H, W, D); got {tuple(x.shape)}")
    b, h, w, d = x.shape
    k, r_2n, d_w = x_proj_weight.shape
    kd, n = A_logs.shape
    r = dt_projs_weight.shape[-1]
    if d_w != d or kd != k * d or r_2n != r + 2 * n or dt_projs_weight.shape != (k, d, r):
        raise ValueError(
            f"inconsistent SS2D shapes: x {tuple(x.shape)}, x_proj_weight {tuple(x_proj_weight.shape)}, "
            f"dt_projs_weight {tuple(dt_projs_weight.shape)}, A_logs {tuple(A_logs.shape)}")
    return b, h, w, d, k, r, n


def _ss2d(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, scan, xscan, xmerge):
    b, h, w, d, k, r, n = _check(x, x_proj_weight, dt_projs_weight, A_logs)
    L = h * w
    xs = xscan(x)  # (B, K, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight.to(xs.dtype))  # (B, K, R+2N, L)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight.to(dts.dtype))  # (B, K, D, L)
    ys = scan(
        xs.reshape(b, k * d, L), dts.reshape(b, k * d, L),
        -torch.exp(A_logs.float()), Bs.contiguous(), Cs.contiguous(),
        Ds.float(), dt_projs_bias.reshape(-1).float(), True, True,
    )  # (B, K*D, L) fp32
    return xmerge(ys.view(b, k, d, L), h, w).to(x.dtype)  # (B, H, W, D)


def _kernel_params(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, k: int, r: int, n: int):
    """The parameters as `_ss2d_mapwise`'s kernels take them, in x's dtype: x_proj's weight (D, K*C) with each
    direction's R + 2N rows padded with zero rows to C, the next multiple of 8, and dt_proj's weight padded with
    zero columns to (K, D, C); in fp32: A = -exp(A_logs), Ds and the bias (K*D,)."""
    d = x.shape[-1]
    c = _rows8(r, n)
    if c > r + 2 * n:
        x_proj_weight = torch.nn.functional.pad(x_proj_weight, (0, 0, 0, c - r - 2 * n))
    xw = x_proj_weight.reshape(k * c, d).t().to(x.dtype)
    wdt = torch.nn.functional.pad(dt_projs_weight, (0, c - r)).to(x.dtype)
    return xw, wdt, -torch.exp(A_logs.float()), Ds.float(), dt_projs_bias.reshape(-1).float()


def _rows8(r: int, n: int) -> int:
    """Rows per direction of the projections on the Triton path: R + 2N rounded up to a multiple of 8."""
    return cdiv(r + 2 * n, 8) * 8


def _ss2d_mapwise(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, cache: dict | None = None):
    """`_ss2d` on the Triton kernels, with the projections applied where they are cheapest.

    x_proj is position-wise, so it runs as one (B·L, D) @ (D, K·C) GEMM on the channels-last map;
    the small result is cross-scanned and each direction keeps its own C rows: dt_r, B, C (R + 2N)
    and zero rows up to C, the next multiple of 8. dt_proj runs on those rows with the weight
    padded from R to C columns (zeros against the B / C / padding rows): the GEMM's inner dimension
    is a multiple of 8 at every stage (R + 2N = 8, 14, 26, 50 in VMamba-T), which keeps cuBLAS on
    aligned kernels for the forward and for the weight gradient. Same function as `_ss2d`; the
    FLOP count of the model (fvcore, torch path) is unchanged.

    Cross-scan, dt_proj, scan and cross-merge run as one autograd.Function (eager) or registered op
    (graph capture) that recomputes the (B, K, D, L) scan inputs in the backward instead of saving
    them (kernels/_ss2d_recompute.py).

    `cache` (a ParamCache the caller keeps, e.g. per module): when nothing needs a gradient, the derived
    parameters (`_kernel_params`) are kept there and reused while its key holds (see ParamCache).
    """
    from ._ss2d_recompute import ss2d_scan_recompute

    b, h, w, d, k, r, n = _check(x, x_proj_weight, dt_projs_weight, A_logs)
    params = (x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    if cache is None or needs_grad(x, *params) or graph_capture():
        kp = _kernel_params(x, *params, k, r, n)
    else:
        kp = derived(cache, "params", params, lambda: _kernel_params(x, *params, k, r, n), x.dtype, x.device)
    xw, wdt, A, Ds, bias = kp
    p = torch.mm(x.reshape(b * h * w, d), xw).view(b, h, w, -1)  # (B, H, W, K*C); mm: fewer ops than matmul
    return ss2d_scan_recompute(x.contiguous(), p, wdt, A, Ds, bias, r, n)  # (B, H, W, D), x.dtype


def ss2d_core_ref(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """SS2D core in plain torch.

    Args:
        x:               (B, H, W, D) channels-last, fp32 / fp16 / bf16.
        x_proj_weight:   (4, R + 2N, D) — per-direction projection to (dt_rank, B, C).
        dt_projs_weight: (4, D, R)      — per-direction low-rank dt projection.
        dt_projs_bias:   (4, D)         — dt bias (fp32).
        A_logs:          (4*D, N)       — A = -exp(A_logs) (fp32).
        Ds:              (4*D,)         — skip (fp32).
    Returns:
        y: (B, H, W, D) in x's dtype — the four directions' scan outputs summed per position.
    """
    return _ss2d(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                 selective_scan_ref, cross_scan_ref, cross_merge_ref)


def ss2d_core(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend: str = "auto",
              fused: bool = False, cache: dict | None = None):
    """`ss2d_core_ref` with a chosen backend ("auto" | "torch" | "triton").

    "torch": the plain-torch composition. "triton": the Triton composition (cross-scan,
    map-wise projections, Triton selective scan, cross-merge), differentiable; with `fused=True`
    and no input needing a gradient, the fused forward of kernels/_ss2d_triton.py (directions
    never materialised; slower than the composition on H100/H200, see benchmarks/NOTES-ss2d.md).
    `cache`: a ParamCache kept by the caller across calls (the SS2D module keeps one), where the Triton path
    keeps the parameters in the form its kernels take while no gradient is needed.
    All compute `ss2d_core_ref`'s function.
    """
    be = resolve_backend(backend, x.device)
    if be == "triton":
        params = (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
        if fused:
            from ._ss2d_triton import fused_supported, ss2d_fused_forward

            _, _, _, _, k, _, _ = _check(x, x_proj_weight, dt_projs_weight, A_logs)
            if not needs_grad(*params) and k == 4 and fused_supported(x):
                return ss2d_fused_forward(*params)
        return _ss2d_mapwise(*params, cache=cache)
    return _ss2d(
        x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
        lambda *a: selective_scan(*a, backend=be),
        lambda t: cross_scan(t, True, backend=be),
        lambda t, H, W: cross_merge(t, H, W, True, backend=be),
    )
