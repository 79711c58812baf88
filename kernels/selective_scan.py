"""Selective scan (the S6 recurrence of Mamba / VMamba), VMamba layout.

For every batch b, channel c = k*D + d (direction k, inner channel d) and state n:

    delta_t = softplus(delta_raw_t + delta_bias_c)          (if delta_softplus)
    h_t[n]  = exp(delta_t * A[c, n]) * h_{t-1}[n] + delta_t * B[b, k, n, t] * u_t
    y_t     = sum_n C[b, k, n, t] * h_t[n] + D[c] * u_t

B and C are shared by the D channels of one direction k. This module holds the
plain-torch twin (`selective_scan_ref`, parallel over L) and the public
`selective_scan` entry point that picks a backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import resolve_backend

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_loop", "SCAN_TRACE_NAMES"]

# Node kinds the scan shows up as under `torch.jit.trace` (what fvcore's handle keys on):
# the torch backend is the custom op below, the Triton backend the custom op in
# _selective_scan_triton.py (a triton_op; its node has two outputs: y and the chunk states).
SCAN_TRACE_NAMES: tuple[str, ...] = ("vmbench::selective_scan_torch", "vmbench::selective_scan_triton")


def _check_shapes(u, delta, A, B, C, D, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, K*D, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, kd, L = u.shape
    if A.dim() != 2 or A.shape[0] != kd:
        raise ValueError(f"A must be (K*D, N) = ({kd}, N); got {tuple(A.shape)}")
    n = A.shape[1]
    if B.dim() != 4 or B.shape[0] != batch or B.shape[2] != n or B.shape[3] != L:
        raise ValueError(f"B must be (B, K, N, L) = ({batch}, K, {n}, {L}); got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C must have B's shape {tuple(B.shape)}; got {tuple(C.shape)}")
    k = B.shape[1]
    if kd % k:
        raise ValueError(f"K*D = {kd} is not a multiple of K = {k}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (kd,):
            raise ValueError(f"{name} must be (K*D,) = ({kd},); got {tuple(t.shape)}")
    return batch, k, kd // k, n, L


def _linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last dim (h_{-1} = 0), in log2(L) steps.

    Hillis-Steele scan over the associative pairs (a, b); every step is one
    vectorised pass over L, so the depth is ceil(log2 L), not L. Differentiable.
    """
    L = a.shape[-1]
    s = 1
    while s < L:
        b = torch.cat([b[..., :s], b[..., s:] + a[..., s:] * b[..., :-s]], dim=-1)
        a = torch.cat([a[..., :s], a[..., s:] * a[..., :-s]], dim=-1)
        s *= 2
    return b


