"""The map-layout SS2D (kernels/_ss2d_map_triton.py) against its twin, the composition and float64: the inference
forward, the training path (output and six gradients), what the training path saves, its registered ops, and a
model opted in.

CPU: Triton's interpreter, as in test_ss2d.py (this file re-runs itself in a subprocess when Triton was imported
in compiled mode), with the speed-ups and the tolerance of tests/ss2d_cases.py. The `gpu` tests run the same
checks at VMamba-T's stage shapes on the tensor-core dot.
"""
from __future__ import annotations

import math

import pytest
import torch
from ss2d_cases import NAMES, check_grads, check_grads_on, fast_interpreter, fp64, grads, make_inputs
from triton_interp import FLOOR, interpreter_ready, rel, subprocess_test

INTERP = interpreter_ready("vmbench.kernels._ss2d_map_triton", "_scan_fwd_map_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")
# (B, H, W, D, N, R): H != W, H = 1, W = 1, several chunks (forward and backward) and channel blocks
CASES = [(1, 5, 7, 20, 1, 2), (2, 3, 6, 16, 1, 1), (1, 1, 9, 16, 1, 4), (1, 6, 1, 17, 1, 3), (2, 3, 7, 40, 1, 3)]


@pytest.fixture
def triton_cpu(monkeypatch):
    return fast_interpreter(monkeypatch)


test_interpreter_subprocess = subprocess_test(__file__, INTERP)


def _map_inputs(inputs):
    """(x, p, wdt, A, Ds, bias, r, n): the SS2D core's inputs in the form its kernels take (`_ss2d_mapwise`)."""
    from vmbench.kernels.ss2d import _check, _kernel_params

    x, *params = inputs
    b, h, w, d, k, r, n = _check(x, *params[:2], params[3])
    xw, wdt, A, Ds, bias = _kernel_params(x, *params, k, r, n)
    p = torch.mm(x.reshape(b * h * w, d), xw).view(b, h, w, -1)
    return x.contiguous(), p, wdt, A, Ds, bias, r, n


@pytest.fixture
def use_map(monkeypatch):
    """Returns a setter: the map layout switched on (`USE_MAP`) for every call, with and without gradients, with
    MAP_CONFIG set to a variant ("DELTA-YS[-steps]"); `small`: 16-channel blocks (32 in the steps layout), so that
    the interpreter's small shapes have several per direction."""
    from vmbench.kernels import _ss2d_map_triton as M

    def set_variant(variant: str, small: bool = False) -> None:
        monkeypatch.setattr(M, "USE_MAP", True)
        tiles = dict(block_d=16, bwd_block_d=16, steps_block_d=32) if small else {}
        monkeypatch.setattr(M, "MAP_CONFIG", {**M.MAP_CONFIG, **M.variant_config(variant), **tiles,
                                                "train_max_l": 1 << 30, "min_programs": 0})
    return set_variant


def _check_map_forward(inputs):
    """The map-layout forward against its twin, the composition's inference forward and float64."""
    from vmbench.kernels import _ss2d_recompute as R
    from vmbench.kernels._ss2d_map_triton import ss2d_map_forward, ss2d_map_forward_ref
    from vmbench.kernels import ss2d_core_ref

    args = _map_inputs(inputs)
    with torch.no_grad():
        y = ss2d_map_forward(*args)
        if y.dtype == torch.float32:  # the twin, same signature
            twin = rel(y, ss2d_map_forward_ref(*args))
            assert twin <= 1e-5, twin
        y_comp = R._forward(*args, states=False)[0]
        y64 = ss2d_core_ref(*fp64(inputs))
        y_ref = ss2d_core_ref(*inputs)
    assert y.dtype == y_comp.dtype == inputs[0].dtype and y.shape == y_comp.shape
    assert not y.isnan().any()
    assert rel(y, y64) <= 2 * rel(y_ref, y64) + FLOOR, (rel(y, y64), rel(y_ref, y64))
    assert rel(y, y_comp) <= (1e-6 if y.dtype == torch.float32 else 1e-2), rel(y, y_comp)


