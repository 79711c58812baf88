"""linear_gelu (fc1 + GELU in one GEMM): the Triton kernel against its torch twin and float64, the registered op,
the MLP that uses it and its torch.compile capture.

CPU: Triton's interpreter (set up as in tests/test_layer_norm.py; else this file re-runs itself in a subprocess),
with 16 x 16 x 16 tiles so small shapes give several programs, ragged edges and a K loop. GPU tests (marked gpu):
VMamba-T's MLP shapes at batch 2.

Tolerance (derived, as tests/test_layer_norm.py): ||kernel - fp64|| / ||fp64|| <= 2 * ||ref - fp64|| / ||fp64||
+ FLOOR for the output and every gradient, `ref` = `linear_gelu_ref` on the same low-precision inputs; outputs are
poisoned with NaN before each launch and checked to be fully written.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from triton_interp import (assert_one_graph_with, check_against_fp64, interpreter_ready, rel, run_compile_child,
                           saved_activation_bytes, subprocess_test, use_interpreter)

MODULE = "vmbench.kernels._linear_gelu_triton"
ROOT = Path(__file__).resolve().parents[1]
INTERP = interpreter_ready(MODULE, "_linear_gelu_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")
test_interpreter_subprocess = subprocess_test(__file__, INTERP)

LOW = [torch.bfloat16, torch.float16]
SHAPES = [((37, 40), 24), ((2, 3, 5, 32), 48), ((1, 7, 96), 20)]  # (x shape, N): M, N, K off the 16-tiles too


@pytest.fixture
def triton_cpu(monkeypatch):
    from vmbench.kernels import linear_gelu as lg
    from vmbench.kernels import mlp

    use_interpreter(monkeypatch)
    monkeypatch.setattr(lg, "USE_KERNEL", True)
    monkeypatch.setattr(mlp, "USE_KERNEL", False)  # the MLP takes fc1 + GELU, not the whole-MLP kernel
    return importlib.import_module(MODULE)


def _inputs(xshape, n, dtype, bias=True, device="cpu"):
    k = xshape[-1]
    x = torch.randn(xshape, device=device).to(dtype).requires_grad_(True)
    w = (torch.randn(n, k, device=device) * k ** -0.5).to(dtype).requires_grad_(True)
    b = (0.5 * torch.randn(n, device=device)).to(dtype).requires_grad_(True) if bias else None
    return x, w, b


def check(x, w, b):
    """The Triton path against the twin and fp64 (triton_interp.check_against_fp64), and y's shape."""
    from vmbench.kernels.linear_gelu import linear_gelu, linear_gelu_ref

    y = check_against_fp64(lambda *a: linear_gelu(*a, backend="triton"), linear_gelu_ref, x, w, b)
    assert y.shape == (*x.shape[:-1], w.shape[0]) and y.is_contiguous()
    return y


