"""Cross-scan / cross-merge: the Triton kernels against the torch twins and float64.

CPU: the kernels run under Triton's interpreter. Triton decides "interpreted or compiled" when a
function is decorated, its own library (tl.sum, tl.cdiv, ...) included, so TRITON_INTERPRET=1
must be set before `triton` is first imported. If this module is collected before anything
imported triton (and there is no GPU), it imports triton and the kernel modules with the
variable set and restores the environment; otherwise one test re-runs this file in a fresh
subprocess with TRITON_INTERPRET=1. The variable is set per test (fixture) so that
`resolve_backend` accepts "triton" on CPU tensors only inside these tests.

Tolerance (derived): cross_scan is a pure copy, so it must equal the twin bit for bit. For
cross_merge and the gradients,  ||kernel - fp64|| / ||fp64|| <= 2 * ||ref - fp64|| / ||fp64|| + FLOOR,
with `ref` the torch twin at the same precision and FLOOR = 8 * fp32 eps (both exact by luck).
Every output is poisoned with NaN before the launch and checked to be fully written.
"""
from __future__ import annotations


import pytest
import torch
from triton_interp import FLOOR, interpreter_ready, rel, subprocess_test, use_interpreter

INTERP = interpreter_ready("vmbench.kernels._cross_scan_triton", "_cross_scan_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")


@pytest.fixture
def triton_cpu(monkeypatch):
    return use_interpreter(monkeypatch)


test_interpreter_subprocess = subprocess_test(__file__, INTERP)


def make_map(b, h, w, c, channels_last, dtype, device="cpu", strided=False):
    """Fresh random map; `strided` gives a non-contiguous view of the same logical shape."""
    shape = (b, h, w, c) if channels_last else (b, c, h, w)
    if strided:  # other physical layout, permuted back: strides are not the contiguous ones
        perm_shape = (shape[0], shape[3], shape[1], shape[2])
        return torch.randn(perm_shape, device=device).to(dtype).permute(0, 2, 3, 1)
    return torch.randn(shape, device=device).to(dtype)


SHAPES = [  # (B, H, W, C): H != W, odd sizes, H = 1, W = 1, more than one tile / channel block
    (2, 5, 7, 6),
    (1, 1, 9, 3),
    (1, 8, 1, 40),
    (1, 17, 18, 33),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@interp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_scan_forward_backward(triton_cpu, shape, channels_last, dtype):
    from vmbench.kernels import cross_merge_ref, cross_scan, cross_scan_ref

    b, h, w, c = shape
    x = make_map(b, h, w, c, channels_last, dtype).requires_grad_(True)
    xs = cross_scan(x, channels_last, backend="triton")
    assert xs.shape == (b, 4, c, h * w) and xs.dtype == dtype and xs.is_contiguous()
    assert not xs.isnan().any(), "unwritten output"
    assert torch.equal(xs, cross_scan_ref(x, channels_last))
    # backward = cross_merge of the cotangent: fp32 sum, rounded once
    g = torch.randn(xs.shape).to(dtype)
    (gx,) = torch.autograd.grad(xs, x, g)
    assert not gx.isnan().any()
    g64 = cross_merge_ref(g.double(), h, w, channels_last)
    (g_ref,) = torch.autograd.grad(cross_scan_ref(x, channels_last), x, g)
    assert rel(gx, g64) <= 2 * rel(g_ref, g64) + FLOOR


@interp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_merge_forward_backward(triton_cpu, shape, channels_last, dtype):
    from vmbench.kernels import cross_merge, cross_merge_ref, cross_scan_ref

    b, h, w, c = shape
    ys = torch.randn(b, 4, c, h * w).to(dtype).requires_grad_(True)
    y = cross_merge(ys, h, w, channels_last, backend="triton")
    want = (b, h, w, c) if channels_last else (b, c, h, w)
    assert y.shape == want and y.dtype == dtype and y.is_contiguous()
    assert not y.isnan().any(), "unwritten output"
    y64 = cross_merge_ref(ys.double(), h, w, channels_last)
    assert rel(y, y64) <= 2 * rel(cross_merge_ref(ys, h, w, channels_last), y64) + FLOOR
    # backward = cross_scan of the cotangent: a copy, exact
    g = torch.randn(want).to(dtype)
    (gys,) = torch.autograd.grad(y, ys, g)
    assert torch.equal(gys, cross_scan_ref(g, channels_last))


@interp
@pytest.mark.parametrize("channels_last", [True, False])
def test_strided_input_and_fp64(triton_cpu, channels_last):
    """Non-contiguous maps are read through their strides; fp64 round-trips exactly."""
    from vmbench.kernels import cross_merge, cross_merge_ref, cross_scan, cross_scan_ref

    x = make_map(2, 6, 5, 7, channels_last, torch.float16, strided=True)
    assert not x.is_contiguous()
    assert torch.equal(cross_scan(x, channels_last, backend="triton"), cross_scan_ref(x, channels_last))
    ys = torch.randn(1, 4, 7, 30, dtype=torch.float64)
    assert torch.allclose(cross_merge(ys, 5, 6, channels_last, backend="triton"),
                          cross_merge_ref(ys, 5, 6, channels_last), rtol=0, atol=1e-12)
    ys_t = ys.transpose(2, 3).contiguous().transpose(2, 3)  # L stride != 1: the launcher copies
    assert torch.allclose(cross_merge(ys_t, 5, 6, channels_last, backend="triton"),
                          cross_merge_ref(ys, 5, 6, channels_last), rtol=0, atol=1e-12)


@interp
def test_adjoint_identity(triton_cpu):
    """<cross_scan(x), ys> == <x, cross_merge(ys)> (fp64): merge is the adjoint of scan."""
    from vmbench.kernels import cross_merge, cross_scan

    x = torch.randn(2, 7, 4, 5, dtype=torch.float64)
    ys = torch.randn(2, 4, 5, 28, dtype=torch.float64)
    lhs = (cross_scan(x, True, backend="triton") * ys).sum()
    rhs = (x * cross_merge(ys, 7, 4, True, backend="triton")).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=0)