# every variant on the small cases in both dtypes; the case with several 32-channel blocks (the slowest under the
# interpreter) once per delta form and layout
FORWARD = [(v, c, d) for v in ("gemm-fp32", "dot-fp32", "dot-input", "gemm-fp32-steps", "gemm-input-steps")
           for c in CASES[:4] for d in (torch.float32, torch.bfloat16)] \
    + [(v, CASES[4], torch.bfloat16) for v in ("gemm-fp32", "dot-input", "gemm-input-steps")]


@interp
@pytest.mark.parametrize("variant,case,dtype", FORWARD,
                         ids=[f"{v}-{'x'.join(map(str, c[:4]))}-{str(d)[6:]}" for v, c, d in FORWARD])
def test_forward(triton_cpu, use_map, case, dtype, variant):
    """Every direction read from and written to the map gives the composition's output, with delta from the GEMM
    or formed in the scan, the four maps in fp32 or in x's dtype, the chunk scanned as a tile or step by step."""
    use_map(variant)
    _check_map_forward(make_inputs(*case, dtype=dtype))


def _core(*inputs):
    from vmbench.kernels import ss2d_core

    return ss2d_core(*inputs, backend="triton")


F32, BF16 = torch.float32, torch.bfloat16
TRAIN = [("gemm-fp32", CASES[0], F32), ("gemm-fp32", CASES[0], BF16), ("gemm-fp32", CASES[1], BF16),
         ("gemm-fp32", CASES[2], BF16), ("gemm-fp32", CASES[3], F32),
         ("dot-input", CASES[0], BF16), ("dot-input", CASES[2], F32), ("dot-input", CASES[3], BF16),
         ("gemm-input", CASES[1], BF16),
         ("gemm-fp32-steps", CASES[0], F32), ("gemm-input-steps", CASES[4], BF16)]


@interp
@pytest.mark.parametrize("variant,case,dtype", TRAIN,
                         ids=[f"{v}-{'x'.join(map(str, c[:4]))}-{str(d)[6:]}" for v, c, d in TRAIN])
def test_training_gradients(triton_cpu, use_map, monkeypatch, variant, case, dtype):
    """Opted in, a call with gradients runs the map-layout forward that saves chunk states and the map-layout
    backward (gy read in place by the four directions): output and all six gradients against float64, and
    against the composition (the same arithmetic in fp32: to rounding). Several chunks forward and backward,
    several channel blocks (16-channel blocks on D = 20 and 17)."""
    from vmbench.kernels import _ss2d_map_triton as M

    inputs = make_inputs(*case, dtype=dtype)
    gy = torch.randn(inputs[0].shape)
    y0, g0 = grads(_core, inputs, gy)  # the composition
    use_map(variant, small=True)
    calls = []
    monkeypatch.setattr(M, "map_scan_bwd_launch", lambda *a, f=M.map_scan_bwd_launch: calls.append(1) or f(*a))
    y1, g1 = check_grads_on(_core, inputs, gy)
    assert calls == [1]
    if dtype == torch.float32:
        for name, a, b in zip(("y",) + NAMES, (y1, *g1), (y0, *g0)):
            assert rel(a, b) <= 1e-6, (name, rel(a, b))