def _forward_states(u, delta, A, B, C, delta_bias, delta_softplus):
    """The scan's per-state quantities in the compute dtype (fp32, fp64 for fp64 inputs).

    Returns (shape, uf, dt_raw, dt, Af, Bf, Cf, a, h): shape = (batch, K, D, N, L); uf and dt are
    (B, K, D, 1, L), dt_raw (B, K*D, L) is delta + bias before softplus; Af (1, K, D, N, 1);
    Bf, Cf (B, K, 1, N, L); a = exp(dt A) and the states h are (B, K, D, N, L).
    """
    batch, k, d, n, L = shape = _check_shapes(u, delta, A, B, C, None, delta_bias)
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf = u.to(ct).view(batch, k, d, 1, L)
    dt_raw = delta.to(ct)
    if delta_bias is not None:
        dt_raw = dt_raw + delta_bias.to(ct).view(1, -1, 1)
    dt = (F.softplus(dt_raw) if delta_softplus else dt_raw).view(batch, k, d, 1, L)
    Af = A.to(ct).view(1, k, d, n, 1)
    Bf = B.to(ct).view(batch, k, 1, n, L)
    Cf = C.to(ct).view(batch, k, 1, n, L)
    a = torch.exp(dt * Af)  # (B, K, D, N, L)
    h = _linear_recurrence(a, dt * Bf * uf)  # (B, K, D, N, L)
    return shape, uf, dt_raw, dt, Af, Bf, Cf, a, h


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    out_fp32: bool = True,
) -> torch.Tensor:
    """Plain-torch selective scan, parallel over L; differentiable through autograd.

    Args:
        u:          (B, K*D, L) fp32 / fp16 / bf16 — the scanned input.
        delta:      (B, K*D, L) same dtype as u — step sizes before bias/softplus.
        A:          (K*D, N) fp32 — state matrix (diagonal, negative for stability).
        B:          (B, K, N, L) u's dtype — input projection, shared by D channels of direction k.
        C:          (B, K, N, L) u's dtype — output projection, shared likewise.
        D:          (K*D,) fp32 or None — skip connection.
        delta_bias: (K*D,) fp32 or None — added to delta before softplus.
        delta_softplus: apply softplus to delta (+ bias).
        out_fp32:   return fp32 (True) or u's dtype (False).
    Returns:
        y: (B, K*D, L), fp32 if out_fp32 else u.dtype.
    Computation is in fp32 (fp64 if the inputs are fp64).
    """
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    (batch, k, d, n, L), uf, _, dt, Af, Bf, Cf, a, h = _forward_states(u, delta, A, B, C, delta_bias,
                                                                       delta_softplus)
    ct = h.dtype
    y = (h * Cf).sum(dim=3)  # (B, K, D, L)
    if D is not None:
        y = y + D.to(ct).view(1, k, d, 1) * uf.squeeze(3)
    y = y.reshape(batch, k * d, L)
    return y if out_fp32 or ct == torch.float64 else y.to(u.dtype)


def selective_scan_loop(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out_fp32=True):
    """Naive sequential reference: one Python step per position, in float64. For tests only."""
    batch, k, d, n, L = _check_shapes(u, delta, A, B, C, D, delta_bias)
    f = torch.float64
    dt = delta.to(f)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f).view(1, -1, 1)
    if delta_softplus:
        dt = F.softplus(dt)
    Bx = B.to(f).repeat_interleave(d, dim=1)  # (B, K*D, N, L)
    Cx = C.to(f).repeat_interleave(d, dim=1)
    Af = A.to(f)
    uf = u.to(f)
    h = torch.zeros(batch, k * d, n, dtype=f, device=u.device)
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[..., None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(f).view(1, -1, 1) * uf
    return y


_SCAN_ARGS = (
    "Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
    "bool delta_softplus, bool out_fp32"
)


def _out_dtype(u: torch.Tensor, out_fp32: bool) -> torch.dtype:
    if u.dtype == torch.float64:
        return torch.float64
    return torch.float32 if out_fp32 else u.dtype


@torch.library.custom_op("vmbench::selective_scan_torch", mutates_args=(), schema=f"({_SCAN_ARGS}) -> Tensor")
def _scan_torch_op(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32):
    """Torch backend as ONE dispatcher op: same arguments and result as `selective_scan_ref`.

    u, delta (B, K*D, L); A (K*D, N) fp32; B, C (B, K, N, L); D, delta_bias (K*D,) fp32 or None.
    Returns y (B, K*D, L): fp32 if out_fp32 else u.dtype (fp64 for fp64 inputs).

    Forward keeps no autograd graph (no (B, K, D, N, L) intermediates live until
    backward); the backward op recomputes them, like activation checkpointing.
    """
    with torch.no_grad():
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32)


@_scan_torch_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32):
    return u.new_empty(u.shape, dtype=_out_dtype(u, out_fp32))


