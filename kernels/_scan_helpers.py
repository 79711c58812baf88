"""Triton helpers shared by the scan kernels (kernels/_selective_scan_triton.py, kernels/_ss2d_map_triton.py,
kernels/_ss2d_steps_triton.py): the combine functions of the associative scans, softplus and division without a
log or an exact divide, one chunk of the N = 1 backward, a map scan program's (image, direction, channel block) and
its start, and `_kernel`, which builds a kernel function as a compiled or interpreted Triton kernel on first use.
"""
from __future__ import annotations

import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.jit import JITFunction

from ._backend import interpreted, traceable, triton_interpret


def _combine(a1, x1, a2, x2):
    # (a1, x1) then (a2, x2) for h -> a * h + x: the composed map is (a1 a2, a2 x1 + x2).
    return a1 * a2, a2 * x1 + x2


# The jit wrapper keeps the function's own name: torch.compile (Inductor) re-emits helpers by
# __name__, and the kernels call it as `_combine`.
_combine = JITFunction(_combine)
# Inside the kernels only builtins are used (tl.full, tl.reduce with our own `_add`) rather than
# the jit-decorated helpers tl.zeros / tl.sum / tl.cdiv: those are fixed as compiled or interpreted
# when triton is imported, which would break TRITON_INTERPRET=1 switched on later.
def _add(a, b):
    return a + b


_add = JITFunction(_add)


class _Helper(JITFunction):
    """A jit helper that kernels call directly: compiled kernels inline it like any @triton.jit function;
    interpreted ones (TRITON_INTERPRET=1, possibly switched on after import) run its Python body."""

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _div(a, b, FAST: tl.constexpr):
    # a / b. FAST (compiled kernels): div.approx.ftz, one reciprocal and a multiply, 2 ulp for |b| in
    # [2^-126, 2^126]; the interpreter has no such instruction and divides exactly.
    if FAST:
        return libdevice.fast_dividef(a, b)
    else:
        return a / b


_div = _Helper(_div)


def _softplus(x, FAST: tl.constexpr):
    # (softplus(x), z) with z = exp(-|x|) in (0, 1]: softplus(x) = max(x, 0) + log1p(z), and
    # log1p(z) = 2 atanh(s) = 2 s (1 + t/3 + t^2/5 + ... + t^6/13) with s = z / (2 + z) <= 1/3, t = s^2 (the
    # series' remainder is below 9^-7 / 15 ≈ 1.4e-8 relative). One exp2 and one reciprocal; a log costs
    # ~30 instructions per element (on an H200 the forward kernel was bound by instruction issue).
    z = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    s = _div(z, 2.0 + z, FAST)
    t = s * s
    p = t * 0.07692307692307693 + 0.09090909090909091
    p = p * t + 0.1111111111111111
    p = p * t + 0.14285714285714285
    p = p * t + 0.2
    p = p * t + 0.3333333333333333
    p = p * t + 1.0
    return tl.maximum(x, 0.0) + (s + s) * p, z


_softplus = _Helper(_softplus)


def _combine3(f1, p1, g1, f2, p2, g2):
    # Reverse scan for g_t = c_t + a_{t+1} g_{t+1} without a_{t+1}: a segment [t..s] is summarised as
    # (f = a_t, p = a_{t+1} ... a_s, g = sum_{t<=j<=s} c_j a_{t+1} ... a_j). Called with the later segment
    # first (reverse=True); their concatenation is (f2, p2 f1 p1, g2 + p2 f1 g1).
    t = p2 * f1
    return f2, t * p1, g2 + t * g1


_combine3 = JITFunction(_combine3)


def _bwd_chunk(a, x, Cv, dy, h0, carry, lidx, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    # One chunk of an N = 1 backward on a [BLOCK_D, BLOCK_L] tile (a = exp(dt A), x = dt u B per step; Cv per step):
    # the chunk's states hh recomputed from h0, the state entering it, and the reverse scan g_t = C_t dy_t +
    # a_{t+1} g_{t+1}, run on (a_t, 1, C_t dy_t) with `_combine3` so a_{t+1} is never formed, continued from carry
    # (a_s g_s at the next chunk's first step s). Returns hh, g, the carry for the chunk before, g_t a_t h_{t-1}.
    sa, sx = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
    hh = sx + sa * h0[:, None]
    _, gp, gg = tl.associative_scan((a, tl.full([BLOCK_D, BLOCK_L], 1.0, tl.float32), Cv[None, :] * dy), axis=1,
                                    combine_fn=_combine3, reverse=True)
    g = gg + gp * carry[:, None]
    carry = tl.reduce(tl.where((lidx == 0)[None, :], a * g, 0.0), 1, _add)
    return hh, g, carry, g * (hh - x)


_bwd_chunk = _Helper(_bwd_chunk)


def _map_program(Dk, BLOCK_D: tl.constexpr):
    # What a program of the map scans owns: direction k of channel block dblk (of n_dblk) of image b, its channels
    # offs_d (ch in K*D). The four directions of one image and channel block are neighbours in the grid, so x's
    # tile stays in L2 between them.
    pid = tl.program_id(0)
    k = pid % 4
    rest = pid // 4
    n_dblk = (Dk + BLOCK_D - 1) // BLOCK_D
    dblk = rest % n_dblk
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    return k, dblk, n_dblk, rest // n_dblk, offs_d, offs_d < Dk, k * Dk + offs_d


_map_program = _Helper(_map_program)


def _map_start(A_ptr, D_ptr, bias_ptr, Dk, L, BL, BLOCK_D: tl.constexpr):
    # A map scan program's (`_map_program`) parameters and walk: A, D and the delta bias of its channels; the
    # direction walked backwards (rev) or column-major (col); the image's first row of the (B*L, ...) maps (img)
    # and direction k's first row of the (K*B*L, ...) ones (kdir).
    k, dblk, n_dblk, b, offs_d, mask_d, ch = _map_program(Dk, BLOCK_D)
    Av = tl.load(A_ptr + ch, mask=mask_d, other=0.0)
    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    return (k, dblk, n_dblk, b, offs_d, mask_d, ch, Av, Dv, bias, k >= 2, (k % 2) == 1, b.to(tl.int64) * L,
            k.to(tl.int64) * BL)


_map_start = _Helper(_map_start)


# Kernels are built per mode (compiled / TRITON_INTERPRET=1) on first use, so a test that
# switches the interpreter on after this module was imported still gets interpreted kernels.
_KERNELS: dict[tuple[str, bool], object] = {}


def _kernel(fn):
    interp = triton_interpret()
    key = (fn.__name__, interp)
    if key not in _KERNELS:
        if interp:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNELS[key] = InterpretedFunction(fn)
        else:
            _KERNELS[key] = JITFunction(fn)
    kern = _KERNELS[key]
    # wrap_triton makes the launch visible to torch.compile (see _backend.traceable); interpreted kernels
    # launch directly.
    return traceable(kern) if isinstance(kern, JITFunction) else interpreted(kern)