@interp
@pytest.mark.parametrize("variant,case,dtype", [("gemm-fp32", CASES[0], F32), ("dot-input", CASES[2], BF16)])
def test_training_gradients_backward_prefetch(triton_cpu, use_map, monkeypatch, variant, case, dtype):
    """The backward loading the chunk before while it computes one (MAP_CONFIG's bwd_prefetch_l) and not: the same
    gradients to rounding, and against float64."""
    from vmbench.kernels import _ss2d_map_triton as M

    inputs = make_inputs(*case, dtype=dtype)
    gy = torch.randn(inputs[0].shape)
    use_map(variant, small=True)
    monkeypatch.setitem(M.MAP_CONFIG, "bwd_prefetch_l", 1 << 30)
    y0, g0 = grads(_core, inputs, gy)
    monkeypatch.setitem(M.MAP_CONFIG, "bwd_prefetch_l", 0)
    y1, g1 = check_grads_on(_core, inputs, gy)
    for name, a, b in zip(("y",) + NAMES, (y1, *g1), (y0, *g0)):
        assert rel(a, b) <= 1e-6, (name, rel(a, b))


@interp
@pytest.mark.parametrize("variant", ["gemm-fp32", "dot-fp32"])
def test_twin_gradients(triton_cpu, use_map, variant):
    """The kernels' entry (kernel-form arguments) against its plain-torch twin `ss2d_map_forward_ref`, same
    signature: output and the six gradients in fp32."""
    from vmbench.kernels._ss2d_map_triton import ss2d_map_forward_ref
    from vmbench.kernels._ss2d_recompute import ss2d_scan_recompute

    use_map(variant, small=True)
    *ts, r, n = _map_inputs(make_inputs(*CASES[0], torch.float32))
    gy = torch.randn(ts[0].shape)
    y1, g1 = grads(lambda *a: ss2d_scan_recompute(*a, r, n), ts, gy)
    y2, g2 = grads(lambda *a: ss2d_map_forward_ref(*a, r, n), ts, gy)
    for name, a, b in zip(("y", "x", "p", "wdt", "A", "Ds", "bias"), (y1, *g1), (y2, *g2)):
        assert rel(a, b) <= 1e-5, (name, rel(a, b))


@interp
def test_training_saves_the_map_only(triton_cpu, use_map):
    """The map-layout training path keeps x, p (both alive anyway: x_proj's GEMM), the small parameters and the
    chunk states: no directional copy of anything, not even the projections."""
    b, h, w, d, n, r = 2, 3, 5, 16, 1, 2
    use_map("gemm-fp32")
    saved = []
    inputs = [t.requires_grad_(True) for t in make_inputs(b, h, w, d, n, r, dtype=torch.bfloat16)]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        _core(*inputs).float().sum().backward()
    assert not [s for s in saved if math.prod(s) >= 4 * b * h * w * d], saved
    assert (b, h, w, 4 * 8) in saved and (b, 4, 1, d) in saved, saved  # p; hs: one state per 16-step chunk


@interp
@pytest.mark.parametrize("variant", ["gemm-fp32", "dot-input"])
def test_registered_op_matches_eager_function(triton_cpu, use_map, monkeypatch, variant):
    """Under graph capture the map training path runs as the registered ops vmbench::ss2d_scan / ss2d_scan_bwd
    with the variant named; eagerly, as the autograd.Function. Output and all six gradients bit-identical."""
    from vmbench.kernels import _ss2d_recompute as R

    use_map(variant)
    inputs = make_inputs(2, 3, 5, 16, 1, 2, dtype=torch.bfloat16)
    gy = torch.randn(inputs[0].shape)
    y1, g1 = grads(_core, inputs, gy)
    monkeypatch.setattr(R, "graph_capture", lambda: True)  # what torch.compile / jit.trace would see
    y2, g2 = grads(_core, inputs, gy)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