@interp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [*LOW, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward(triton_cpu, shape, dtype, bias):
    check(*_inputs(*shape, dtype, bias))


@interp
def test_fp32_is_exact_to_the_twin(triton_cpu):
    """fp32 operands take full-precision dots: the kernel agrees with the twin to fp32 rounding."""
    from vmbench.kernels.linear_gelu import linear_gelu, linear_gelu_ref

    x, w, b = (t.detach() for t in _inputs((19, 40), 33, torch.float32))
    assert rel(linear_gelu(x, w, b, backend="triton"), linear_gelu_ref(x, w, b)) < 1e-6


@interp
def test_registered_op_matches_the_eager_function(triton_cpu):
    """The path torch.compile traces (vmbench::linear_gelu with its registered backward) gives the eager
    autograd.Function's output and gradients, bit for bit."""
    x, w, b = _inputs((2, 5, 32), 40, torch.bfloat16)
    g = torch.randn(2, 5, 40).to(torch.bfloat16)
    y_op = torch.ops.vmbench.linear_gelu(x, w, b)
    grads_op = torch.autograd.grad(y_op, (x, w, b), g)
    y = triton_cpu.linear_gelu_triton(x, w, b)
    grads = torch.autograd.grad(y, (x, w, b), g)
    assert torch.equal(y_op, y) and all(torch.equal(a, c) for a, c in zip(grads_op, grads))


@interp
def test_no_grad_call_and_bad_operands(triton_cpu):
    """Without gradients the same values come back with no autograd node; operands of mixed dtypes or
    mismatched shapes are refused by the launcher."""
    x, w, b = (t.detach() for t in _inputs((9, 32), 24, torch.bfloat16))
    with torch.no_grad():
        y = triton_cpu.linear_gelu_triton(x, w, b)
    assert y.grad_fn is None and torch.equal(y, triton_cpu.linear_gelu_launch(x, w, b))
    with pytest.raises(ValueError, match="share one of"):
        triton_cpu.linear_gelu_launch(x, w.float(), b)
    with pytest.raises(ValueError, match="do not fit"):
        triton_cpu.linear_gelu_launch(x, w[:, :16], b)


@interp
@pytest.mark.parametrize("train", [False, True])
def test_mlp_under_autocast_takes_the_kernel_without_gradients(triton_cpu, monkeypatch, train):
    """The MLP on the Triton backend under bf16 autocast runs fc1 + GELU as the kernel in calls without gradients
    and matches the same MLP on the torch backend within bf16 rounding. With gradients, in fp32, for inputs wider
    than `MAX_K` and with `USE_KERNEL` off it keeps the plain ops (no kernel launch)."""
    from vmbench.kernels import linear_gelu as lg_mod
    from vmbench.models.vmamba_layers import Mlp

    calls = []
    launch = triton_cpu.linear_gelu_launch
    monkeypatch.setattr(triton_cpu, "linear_gelu_launch", lambda *a, **k: calls.append(1) or launch(*a, **k))
    torch.manual_seed(0)
    fused = Mlp(32, 64, backend="triton").train(train)
    plain = Mlp(32, 64, backend="torch").train(train)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 4, 32)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        assert lg_mod.triton_takes(x, "triton")
        y, y_ref = fused(x), plain(x)
    assert bool(calls) != train and y.dtype == torch.bfloat16 and rel(y, y_ref) < 2e-2
    if train:
        y.float().sum().backward()
        y_ref.float().sum().backward()
        for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
            assert p.grad.dtype == torch.float32 and rel(p.grad, q.grad) < 3e-2, name
    calls.clear()
    with torch.no_grad():
        assert rel(fused(x), plain(x)) < 1e-6 and not calls  # fp32: the plain ops
        with torch.autocast("cpu", dtype=torch.bfloat16):
            monkeypatch.setattr(lg_mod, "MAX_K", 16)
            assert torch.equal(fused(x), plain(x)) and not calls
            monkeypatch.setattr(lg_mod, "MAX_K", 32)
            monkeypatch.setattr(lg_mod, "USE_KERNEL", False)
            assert torch.equal(fused(x), plain(x)) and not calls


@interp
def test_backward_saves_no_hidden_activation(triton_cpu):
    """With gradients the kernel keeps x (and the weights) for its backward, which recomputes h in its GEMM; the
    twin keeps x and h."""
    torch.manual_seed(0)
    from vmbench.kernels.linear_gelu import linear_gelu_ref

    x = torch.randn(2, 16, 16, 32).to(torch.bfloat16).requires_grad_(True)
    w = (torch.randn(128, 32) / 6).to(torch.bfloat16).requires_grad_(True)
    b = torch.zeros(128, dtype=torch.bfloat16, requires_grad=True)
    hidden = x.numel() * 4 * 2  # one bf16 hidden-size activation
    got = saved_activation_bytes(lambda: triton_cpu.linear_gelu_triton(x, w, b), x)
    ref = saved_activation_bytes(lambda: linear_gelu_ref(x, w, b), x)
    assert got == x.numel() * 2 and ref == got + hidden, (got, ref, hidden)


_COMPILE_CHILD = r"""
from vmbench.kernels import linear_gelu, mlp as whole_mlp
from vmbench.models.vmamba_layers import Mlp

linear_gelu.USE_KERNEL, whole_mlp.USE_KERNEL = True, False
torch.manual_seed(0)
mlp = Mlp(32, 64, backend="triton").eval()
x = torch.randn(2, 4, 4, 32)
def fc1_gelu(x):  # the op with gradients: what a training graph would call
    return linear_gelu.linear_gelu(x, *mlp.fc1._autocast_params(x), backend="triton")
out["mlp"] = capture(mlp, x, False)
out["op"] = dict(capture(fc1_gelu, x, True), grad=mlp.fc1.weight.grad is not None)
"""


def test_compiled_mlp_is_one_graph_with_the_op():
    """torch.compile captures the inference MLP on the Triton backend under autocast as one graph, no break,
    calling vmbench::linear_gelu, and gives the eager output; the op itself compiles with gradients too."""
    assert_one_graph_with(run_compile_child(_COMPILE_CHILD, ROOT), "vmbench.linear_gelu")


# ------------------------------------------------------------------------------------------ GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@needs_cuda
@pytest.mark.parametrize("c", [96, 192, 384, 768])  # VMamba-T's stage widths; hidden 4C
@pytest.mark.parametrize("dtype", [*LOW, torch.float32])
def test_gpu_stage_shapes(c, dtype):
    hw = {96: 56, 192: 28, 384: 14, 768: 7}[c]
    check(*_inputs((2, hw, hw, c), 4 * c, dtype, device="cuda"))