@interp
@pytest.mark.parametrize("shape", SHAPES[:3] + [(2, 17, 18, 10)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_diag_scan_and_merge(triton_cpu, shape, channels_last, dtype):
    """diag=True (SS2D's per-direction projections): direction k reads / writes channel block k only.
    Both are copies, so both equal their twins bit for bit; the merge is the scan's adjoint."""
    from vmbench.kernels import cross_merge_diag_ref, cross_scan_diag_ref, cross_scan_ref
    from vmbench.kernels._cross_scan_triton import cross_merge_launch, cross_scan_launch

    b, h, w, c = shape
    x = make_map(b, h, w, 4 * c, channels_last, dtype)
    xs = cross_scan_launch(x, channels_last, diag=True)
    assert xs.shape == (b, 4, c, h * w) and xs.dtype == dtype and not xs.isnan().any()
    want = cross_scan_diag_ref(x, channels_last)
    assert torch.equal(xs, want)
    full = cross_scan_ref(x, channels_last)  # the definition: block k of direction k
    assert all(torch.equal(want[:, k], full[:, k, k * c:(k + 1) * c]) for k in range(4))
    ys = torch.randn(b, 4, c, h * w).to(dtype)
    y = cross_merge_launch(ys, h, w, channels_last, diag=True)
    assert y.shape == ((b, h, w, 4 * c) if channels_last else (b, 4 * c, h, w)) and not y.isnan().any()
    assert torch.equal(y, cross_merge_diag_ref(ys, h, w, channels_last))
    x64, ys64 = x.double(), ys.double()
    lhs = (cross_scan_diag_ref(x64, channels_last) * ys64).sum()
    assert torch.allclose(lhs, (x64 * cross_merge_diag_ref(ys64, h, w, channels_last)).sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="4 blocks"):
        cross_scan_launch(make_map(1, 2, 2, 6, channels_last, dtype), channels_last, diag=True)


@interp
def test_merge_out_dtype(triton_cpu):
    """out_dtype: the fp32 sum is rounded once to the requested dtype (what .to() after an fp32 merge gives)."""
    from vmbench.kernels import cross_merge_ref
    from vmbench.kernels._cross_scan_triton import cross_merge_launch

    ys = torch.randn(2, 4, 6, 35)
    y = cross_merge_launch(ys, 5, 7, True, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, cross_merge_launch(ys, 5, 7, True).to(torch.bfloat16))
    assert rel(y, cross_merge_ref(ys.double(), 5, 7)) < 4e-3


def test_shape_errors():
    from vmbench.kernels import cross_merge, cross_scan

    with pytest.raises(ValueError):
        cross_scan(torch.randn(2, 3, 4), backend="torch")
    with pytest.raises(ValueError):
        cross_merge(torch.randn(1, 4, 3, 10), 3, 4, backend="torch")


# ------------------------------------------------------------------------------------------ GPU


gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@needs_cuda
@pytest.mark.parametrize("stage", [(96, 56), (192, 28), (384, 14), (768, 7)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gpu_stage_shapes(stage, dtype, channels_last):
    from vmbench.kernels import cross_merge, cross_merge_ref, cross_scan, cross_scan_ref
    from vmbench.kernels import _cross_scan_triton as xst

    c, hw = stage
    xst.POISON = True
    try:
        x = make_map(16, hw, hw, c, channels_last, dtype, device="cuda")
        xs = cross_scan(x, channels_last, backend="triton")
        assert torch.equal(xs, cross_scan_ref(x, channels_last))
        ys = torch.randn(16, 4, c, hw * hw, device="cuda").to(dtype)
        y = cross_merge(ys, hw, hw, channels_last, backend="triton")
        assert not y.isnan().any()
        y64 = cross_merge_ref(ys.double(), hw, hw, channels_last)
        assert rel(y, y64) <= 2 * rel(cross_merge_ref(ys, hw, hw, channels_last), y64) + FLOOR
    finally:
        xst.POISON = False


@gpu
@needs_cuda
def test_gpu_compile_traces_through():
    """torch.compile(fullgraph=True) sees the custom ops (no graph break), forward and backward."""
    from vmbench.kernels import cross_merge, cross_scan, cross_scan_ref

    def f(x):
        return cross_merge(cross_scan(x, True, backend="triton") * 2, 7, 9, True, backend="triton")

    x = torch.randn(2, 7, 9, 40, device="cuda", requires_grad=True)
    y = torch.compile(f, fullgraph=True)(x)
    torch.testing.assert_close(y, 8 * x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 8.0))
    assert torch.equal(cross_scan(x, True, backend="triton"), cross_scan_ref(x))