@interp
def test_in_the_model(triton_cpu, use_map, monkeypatch):
    """With MAP_CONFIG's limits lifted (`use_map`), every SS2D call of a VMamba takes the map layout: the forward
    without gradients, the forward and backward with them; outputs and parameter gradients as the composition's."""
    from vmbench.kernels import _ss2d_map_triton as M
    from vmbench.models.vmamba import _create_vmamba

    monkeypatch.setattr(M, "USE_MAP", False)  # the composition first, for reference
    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=16, depths=(1, 1, 2, 1)), num_classes=10, scan_backend="triton")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y0 = model.eval()(x)
    model.train()
    torch.manual_seed(2)  # drop-path draws
    model(x).square().sum().backward()
    g0 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    use_map("gemm-fp32")
    calls = []
    monkeypatch.setattr(M, "map_scan_launch", lambda *a, f=M.map_scan_launch, **k: calls.append("fwd") or f(*a, **k))
    monkeypatch.setattr(M, "map_scan_bwd_launch", lambda *a, f=M.map_scan_bwd_launch: calls.append("bwd") or f(*a))
    with torch.no_grad():
        y1 = model.eval()(x)
    assert calls == ["fwd"] * 5  # one per block
    assert rel(y1, y0) < 1e-5, rel(y1, y0)
    model.train()
    torch.manual_seed(2)
    model(x).square().sum().backward()
    assert sorted(calls) == ["bwd"] * 5 + ["fwd"] * 10
    for (name, p), g in zip(model.named_parameters(), g0):
        assert rel(p.grad, g) < 1e-4, (name, rel(p.grad, g))


# ------------------------------------------------------------------------------------------ GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]  # VMamba-T's (D, H = W)


@gpu
@needs_cuda
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("variant", ["gemm-fp32", "dot-fp32", "dot-input", "gemm-input", "gemm-input-steps"])
def test_gpu_forward_stage_shapes(use_map, stage, dtype, variant):
    use_map(variant)
    d, hw = stage
    _check_map_forward(make_inputs(4, hw, hw, d, 1, math.ceil(d / 16), dtype, device="cuda"))


@gpu
@needs_cuda
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("variant", ["gemm-fp32", "dot-input", "gemm-input-steps", "dot-input+prefetch"])
def test_gpu_training_stage_shapes(use_map, monkeypatch, stage, variant):
    from vmbench.kernels import _ss2d_map_triton as M

    use_map(variant.split("+")[0])
    monkeypatch.setitem(M.MAP_CONFIG, "bwd_prefetch_l", 0 if variant.endswith("+prefetch") else 1 << 30)
    d, hw = stage
    check_grads(_core, (2, hw, hw, d, 1, math.ceil(d / 16)), torch.bfloat16, device="cuda")


