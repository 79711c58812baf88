"""SS2D core: the fused Triton forward and the Triton training path against float64 (the map-layout path:
test_ss2d_map.py).

CPU: Triton's interpreter, set up exactly as in tests/test_cross_scan.py (TRITON_INTERPRET=1
before `triton` is first imported, else this file re-runs itself in a subprocess), with the
interpreter-only speed-ups and the tolerance of tests/ss2d_cases.py. Outputs and scratch buffers
are poisoned with NaN before each launch.
"""
from __future__ import annotations

import math

import pytest
import torch
from ss2d_cases import NAMES, check_grads, fast_interpreter, fp64, grads, make_inputs
from triton_interp import FLOOR, interpreter_ready, rel, subprocess_test


INTERP = interpreter_ready("vmbench.kernels._ss2d_triton", "_ss2d_fwd_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")


@pytest.fixture
def triton_cpu(monkeypatch):
    return fast_interpreter(monkeypatch)


test_interpreter_subprocess = subprocess_test(__file__, INTERP)


FWD_CASES = [  # (B, H, W, D, N, R): H != W, odd, H = 1, W = 1, several chunks / d-blocks, N > 1
    (1, 5, 7, 20, 1, 2),
    (1, 1, 9, 16, 3, 4),
    (1, 6, 1, 17, 2, 3),
    (2, 3, 6, 16, 1, 1),
]


