"""Cross-scan / cross-merge: VMamba's four traversal orders of an H x W map and their adjoint.

Direction k of the scan visits positions in this order (L = H*W):
    k = 0: row-major        l -> (h, w) = (l // W, l % W)
    k = 1: column-major     l -> (h, w) = (l % H, l // H)
    k = 2: row-major, reversed
    k = 3: column-major, reversed
`cross_scan` gathers the four sequences; `cross_merge` scatters four sequences
back to their (h, w) positions and sums them (the adjoint of `cross_scan`).
"""
from __future__ import annotations

import torch

from ._backend import resolve_backend

__all__ = ["cross_scan", "cross_scan_ref", "cross_merge", "cross_merge_ref", "cross_scan_diag_ref",
           "cross_merge_diag_ref"]


def _to_bchw(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-d feature map, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2) if channels_last else x


def cross_scan_ref(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Four directional sequences of a feature map.

    Args:
        x: (B, H, W, C) if channels_last else (B, C, H, W); any float dtype.
    Returns:
        xs: (B, 4, C, H*W), x's dtype, contiguous.
    """
    xc = _to_bchw(x, channels_last)  # (B, C, H, W) view
    b, c, h, w = xc.shape
    row = xc.reshape(b, c, h * w)  # (B, C, L) row-major
    col = xc.transpose(2, 3).reshape(b, c, h * w)  # (B, C, L) column-major
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


def cross_merge_ref(ys: torch.Tensor, H: int, W: int, channels_last: bool = True) -> torch.Tensor:
    """Sum four directional sequences back onto the map (adjoint of `cross_scan_ref`).

    Args:
        ys: (B, 4, C, H*W), any float dtype.
    Returns:
        y: (B, H, W, C) if channels_last else (B, C, H, W), ys' dtype, contiguous.
    """
    if ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != H * W:
        raise ValueError(f"ys must be (B, 4, C, {H}*{W}); got {tuple(ys.shape)}")
    b, _, c, L = ys.shape
    row = ys[:, 0] + ys[:, 2].flip(-1)  # (B, C, L) in row-major order
    col = ys[:, 1] + ys[:, 3].flip(-1)  # (B, C, L) in column-major order
    y = row.view(b, c, H, W) + col.view(b, c, W, H).transpose(2, 3)  # (B, C, H, W)
    return y.permute(0, 2, 3, 1).contiguous() if channels_last else y.contiguous()


def cross_scan_diag_ref(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Direction k's sequence of channel block k only: x has 4 blocks of C channels (e.g. SS2D's per-direction
    projections computed on the map) and xs[:, k] = cross_scan_ref(x)[:, k, k*C:(k+1)*C].

    Args:
        x: (B, H, W, 4C) if channels_last else (B, 4C, H, W); any float dtype.
    Returns:
        xs: (B, 4, C, H*W), x's dtype, contiguous.
    """
    xs = cross_scan_ref(x, channels_last)
    b, _, c4, L = xs.shape
    if c4 % 4:
        raise ValueError(f"cross_scan_diag: channels ({c4}) must be 4 blocks, one per direction")
    return xs.view(b, 4, 4, c4 // 4, L).diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2).contiguous()


def cross_merge_diag_ref(ys: torch.Tensor, H: int, W: int, channels_last: bool = True) -> torch.Tensor:
    """Adjoint of `cross_scan_diag_ref`: direction k's sequence goes back to channel block k of the map.

    Args:
        ys: (B, 4, C, H*W), any float dtype.
    Returns:
        y: (B, H, W, 4C) if channels_last else (B, 4C, H, W), ys' dtype, contiguous.
    """
    if ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != H * W:
        raise ValueError(f"ys must be (B, 4, C, {H}*{W}); got {tuple(ys.shape)}")
    b, _, c, L = ys.shape
    full = ys.new_zeros(b, 4, 4, c, L)  # direction j's order of every block; only block j is non-zero
    full.diagonal(dim1=1, dim2=2).copy_(ys.permute(0, 2, 3, 1))
    return cross_merge_ref(full.view(b, 4, 4 * c, L), H, W, channels_last)


def cross_scan(x: torch.Tensor, channels_last: bool = True, backend: str = "auto") -> torch.Tensor:
    """`cross_scan_ref` with a chosen backend ("auto" | "torch" | "triton")."""
    if resolve_backend(backend, x.device) == "triton":
        from ._cross_scan_triton import cross_scan_triton

        return cross_scan_triton(x, channels_last)
    return cross_scan_ref(x, channels_last)


def cross_merge(ys: torch.Tensor, H: int, W: int, channels_last: bool = True, backend: str = "auto") -> torch.Tensor:
    """`cross_merge_ref` with a chosen backend ("auto" | "torch" | "triton")."""
    if resolve_backend(backend, ys.device) == "triton":
        from ._cross_scan_triton import cross_merge_triton

        return cross_merge_triton(ys, H, W, channels_last)
    return cross_merge_ref(ys, H, W, channels_last)