@torch.library.custom_op(
    "vmbench::selective_scan_torch_bwd", mutates_args=(),
    schema=f"(Tensor dy, {_SCAN_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _scan_torch_bwd_op(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32):
    """Analytic gradients of `selective_scan_ref` (recomputes the states, like checkpointing).

    Args: dy (B, K*D, L) in the forward output's dtype; the rest as `selective_scan_ref`.
    Returns: (du, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's shape and
    dtype; dD / ddelta_bias are (K*D,) fp32 zeros when D / delta_bias is None.
    Math, per (b, c, n, t) with a_t = exp(dt_t A), x_t = dt_t B_t u_t, h_t = a_t h_{t-1} + x_t:
        g_t  = C_t dy_t + a_{t+1} g_{t+1}     (dL/dh_t, a reverse scan)
        dC_t = sum_d dy_t h_t,  dB_t = sum_d g_t dt_t u_t,  dA = sum_{b,t} g_t a_t h_{t-1} dt_t
        ddt_t = sum_n g_t (B_t u_t + A a_t h_{t-1}),  du_t = sum_n g_t dt_t B_t + D dy_t
    """
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    (batch, k, d, n, L), uf, dt_raw, dt, Af, Bf, Cf, a, h = _forward_states(u, delta, A, B, C, delta_bias,
                                                                            delta_softplus)
    ct = h.dtype
    dyf = dy.to(ct).view(batch, k, d, 1, L)
    a_next = torch.cat([a[..., 1:], torch.zeros_like(a[..., :1])], dim=-1)  # a_{t+1}, 0 past the end
    g = _linear_recurrence(a_next.flip(-1), (Cf * dyf).flip(-1)).flip(-1)  # (B, K, D, N, L)
    h_prev = torch.cat([torch.zeros_like(h[..., :1]), h[..., :-1]], dim=-1)
    gah = g * a * h_prev  # dL/d(log a_t) per state
    dC = (h * dyf).sum(2)  # (B, K, N, L)
    dB = (g * dt * uf).sum(2)  # (B, K, N, L)
    dA = (gah * dt).sum((0, 4)).reshape(k * d, n)
    ddt = (g * Bf * uf).sum(3) + (gah * Af).sum(3)  # (B, K, D, L)
    du = (g * dt * Bf).sum(3)
    if D is not None:
        du = du + D.to(ct).view(1, k, d, 1) * dyf.squeeze(3)
    ddt = ddt.reshape(batch, k * d, L)
    if delta_softplus:
        ddt = ddt * torch.sigmoid(dt_raw)
    z = u.new_zeros(k * d, dtype=torch.float32)
    dD = (dyf * uf).sum((0, 4)).reshape(k * d).to(D.dtype) if D is not None else z
    dbias = ddt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else z.clone()
    return (du.reshape(batch, k * d, L).to(u.dtype), ddt.to(delta.dtype), dA.to(A.dtype),
            dB.to(B.dtype), dC.to(C.dtype), dD, dbias)


@_scan_torch_bwd_op.register_fake
def _(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32):
    kd = u.shape[1]
    z = (D if D is not None else u.new_empty(kd, dtype=torch.float32),
         delta_bias if delta_bias is not None else u.new_empty(kd, dtype=torch.float32))
    return tuple(torch.empty_like(t) for t in (u, delta, A, B, C, *z))


def _scan_torch_setup(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32 = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.flags = (delta_softplus, out_fp32)


def _scan_torch_backward(ctx, dy):
    u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    g = torch.ops.vmbench.selective_scan_torch_bwd(dy.contiguous(), u, delta, A, B, C, D, delta_bias, *ctx.flags)
    return (*g[:5], g[5] if D is not None else None, g[6] if delta_bias is not None else None, None, None)


_scan_torch_op.register_autograd(_scan_torch_backward, setup_context=_scan_torch_setup)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    out_fp32: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan with a chosen backend ("auto" | "torch" | "triton").

    Same arguments, shapes and dtypes as `selective_scan_ref`. "auto" picks
    Triton on CUDA tensors when Triton is importable, torch otherwise;
    "triton" on a machine that cannot run it raises RuntimeError.
    Either backend is one dispatcher op (see SCAN_TRACE_NAMES), so `torch.jit.trace`
    shows a single node and `torch.compile` does not break the graph.
    """
    be = resolve_backend(backend, u.device)
    if be == "triton":
        from ._selective_scan_triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32)
    if not torch.jit.is_tracing():  # (under jit.trace the shapes are traced values: the op checks them)
        _check_shapes(u, delta, A, B, C, D, delta_bias)
    return torch.ops.vmbench.selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32)
