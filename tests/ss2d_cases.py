"""Shared by the SS2D kernel tests (test_ss2d.py, test_ss2d_map.py): random inputs, the gradient check against
float64, and the interpreter speed-ups.

Tolerance (derived): ||kernel - fp64|| / ||fp64|| <= 2 * ||ref - fp64|| / ||fp64|| + FLOOR for the output and every
gradient, `ref` = `ss2d_core_ref` on the same low-precision inputs, fp64 = the same function on those inputs upcast
(parameters drawn in fp32, so upcasting is exact).

The interpreter's generic associative scan and xor reduction loop over every element in Python; `fast_interpreter`
patches in versions that fold along the axis on whole slices, the same sequential order, so results are unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from triton_interp import FLOOR, rel, use_interpreter

NAMES = ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")


def make_inputs(b, h, w, d, n, r, dtype, device="cpu", strided=False):
    """Fresh random SS2D inputs: x in `dtype`, parameters fp32 (the module's storage dtype)."""
    g = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if strided:  # a (B, H, W, D) view of a (B, D, H, W) tensor: not channels-last contiguous
        x = rn(b, d, h, w).to(dtype).permute(0, 2, 3, 1)
    else:
        x = rn(b, h, w, d).to(dtype)
    xp = rn(4, r + 2 * n, d) / math.sqrt(d)
    dtw = rn(4, d, r) / math.sqrt(r)
    dtb = torch.rand(4, d, generator=g) * 2 - 3  # softplus -> ~0.05 .. 0.3
    al = torch.log(torch.rand(4 * d, n, generator=g) * 3 + 0.5)
    ds = rn(4 * d)
    return [t.to(device) for t in (x, xp, dtw, dtb, al, ds)]


def fp64(inputs):
    return [t.detach().double() for t in inputs]


def grads(fn, inputs, gy):
    """(y, gradients of every input) of fn(*inputs) against the cotangent gy."""
    ts = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*ts)
    gs = torch.autograd.grad(y, ts, gy.to(y.dtype))
    return y.detach(), gs


def check_grads(fn, case, dtype, device="cpu"):
    """fn (an ss2d_core) on fresh inputs of shape `case`: output and six gradients within the derived tolerance."""
    inputs = make_inputs(*case, dtype=dtype, device=device)
    check_grads_on(fn, inputs, torch.randn(inputs[0].shape, device=device))


def check_grads_on(fn, inputs, gy):
    """`check_grads` on the inputs and cotangent given; returns fn's (y, gradients)."""
    from vmbench.kernels import ss2d_core_ref

    y, gs = grads(fn, inputs, gy)
    y_r, gs_r = grads(ss2d_core_ref, inputs, gy)
    y64, gs64 = grads(ss2d_core_ref, fp64(inputs), gy.double())
    assert rel(y, y64) <= 2 * rel(y_r, y64) + FLOOR
    for name, g, g_r, g64 in zip(NAMES, gs, gs_r, gs64):
        assert g.shape == g64.shape and not g.isnan().any(), name
        assert rel(g, g64) <= 2 * rel(g_r, g64) + FLOOR, (name, rel(g, g64), rel(g_r, g64))
    return y, gs


def _fast_scan(self, inputs):
    datas = [a.handle.data for a in inputs]
    ax = self.axis
    outs = [np.empty_like(d) for d in datas]
    acc = None
    for i in range(datas[0].shape[ax]):
        sl = tuple(slice(i, i + 1) if a == ax else slice(None) for a in range(datas[0].ndim))
        cur = tuple(self.to_tensor(d[sl], inputs[j].dtype) for j, d in enumerate(datas))
        if acc is None:
            acc = cur
        else:
            ret = self.combine_fn.fn(*acc, *cur)
            acc = ret if isinstance(ret, tuple) else (ret,)
        for j, o in enumerate(outs):
            o[sl] = acc[j].handle.data
    return [self.to_tensor(o, inputs[j].dtype) for j, o in enumerate(outs)]


def fast_interpreter(monkeypatch):
    """`use_interpreter` with the interpreter's scan and xor reduction sped up (module docstring)."""
    import triton.language as tl
    from triton.runtime import interpreter as ip

    orig_reduce = ip.ReduceOps.apply_impl

    def fast_reduce(self, inputs):
        if self.combine_fn is tl.standard._xor_combine and self.axis is not None:
            d = inputs[0].handle.data
            return self.to_tensor(np.bitwise_xor.reduce(d, axis=self.axis, keepdims=self.keep_dims), inputs[0].dtype)
        return orig_reduce(self, inputs)

    monkeypatch.setattr(ip.ScanOps, "generic_scan", _fast_scan)
    monkeypatch.setattr(ip.ReduceOps, "apply_impl", fast_reduce)
    return use_interpreter(monkeypatch)
