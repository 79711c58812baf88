"""mlp (fc1 + GELU + fc2 in one kernel): the Triton kernel against its torch twin and float64, the registered op,
the MLP module that uses it and its torch.compile capture.

CPU: Triton's interpreter (set up as in tests/test_layer_norm.py; else this file re-runs itself in a subprocess),
with 16-row, 16-hidden tiles so small shapes give several programs, ragged edges and a hidden-feature loop. GPU
tests (marked gpu): VMamba-T's stage-1 and stage-2 MLP shapes at batch 2.

Tolerance as tests/test_linear_gelu.py: ||kernel - fp64|| / ||fp64|| <= 2 * ||ref - fp64|| / ||fp64|| + FLOOR for
the output and every gradient, `ref` = `mlp_ref` on the same low-precision inputs; outputs are poisoned with NaN
before each launch and checked to be fully written.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from triton_interp import (assert_one_graph_with, check_against_fp64, interpreter_ready, rel, run_compile_child,
                           saved_activation_bytes, subprocess_test, use_interpreter)

MODULE = "vmbench.kernels._mlp_triton"
ROOT = Path(__file__).resolve().parents[1]
INTERP = interpreter_ready(MODULE, "_mlp_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")
test_interpreter_subprocess = subprocess_test(__file__, INTERP)

LOW = [torch.bfloat16, torch.float16]
SHAPES = [((37, 40), 24), ((2, 3, 5, 32), 72), ((1, 7, 96), 20)]  # (x shape, hidden): K padded, ragged M and hidden


@pytest.fixture
def triton_cpu(monkeypatch):
    from vmbench.kernels import mlp

    use_interpreter(monkeypatch)
    monkeypatch.setattr(mlp, "USE_KERNEL", True)
    return importlib.import_module(MODULE)


def _inputs(xshape, n, dtype, bias=True, device="cpu"):
    k = xshape[-1]

    def leaf(t):
        return t.to(dtype).requires_grad_(True)
    x = leaf(torch.randn(xshape, device=device))
    w1, w2 = leaf(torch.randn(n, k, device=device) * k ** -0.5), leaf(torch.randn(k, n, device=device) * n ** -0.5)
    b1 = leaf(0.5 * torch.randn(n, device=device)) if bias else None
    b2 = leaf(0.1 * torch.randn(k, device=device)) if bias else None
    return x, w1, b1, w2, b2


def check(*operands):
    """The Triton path against the twin and fp64 (triton_interp.check_against_fp64), and y's shape."""
    from vmbench.kernels.mlp import mlp, mlp_ref

    y = check_against_fp64(lambda *a: mlp(*a, backend="triton"), mlp_ref, *operands)
    assert y.shape == operands[0].shape and y.is_contiguous()
    return y