@interp
@pytest.mark.parametrize("case", FWD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_forward(triton_cpu, monkeypatch, case, dtype):
    import vmbench.kernels._ss2d_triton as sst
    from vmbench.kernels import ss2d_core, ss2d_core_ref

    calls = []
    launch = sst.ss2d_fwd_launch
    monkeypatch.setattr(sst, "ss2d_fwd_launch", lambda *a, **k: calls.append(1) or launch(*a, **k))
    inputs = make_inputs(*case, dtype=dtype, strided=case[0] == 2)
    with torch.no_grad():
        y = ss2d_core(*inputs, backend="triton", fused=True)
        y_ref = ss2d_core_ref(*inputs)
        y64 = ss2d_core_ref(*fp64(inputs))
    assert calls, "a no-grad fused=True triton call must take the fused kernel"
    assert y.shape == inputs[0].shape and y.dtype == dtype
    assert not y.isnan().any(), "unwritten output (buffers were NaN-poisoned)"
    assert rel(y, y64) <= 2 * rel(y_ref, y64) + FLOOR, (rel(y, y64), rel(y_ref, y64))


@interp
@pytest.mark.parametrize("case", FWD_CASES)
def test_composition_forward(triton_cpu, case):
    """The default Triton path (map-wise projections) without gradients: ss2d_core_ref's function."""
    from vmbench.kernels import ss2d_core, ss2d_core_ref

    inputs = make_inputs(*case, dtype=torch.bfloat16, strided=case[0] == 2)
    with torch.no_grad():
        y = ss2d_core(*inputs, backend="triton")
        y_ref = ss2d_core_ref(*inputs)
        y64 = ss2d_core_ref(*fp64(inputs))
    assert y.shape == inputs[0].shape and y.dtype == torch.bfloat16
    assert rel(y, y64) <= 2 * rel(y_ref, y64) + FLOOR, (rel(y, y64), rel(y_ref, y64))


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cross_scan_merge_in_composition_gradients(triton_cpu, dtype):
    """Gradients through the composition with the Triton cross-scan / cross-merge (torch scan)."""
    from vmbench.kernels._cross_scan_triton import cross_merge_triton, cross_scan_triton
    from vmbench.kernels.selective_scan import selective_scan_ref
    from vmbench.kernels.ss2d import _ss2d

    def fn(*a):
        return _ss2d(*a, selective_scan_ref, cross_scan_triton, cross_merge_triton)

    check_grads(fn, (1, 3, 5, 16, 2, 2), dtype)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backend_training_path_gradients(triton_cpu, dtype):
    """ss2d_core(backend="triton") with gradients: the full Triton composition, all six gradients."""
    try:
        import vmbench.kernels._selective_scan_triton  # noqa: F401
    except ImportError as exc:  # another module; its absence is reported, not hidden
        pytest.skip(f"Triton selective scan not importable: {exc}")
    from vmbench.kernels import ss2d_core

    check_grads(lambda *a: ss2d_core(*a, backend="triton"), (1, 3, 5, 16, 1, 2), dtype)


@interp
@pytest.mark.parametrize("case", [(2, 3, 5, 16, 1, 2), (1, 4, 3, 12, 2, 3), (1, 3, 4, 16, 1, 6)])
def test_training_path_saves_no_directional_copy(triton_cpu, case):
    """The eager Triton training path recomputes the (B, 4, D, L) scan inputs in the backward instead of
    saving them (the largest saved activations of a VMamba block), and still gives every gradient within
    the derived tolerance (also for N > 1 and x strided). The per-direction projections it keeps have
    R + 2N rows padded to a multiple of 8 (aligned GEMMs); the last case needs no padding."""
    from vmbench.kernels import ss2d_core

    b, h, w, d, n, r = case
    big, small = [], []

    def pack(t):
        if t.numel() == 4 * b * h * w * d:  # the size of the four directional copies (u or delta)
            big.append(tuple(t.shape))
        if t.dim() == 4 and t.shape[:2] == (b, 4) and t.shape[3] == h * w and tuple(t.shape) != (b, h, w, d):
            small.append(t.shape[2])  # ps (B, 4, C, L)
        return t

    inputs = [t.requires_grad_(True) for t in make_inputs(*case, dtype=torch.bfloat16)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ss2d_core(*inputs, backend="triton").float().sum().backward()
    assert big == [], f"saved for backward: {big}"
    assert small == [-(-(r + 2 * n) // 8) * 8], small
    check_grads(lambda *a: ss2d_core(*a, backend="triton"), case, torch.bfloat16)


@interp
@pytest.mark.parametrize("case", [(2, 3, 5, 16, 1, 2), (1, 4, 3, 12, 2, 3)])
def test_registered_op_matches_eager_function(triton_cpu, monkeypatch, case):
    """Under graph capture the training path runs as the registered ops vmbench::ss2d_scan / ss2d_scan_bwd
    (torch.compile saves x, ps and the chunk states there too); eagerly, as an autograd.Function on the same
    launchers. Output and all six gradients bit-identical."""
    from vmbench.kernels import ss2d_core
    from vmbench.kernels import _ss2d_recompute as R

    inputs = make_inputs(*case, dtype=torch.bfloat16)
    gy = torch.randn(inputs[0].shape)
    y1, g1 = grads(lambda *a: ss2d_core(*a, backend="triton"), inputs, gy)
    monkeypatch.setattr(R, "graph_capture", lambda: True)  # what torch.compile / jit.trace would see
    y2, g2 = grads(lambda *a: ss2d_core(*a, backend="triton"), inputs, gy)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


@interp
def test_inference_path_matches_training_forward(triton_cpu, monkeypatch):
    """Without gradients the composition runs its launchers without an autograd node and without the scan's
    saved states: the output is bit-identical to the forward with gradients. (By default calls without gradients
    take the map layout instead: tests/test_ss2d_map.py.)"""
    from vmbench.kernels import _ss2d_map_triton, ss2d_core

    monkeypatch.setattr(_ss2d_map_triton, "USE_MAP", False)

    inputs = make_inputs(2, 3, 5, 16, 1, 2, dtype=torch.bfloat16)
    y1, _ = grads(lambda *a: ss2d_core(*a, backend="triton"), inputs, torch.randn(inputs[0].shape))
    with torch.no_grad():
        y0 = ss2d_core(*inputs, backend="triton")
    assert torch.equal(y0, y1)


@interp
def test_module_keeps_kernel_parameters_for_inference(triton_cpu, monkeypatch):
    """The SS2D module keeps its parameters in kernel form (ParamCache) between calls that need no gradient, a
    plain `torch.no_grad()` call as much as inside `frozen_parameters()`: reused while they are unchanged,
    rebuilt after an in-place update that moves a version (load_state_dict, an EMA update), after any optimizer
    step (a fused one moves no version), after a train() / eval() switch, or for another dtype; never used with
    gradients; emptied when a `frozen_parameters()` block ends. Empty after deepcopy / pickling, absent from the
    state_dict; outputs equal the uncached path's bit for bit (on the composition, so that calls with and without
    gradients compute the same)."""
    import copy
    import pickle

    from timm.utils import ModelEmaV3

    from vmbench.kernels import ParamCache, _ss2d_map_triton, frozen_parameters, ss2d_core
    from vmbench.models.vmamba import SS2D

    monkeypatch.setattr(_ss2d_map_triton, "USE_MAP", False)
    torch.manual_seed(0)
    m = SS2D(16, scan_backend="triton")
    x = torch.randn(2, 3, 5, 16)

    def uncached(module=m):
        cache, module._kernel_params = module._kernel_params, None
        try:
            return module(x)
        finally:
            module._kernel_params = cache

    with torch.no_grad():
        y0 = m(x)
        kept = m._kernel_params["params"][-1]  # a plain no_grad call keeps them
        assert torch.equal(m(x), y0) and m._kernel_params["params"][-1] is kept
        with frozen_parameters():
            assert torch.equal(m(x), y0) and m._kernel_params["params"][-1] is kept
            with frozen_parameters():  # nested: the outer block owns the cache
                assert torch.equal(m(x), y0) and m._kernel_params["params"][-1] is kept
            m.A_logs.add_(0.25)  # in place through the parameter: the version moves
            y1 = m(x)
            assert m._kernel_params["params"][-1] is not kept and torch.equal(y1, uncached())
            assert not torch.equal(y1, y0)
            params = (m.x_proj_weight, m.dt_projs_weight, m.dt_projs_bias, m.A_logs, m.Ds)
            xb = torch.randn(2, 3, 5, 16).to(torch.bfloat16)  # what the core sees under autocast: rebuilt in bf16
            yb = ss2d_core(xb, *params, backend="triton", cache=m._kernel_params)
            assert m._kernel_params["params"][-1][0].dtype == torch.bfloat16
            assert torch.equal(yb, ss2d_core(xb, *params, backend="triton"))
            assert torch.equal(m(x), y1)
        assert m._kernel_params == {}  # emptied with the block
    with torch.inference_mode():
        assert torch.equal(m(x), y1) and "params" in m._kernel_params
    y2 = m(x)  # with gradients: the parameters themselves, the cache untouched
    assert y2.grad_fn is not None and torch.equal(y2.detach(), y1)
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        m(xg)  # grad off: cached; built under inference_mode above, and never saved for a backward
    for p in m.parameters():
        p.requires_grad_(False)
    y3 = m(xg)  # frozen parameters, x needs a gradient: derived (and saved) afresh
    y3.sum().backward()
    assert xg.grad is not None and torch.equal(y3.detach(), y1)
    for p in m.parameters():
        p.requires_grad_(True)

    # a fused optimizer step moves no version counter: the optimizer's step hook rebuilds the cache
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        y_before = m(x)
    m(x).square().mean().backward()
    v = [p._version for p in m.parameters()]
    opt.step()
    assert [p._version for p in m.parameters()] == v  # (what makes the hook necessary)
    with torch.no_grad():
        assert torch.equal(m(x), uncached()) and not torch.equal(m(x), y_before)

    # a write the cache cannot see (through .data) is picked up at the next train() / eval() switch
    m.eval()
    with torch.no_grad():
        y_eval = m(x)
        m.A_logs.data.add_(0.5)
        assert torch.equal(m(x), y_eval)  # stale: the documented limit
        m.train()
        m.eval()
        assert torch.equal(m(x), uncached()) and not torch.equal(m(x), y_eval)
    m.train()

    ema = ModelEmaV3(m, decay=0.5)  # vmbench's EMA: it updates through detached views, which move versions
    m(x).square().mean().backward()
    opt.step()  # the model moves away from its EMA copy
    with torch.no_grad():
        ye = ema.module(x)
        ema.update(m, step=10)  # a version change rebuilds the kept parameters
        y_cached = ema.module(x)
        assert not torch.equal(y_cached, ye) and torch.equal(y_cached, uncached(ema.module))
    assert isinstance(copy.deepcopy(m)._kernel_params, ParamCache) and copy.deepcopy(m)._kernel_params == {}
    assert pickle.loads(pickle.dumps(ParamCache(a=1))) == {}
    assert not any("kernel_params" in k for k in m.state_dict())


def test_torch_backend_is_the_reference():
    from vmbench.kernels import ss2d_core, ss2d_core_ref

    inputs = make_inputs(2, 3, 4, 8, 2, 1, torch.float32)
    assert torch.equal(ss2d_core(*inputs, backend="torch"), ss2d_core_ref(*inputs))
    with pytest.raises(ValueError):
        ss2d_core(inputs[0][..., :7], *inputs[1:], backend="torch")


# ------------------------------------------------------------------------------------------ GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@needs_cuda
@pytest.mark.parametrize("stage", [(96, 56), (192, 28), (384, 14), (768, 7)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_fused_forward_stage_shapes(stage, dtype):
    import vmbench.kernels._cross_scan_triton as xst
    from vmbench.kernels import ss2d_core, ss2d_core_ref

    d, hw = stage
    inputs = make_inputs(4, hw, hw, d, 1, math.ceil(d / 16), dtype, device="cuda")
    xst.POISON = True
    try:
        with torch.no_grad():
            y = ss2d_core(*inputs, backend="triton", fused=True)
            y_ref = ss2d_core_ref(*inputs)
            y64 = ss2d_core_ref(*fp64(inputs))
    finally:
        xst.POISON = False
    assert not y.isnan().any()
    assert rel(y, y64) <= 2 * rel(y_ref, y64) + FLOOR, (rel(y, y64), rel(y_ref, y64))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_training_path_gradients(dtype):
    from vmbench.kernels import ss2d_core

    check_grads(lambda *a: ss2d_core(*a, backend="triton"), (2, 14, 14, 384, 1, 24), dtype, device="cuda")


@gpu
@needs_cuda
def test_gpu_compile_fused_inference():
    from vmbench.kernels import ss2d_core

    inputs = make_inputs(2, 7, 7, 64, 1, 4, torch.bfloat16, device="cuda")
    f = torch.compile(lambda *a: ss2d_core(*a, backend="triton"), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(f(*inputs), ss2d_core(*inputs, backend="triton"))


@gpu
@needs_cuda
def test_gpu_compile_training_path():
    """torch.compile(fullgraph=True) of the training path (the registered ops) against the eager path: output
    and gradients agree to bf16 rounding."""
    from vmbench.kernels import ss2d_core

    inputs = make_inputs(2, 14, 14, 192, 1, 12, torch.bfloat16, device="cuda")
    gy = torch.randn(inputs[0].shape, device="cuda")
    f = torch.compile(lambda *a: ss2d_core(*a, backend="triton"), fullgraph=True)
    y1, g1 = grads(lambda *a: ss2d_core(*a, backend="triton"), inputs, gy)
    y2, g2 = grads(f, inputs, gy)
    torch.testing.assert_close(y2, y1, rtol=2e-2, atol=2e-2)
    for name, a, b in zip(NAMES, g2, g1):
        assert rel(a, b) <= 2e-2, (name, rel(a, b))
