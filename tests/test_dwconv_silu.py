"""dwconv_silu (SS2D's depthwise conv + SiLU in one kernel): the Triton kernel against its torch twin and float64,
the registered op, and the SS2D module's use of it (compiled inference only).

CPU: Triton's interpreter (set up as in tests/test_layer_norm.py; else this file re-runs itself in a subprocess),
with 4 x 4 tiles so small maps give several programs and ragged edges. GPU tests (marked gpu): VMamba-T's stage
shapes at batch 2. Tolerance as tests/test_linear_gelu.py (2 x the twin's error against fp64 + FLOOR).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from triton_interp import check_against_fp64, interpreter_ready, run_compile_child, subprocess_test, use_interpreter

MODULE = "vmbench.kernels._dwconv_silu_triton"
ROOT = Path(__file__).resolve().parents[1]
INTERP = interpreter_ready(MODULE, "_dwconv_silu_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")
test_interpreter_subprocess = subprocess_test(__file__, INTERP)


@pytest.fixture
def triton_cpu(monkeypatch):
    from vmbench.kernels import dwconv_silu

    mod = importlib.import_module(MODULE)
    use_interpreter(monkeypatch)
    monkeypatch.setattr(dwconv_silu, "USE_KERNEL", True)
    monkeypatch.setitem(mod.DW_CONFIG, "max_block_w", 4)
    monkeypatch.setitem(mod.DW_CONFIG, "max_block_d", 4)
    return mod


def _inputs(shape, dtype, k=3, bias=True, device="cpu", strided=False):
    d = shape[-1]
    x = torch.randn(*shape[:-1], 2 * d if strided else d, device=device).to(dtype)
    x = (x[..., :d] if strided else x).requires_grad_(True)  # strided: a row stride of 2D, as the z-branch's view
    w = (torch.randn(d, 1, k, k, device=device) / k).to(dtype).requires_grad_(True)
    b = (0.3 * torch.randn(d, device=device)).to(dtype).requires_grad_(True) if bias else None
    return x, w, b


def check(x, w, b):
    from vmbench.kernels.dwconv_silu import dwconv_silu, dwconv_silu_ref

    y = check_against_fp64(lambda *a: dwconv_silu(*a, backend="triton"), dwconv_silu_ref, x, w, b)
    assert y.shape == x.shape


@interp
@pytest.mark.parametrize("shape", [(2, 5, 7, 12), (1, 9, 4, 6), (1, 1, 1, 3)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("k,bias,strided", [(3, True, False), (3, False, True), (5, True, True)])
def test_forward_backward(triton_cpu, shape, dtype, k, bias, strided):
    check(*_inputs(shape, dtype, k, bias, strided=strided))


@interp
def test_registered_op_matches_the_eager_function(triton_cpu):
    """The path torch.compile traces (vmbench::dwconv_silu, its registered backward) equals the eager Function."""
    x, w, b = _inputs((2, 6, 5, 8), torch.bfloat16)
    g = torch.randn(2, 6, 5, 8).to(torch.bfloat16)
    y_op = torch.ops.vmbench.dwconv_silu(x, w, b)
    y = triton_cpu.dwconv_silu_triton(x, w, b)
    assert torch.equal(y_op, y)
    assert all(torch.equal(a, c) for a, c in zip(torch.autograd.grad(y_op, (x, w, b), g),
                                                 torch.autograd.grad(y, (x, w, b), g)))


@interp
def test_bad_operands(triton_cpu):
    from vmbench.kernels.dwconv_silu import dwconv_silu

    x, w, b = (t.detach() for t in _inputs((1, 4, 4, 6), torch.bfloat16))
    with pytest.raises(ValueError, match="share a dtype"):
        triton_cpu.dwconv_silu_launch(x, w.float(), b)
    with pytest.raises(ValueError, match="k odd"):
        dwconv_silu(x, w[:, :, :2, :2], b, backend="triton")


_COMPILE_CHILD = r"""
from vmbench.kernels import _dwconv_silu_triton as mod
from vmbench.models.vmamba_blocks import SS2D

calls = []
launch = mod.dwconv_silu_launch
mod.dwconv_silu_launch = lambda *a, **k: calls.append(1) or launch(*a, **k)
torch.manual_seed(0)
fused, plain = SS2D(16, scan_backend="triton"), SS2D(16, scan_backend="torch")
plain.load_state_dict(fused.state_dict())
x = torch.randn(2, 6, 6, 16)
for train in (False, True):
    fused.train(train), plain.train(train)
    fresh(); calls.clear()
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        y_eager, y_ref = fused(x), plain(x)
        eager_calls = len(calls)
        y = torch.compile(fused, backend=backend)(x)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    st = stats()
    out[str(train)] = dict(graphs=st["graphs"], breaks=st["breaks"], conv_op="vmbench.dwconv_silu" in st["ops"],
                           eager_calls=eager_calls, compiled_calls=len(calls) - eager_calls,
                           rel_eager=rel(y_eager, y_ref), rel_compiled=rel(y, y_ref))
"""


def test_ss2d_takes_the_kernel_in_compiled_inference_only():
    """SS2D on the Triton backend under bf16 autocast: compiled inference runs conv + SiLU as the kernel
    (vmbench::dwconv_silu in the graph, one graph, no break); eager calls and training keep cuDNN's conv (no
    launch). Every output matches the module on the torch backend within bf16 rounding."""
    for train, r in run_compile_child(_COMPILE_CHILD, ROOT).items():
        infer = train == "False"
        assert (r["graphs"], r["breaks"]) == (1, 0) and r["eager_calls"] == 0, r
        assert r["conv_op"] == infer and (r["compiled_calls"] > 0) == infer, r
        assert r["rel_eager"] < 3e-2 and r["rel_compiled"] < 3e-2, r


gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@needs_cuda
@pytest.mark.parametrize("d,hw", [(96, 56), (192, 28), (384, 14), (768, 7)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_stage_shapes(d, hw, dtype):
    check(*_inputs((2, hw, hw, d), dtype, device="cuda", strided=d == 192))