def test_column_position_division_is_exact():
    """The map scans' tt // H as the float product ((tt + 0.5) * (1 / H)) truncated (see MAX_L): exact for every
    tt below MAX_L, with 1 / H rounded correctly or off by up to 2 ulp (the kernels' division)."""
    import numpy as np

    from vmbench.kernels._ss2d_map_triton import MAX_L

    tt = np.arange(MAX_L, dtype=np.int64)
    ft = tt.astype(np.float32) + np.float32(0.5)
    for h in [*range(1, 70), 97, 128, 196, 255, 256, 333, 1000, 1024, 4093, MAX_L - 1]:
        inv = np.float32(1.0) / np.float32(h)
        for ulps in (-2, -1, 0, 1, 2):
            q = (ft * (inv + ulps * np.spacing(inv))).astype(np.int32)
            assert (q == tt // h).all(), (h, ulps, int(np.argmax(q != tt // h)))


def _weight_grad_fp64(ddelta, p, k):
    """dt_proj's weight gradient (K, D, C) in float64, one sum over all positions."""
    return torch.einsum("kmd,mkc->kdc", ddelta.double(), p.reshape(ddelta.shape[1], k, -1).double())


@pytest.mark.parametrize("m,rows,splits,dtype", [(70, 4, 14, torch.float32), (64, 8, 8, torch.bfloat16),
                                                  (13, 4, 1, torch.float32), (3, 4, 1, torch.float32)])
def test_weight_gradient_partial_sums(monkeypatch, m, rows, splits, dtype):
    """dt_proj's weight gradient of the map backward as partial sums over slices of the positions (the largest
    slice count that divides M and leaves WGRAD_ROWS positions a slice; one for a prime M or one under WGRAD_ROWS)
    equals the whole sum in float64. At VMamba-T's stages, batch 128: 256 slices at stage 1, 98 at stage 2, one
    GEMM at stages 3 and 4 (under WGRAD_MIN_M positions)."""
    from vmbench.kernels import _ss2d_map_triton as M

    assert [M._wgrad_splits(128 * hw * hw) for hw in (56, 28, 14, 7)] == [256, 98, 1, 1]
    monkeypatch.setattr(M, "WGRAD_ROWS", rows)
    monkeypatch.setattr(M, "WGRAD_MIN_M", 1)
    assert M._wgrad_splits(m) == splits
    k, d, c = 4, 6, 5
    ddelta = torch.randn(k, m, d).to(dtype)
    p = torch.randn(1, 1, m, k * c).to(dtype)
    got = M._weight_grad(ddelta, p, k)
    want = _weight_grad_fp64(ddelta, p, k)
    assert got.dtype == torch.float32 and got.shape == (k, d, c)
    assert rel(got, want) <= 1e-6, rel(got, want)


@gpu
@needs_cuda
def test_gpu_weight_gradient_partial_sums():
    """On CUDA the partial sums come from cuBLAS in fp32 (bmm's out_dtype) where torch has it: to fp32 rounding."""
    from vmbench.kernels import _ss2d_map_triton as M

    k, d, c, m = 4, 96, 8, 32 * 56 * 56
    ddelta = torch.randn(k, m, d, device="cuda").bfloat16()
    p = torch.randn(32, 56, 56, k * c, device="cuda").bfloat16()
    got = M._weight_grad(ddelta, p, k)
    want = _weight_grad_fp64(ddelta, p, k)
    assert M._wgrad_splits(m) > 1 and rel(got, want) <= (1e-5 if M._BMM_OUT_DTYPE else 4e-3), rel(got, want)


def test_which_calls_take_the_map_by_default(monkeypatch):
    """MAP_CONFIG's limits as measured: a 224² VMamba-T at batch 128 takes the map layout at every stage, with
    and without gradients on the variant measured fastest at each stage's size (a variant set by name holds for
    every size); a small batch of large maps (1024² at batch 4, a detector's batch of 2 at 800 x 1333) has too few
    programs and stays on the composition, as does every call with `USE_MAP` off."""
    from vmbench.kernels import _ss2d_map_triton as M

    def stages(b, h, w):
        return [(b, -(-h // s), -(-w // s), d) for s, d in ((4, 96), (8, 192), (16, 384), (32, 768))]

    assert [M.takes_map(x, grad=False) for x in stages(128, 224, 224)] == [True] * 4
    assert [M.takes_map(x, grad=True) for x in stages(128, 224, 224)] == [True] * 4
    assert [M.train_variant(x) for x in stages(128, 224, 224)] == ["gemm-input", "dot-input", "gemm-input",
                                                                    "dot-input"]
    assert [M.infer_variant(x) for x in stages(128, 224, 224)] == ["dot-input", "dot-input", "gemm-input",
                                                                    "gemm-input"]
    monkeypatch.setattr(M, "MAP_CONFIG", {**M.MAP_CONFIG, **M.variant_config("gemm-fp32")})  # a variant everywhere
    assert {M.train_variant(x) for x in stages(128, 224, 224)} == {M.infer_variant(x) for x in stages(128, 224, 224)} \
        == {"gemm-fp32"}
    for b, h, w in ((4, 1024, 1024), (2, 800, 1333)):
        assert not any(M.takes_map(x, grad) for x in stages(b, h, w) for grad in (False, True))
    assert not M.takes_map((128, 1024, 1024, 96), grad=False)  # MAX_L positions: the composition
    monkeypatch.setattr(M, "USE_MAP", False)
    assert not any(M.takes_map(x, False) for x in stages(128, 224, 224))