@interp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [*LOW, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward(triton_cpu, shape, dtype, bias):
    check(*_inputs(*shape, dtype, bias))


@interp
def test_fp32_is_exact_to_the_twin_and_strided_rows(triton_cpu):
    """fp32 operands take full-precision dots: the kernel agrees with the twin to fp32 rounding, also on rows read
    through a strided view (every other column block of a wider tensor)."""
    from vmbench.kernels.mlp import mlp, mlp_ref

    x, w1, b1, w2, b2 = (t.detach() for t in _inputs((19, 80), 33, torch.float32))
    xs = x[:, :40]  # row stride 80, column stride 1: read in place
    w1, w2, b2 = w1[:, :40].contiguous(), w2[:40].contiguous(), b2[:40]
    assert rel(mlp(xs, w1, b1, w2, b2, backend="triton"), mlp_ref(xs, w1, b1, w2, b2)) < 1e-6


@interp
def test_registered_op_matches_the_eager_function(triton_cpu):
    """The path torch.compile traces (vmbench::mlp with its registered backward) gives the eager autograd.Function's
    output and gradients, bit for bit."""
    ops = _inputs((2, 5, 32), 40, torch.bfloat16)
    g = torch.randn(2, 5, 32).to(torch.bfloat16)
    y_op = torch.ops.vmbench.mlp(*ops)
    grads_op = torch.autograd.grad(y_op, ops, g)
    y = triton_cpu.mlp_triton(*ops)
    grads = torch.autograd.grad(y, ops, g)
    assert torch.equal(y_op, y) and all(torch.equal(a, c) for a, c in zip(grads_op, grads))


@interp
def test_no_grad_call_and_bad_operands(triton_cpu):
    """Without gradients the same values come back with no autograd node; operands of mixed dtypes, mismatched
    shapes or more input features than the kernel holds are refused by the launcher."""
    x, w1, b1, w2, b2 = (t.detach() for t in _inputs((9, 32), 24, torch.bfloat16))
    with torch.no_grad():
        y = triton_cpu.mlp_triton(x, w1, b1, w2, b2)
    assert y.grad_fn is None and torch.equal(y, triton_cpu.mlp_launch(x, w1, b1, w2, b2))
    with pytest.raises(ValueError, match="share one of"):
        triton_cpu.mlp_launch(x, w1.float(), b1, w2, b2)
    with pytest.raises(ValueError, match="do not fit"):
        triton_cpu.mlp_launch(x, w1, b1, w2.t(), b2)
    wide = torch.zeros(2, triton_cpu.MAX_KP + 1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="at most"):
        triton_cpu.mlp_launch(wide, torch.zeros(4, wide.shape[1], dtype=torch.bfloat16), None,
                              torch.zeros(wide.shape[1], 4, dtype=torch.bfloat16), None)


@interp
@pytest.mark.parametrize("train", [False, True])
def test_module_under_autocast_takes_the_kernel_without_gradients(triton_cpu, monkeypatch, train):
    """vmamba_layers.Mlp on the Triton backend under bf16 autocast runs as the kernel in calls without gradients
    and matches the same MLP on the torch backend within bf16 rounding. With gradients, in fp32, for inputs wider
    than `MAX_K` and with `USE_KERNEL` off it launches nothing of this kernel."""
    from vmbench.kernels import linear_gelu as lg_mod
    from vmbench.kernels import mlp as mlp_mod
    from vmbench.models.vmamba_layers import Mlp

    monkeypatch.setattr(lg_mod, "USE_KERNEL", False)  # the fallback is then the plain ops
    calls = []
    launch = triton_cpu.mlp_launch
    monkeypatch.setattr(triton_cpu, "mlp_launch", lambda *a, **k: calls.append(1) or launch(*a, **k))
    torch.manual_seed(0)
    fused = Mlp(32, 64, backend="triton").train(train)
    plain = Mlp(32, 64, backend="torch").train(train)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 4, 32)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        assert mlp_mod.triton_takes(x, "triton")
        y, y_ref = fused(x), plain(x)
    assert bool(calls) != train and y.dtype == torch.bfloat16 and rel(y, y_ref) < 2e-2
    calls.clear()
    with torch.no_grad():
        assert rel(fused(x), plain(x)) < 1e-6 and not calls  # fp32: the plain ops
        with torch.autocast("cpu", dtype=torch.bfloat16):
            monkeypatch.setattr(mlp_mod, "MAX_K", 16)
            assert torch.equal(fused(x), plain(x)) and not calls
            monkeypatch.setattr(mlp_mod, "MAX_K", 32)
            monkeypatch.setattr(mlp_mod, "USE_KERNEL", False)
            assert torch.equal(fused(x), plain(x)) and not calls


@interp
def test_backward_saves_no_hidden_activation(triton_cpu):
    """With gradients the kernel keeps x (and the weights) for its backward, which recomputes the hidden activation;
    the twin keeps x, fc1's output and the GELU's."""
    from vmbench.kernels.mlp import mlp_ref

    torch.manual_seed(0)
    ops = _inputs((2, 16, 16, 32), 128, torch.bfloat16)
    x = ops[0]
    got = saved_activation_bytes(lambda: triton_cpu.mlp_triton(*ops), x)
    ref = saved_activation_bytes(lambda: mlp_ref(*ops), x)
    assert got == x.numel() * 2 and ref >= got + 2 * x.numel() * 4 * 2, (got, ref)


_COMPILE_CHILD = r"""
from vmbench.kernels import mlp as whole_mlp
from vmbench.models.vmamba_layers import Mlp

whole_mlp.USE_KERNEL = True
torch.manual_seed(0)
mod = Mlp(32, 64, backend="triton").eval()
x = torch.randn(2, 4, 4, 32)
def op_with_grad(x):
    return whole_mlp.mlp(x, mod.fc1.weight, mod.fc1.bias, mod.fc2.weight, mod.fc2.bias, backend="triton")
out["mlp"] = capture(mod, x, False)
out["op"] = dict(capture(op_with_grad, x, True), grad=mod.fc2.weight.grad is not None)
"""


def test_compiled_mlp_is_one_graph_with_the_op():
    """torch.compile captures the inference MLP on the Triton backend under autocast as one graph, no break,
    calling vmbench::mlp, and gives the eager output; the op itself compiles with gradients too."""
    assert_one_graph_with(run_compile_child(_COMPILE_CHILD, ROOT), "vmbench.mlp")


# ------------------------------------------------------------------------------------------ GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@needs_cuda
@pytest.mark.parametrize("c", [96, 192])  # VMamba-T's stage-1 / stage-2 widths; hidden 4C
@pytest.mark.parametrize("dtype", [*LOW, torch.float32])
def test_gpu_stage_shapes(c, dtype):
    hw = {96: 56, 192: 28}[c]
    check(*_inputs((2, hw, hw, c), 4 * c, dtype, device="cuda"))
