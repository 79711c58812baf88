"""Selective scan: the torch twin vs a naive loop, the torch-backend op, and the Triton kernels.

The Triton kernels run on the CPU through Triton's interpreter (TRITON_INTERPRET=1, switched on
per test by a fixture; the kernel module builds interpreted kernels at launch time, so import
order does not matter) at small shapes, and on CUDA at the VMamba-T stage shapes (marked `gpu`).

Tolerance (derived, not guessed): for every output and gradient,
    ||kernel - fp64|| / ||fp64||  <=  2 * ||ref - fp64|| / ||fp64||  +  FLOOR
where `ref` is `selective_scan_ref` run on the same low-precision inputs (it computes in fp32 and
rounds its outputs / gradients to the same dtypes as the kernel, with the kernel's rounding: Triton's
CPU interpreter truncates fp32 -> bf16 where the GPU rounds to nearest even) and fp64 is the same
function on those inputs upcast to float64. FLOOR = 8 * fp32 eps covers cases where the twin is exact by luck
(L = 1, or a gradient that is a single product).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from vmbench.kernels.selective_scan import (
    SCAN_TRACE_NAMES, selective_scan, selective_scan_loop, selective_scan_ref,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
FLOOR = 8 * torch.finfo(torch.float32).eps


def make_inputs(batch, k, d, n, L, dtype=torch.float32, device="cpu", with_d=True, with_bias=True):
    """Fresh random inputs in the VMamba layout; A, D, delta_bias stay fp32 (fp64 if dtype is fp64)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = r(batch, k * d, L)
    delta = r(batch, k * d, L) * 0.5 - 1.0  # softplus(delta + bias) ~ 0.05 .. 1, as in trained VMamba
    A = -(torch.rand(k * d, n, generator=g) * 2 + 0.2)
    B = r(batch, k, n, L)
    C = r(batch, k, n, L)
    D = r(k * d) if with_d else None
    bias = r(k * d) * 0.5 if with_bias else None
    out = [u.to(dtype), delta.to(dtype), A.to(pdt), B.to(dtype), C.to(dtype),
           None if D is None else D.to(pdt), None if bias is None else bias.to(pdt)]
    return [None if t is None else t.to(device) for t in out]


def run_with_grads(fn, inputs, dy, **kw):
    """y = fn(*inputs, **kw) and the gradients of <y, dy> w.r.t. every tensor input (None where absent)."""
    xs = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*xs, **kw)
    wrt = [t for t in xs if t is not None]
    gs = iter(torch.autograd.grad(y, wrt, dy.to(y.dtype), allow_unused=True, materialize_grads=True))
    return y.detach(), [None if t is None else next(gs) for t in xs]


def rel(a, b):
    """‖a − b‖ / ‖b‖; absolute ‖a − b‖ where the reference is exactly zero (e.g. dA at L = 1, where
    h_{t-1} = 0: the kernel's rounding residue must then be tiny in absolute terms)."""
    b = b.double()
    denom = b.norm()
    return float((a.double() - b).norm() / (denom if denom > 0 else 1.0))


def _round_like(t, dtype, bf16_truncates):
    """Round an fp32/fp64 tensor to `dtype` the way the kernel's store does."""
    if dtype == torch.bfloat16 and bf16_truncates:  # Triton's CPU interpreter truncates fp32 -> bf16
        return (t.float().view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return t.to(dtype)


def check_against_fp64(fn, inputs, out_fp32=True, softplus=True, label="", bf16_truncates=False):
    """Run fn on `inputs`, the fp64 twin on the upcast inputs, and the twin at the inputs' precision
    (computing in fp32, rounding its outputs / gradients to the kernel's dtypes with the kernel's
    rounding); assert fn's error <= 2 * the twin's error + FLOOR for y and every gradient, and that
    every element of fn's results is finite (outputs are poisoned with NaN before the launch)."""
    x64 = [None if t is None else t.double() for t in inputs]
    y64 = selective_scan_ref(*x64, delta_softplus=softplus)
    dy = torch.randn_like(y64)
    if not out_fp32:
        dy = dy.to(inputs[0].dtype)  # upstream gradient arrives in the output dtype
    y64, g64 = run_with_grads(selective_scan_ref, x64, dy.double(), delta_softplus=softplus)
    x32 = [None if t is None else t.float() for t in inputs]
    yr, gr = run_with_grads(selective_scan_ref, x32, dy.float(), delta_softplus=softplus)
    yk, gk = run_with_grads(fn, inputs, dy, delta_softplus=softplus, out_fp32=out_fp32)
    yr = _round_like(yr, torch.float32 if out_fp32 else inputs[0].dtype, bf16_truncates)
    gr = [None if g is None else _round_like(g, t.dtype, bf16_truncates) for g, t in zip(gr, inputs)]
    assert yk.dtype == yr.dtype and yk.shape == yr.shape
    report = []
    for name, k_, r_, t64 in [("y", yk, yr, y64)] + list(zip(NAMES, gk, gr, g64)):
        if t64 is None:
            assert k_ is None and r_ is None
            continue
        assert k_.dtype == r_.dtype and k_.shape == r_.shape, name
        assert torch.isfinite(k_).all(), f"{label} {name}: non-finite (unwritten?) elements"
        ek, er = rel(k_, t64), rel(r_, t64)
        report.append(f"{name}: kernel {ek:.2e} twin {er:.2e}")
        assert ek <= 2 * er + FLOOR, f"{label} {name}: kernel error {ek:.3e} > 2 x twin {er:.3e} + floor\n" + \
            "\n".join(report)
    return report


# --------------------------------------------------------------------------------------------
# The twin against the naive loop (fp64)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 16])
@pytest.mark.parametrize("L", [1, 7, 33])
@pytest.mark.parametrize("variant", ["full", "no_d_bias_softplus"])
def test_ref_matches_loop(n, L, variant):
    full = variant == "full"
    x = make_inputs(2, 2, 3, n, L, torch.float64, with_d=full, with_bias=full)
    dy = torch.randn(2, 6, L, dtype=torch.float64)
    y1, g1 = run_with_grads(selective_scan_ref, x, dy, delta_softplus=full)
    y2, g2 = run_with_grads(selective_scan_loop, x, dy, delta_softplus=full)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(NAMES, g1, g2):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


# --------------------------------------------------------------------------------------------
# The torch backend: one custom op with an analytic backward
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("L", [1, 19])
def test_torch_backend_matches_ref(n, L):
    x = make_inputs(2, 2, 3, n, L, torch.float64)
    dy = torch.randn(2, 6, L, dtype=torch.float64)
    y1, g1 = run_with_grads(selective_scan_ref, x, dy)
    y2, g2 = run_with_grads(lambda *a, **kw: selective_scan(*a, **kw, backend="torch"), x, dy)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(NAMES, g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)


def test_torch_backend_low_precision_and_optional_args():
    for dt in (torch.float32, torch.bfloat16):
        x = make_inputs(1, 2, 2, 2, 9, dt, with_d=False, with_bias=False)
        x[1] = torch.nn.functional.softplus(x[1].float()).to(dt)  # without softplus the caller passes dt > 0
        check_against_fp64(lambda *a, **kw: selective_scan(*a, **kw, backend="torch"), x, out_fp32=False,
                           softplus=False, label=str(dt))


def test_torch_backend_gradcheck():
    x = [t.requires_grad_(True) for t in make_inputs(1, 2, 2, 2, 5, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, backend="torch"), x)


class _Scan(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend

    def forward(self, *a):
        return selective_scan(*a, backend=self.backend) * 2


def _trace_kinds(module, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph, _ = torch.jit._get_trace_graph(module, tuple(inputs))  # what fvcore traces
    return [nd.kind() for nd in graph.nodes() if nd.kind() != "prim::Constant"]


def test_torch_backend_is_one_traced_node():
    kinds = _trace_kinds(_Scan("torch"), make_inputs(1, 2, 2, 1, 8))
    assert kinds == ["vmbench::selective_scan_torch", "aten::mul"]
    assert kinds[0] in SCAN_TRACE_NAMES


def test_torch_backend_compiles_without_graph_break():
    x = [t.requires_grad_(True) for t in make_inputs(1, 2, 2, 2, 8)]
    f = torch.compile(lambda *a: selective_scan(*a, backend="torch").sin().sum(), fullgraph=True, backend="aot_eager")
    g1 = torch.autograd.grad(f(*x), x)
    g2 = torch.autograd.grad(selective_scan_ref(*x).sin().sum(), x)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Triton kernels on the CPU interpreter
# --------------------------------------------------------------------------------------------
triton = pytest.importorskip("triton")
T = pytest.importorskip("vmbench.kernels._selective_scan_triton")
from vmbench.kernels import _scan_config as SC  # noqa: E402  (after the skip: it imports the kernels package)

# Small tiles so that short sequences still cover several chunks and several channel blocks
# (the dB / dC partials or atomics); CHUNK positions per chunk.
CHUNK = 16
SMALL = dict(chunk=CHUNK, chunk_big_n=CHUNK, fwd_tile=64, bwd_tile=64,
             # N = 1: forward chunks twice the backward's, so states are saved inside a forward chunk;
             # chunks kept whatever the padding; the backward prefetches (as the defaults' 32-position chunks)
             n1_fwd_chunk=2 * CHUNK, n1_bwd_chunk=CHUNK, n1_fwd_tile=64, n1_bwd_tile=64, n1_max_pad=1.0,
             n1_fwd_whole=0, n1_bwd_prefetch=CHUNK)


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(T, "_POISON", True)  # outputs start as NaN: an unwritten element fails the test
    with T.scan_config(**SMALL):
        yield


def _triton(*a, **kw):
    return selective_scan(*a, **kw, backend="triton")


def check_interp(*a, **kw):
    return check_against_fp64(*a, **kw, bf16_truncates=True)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LENGTHS = [1, 7, CHUNK + 3, 2 * CHUNK + 13]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("out_fp32", [True, False])
def test_triton_n1(interp, dtype, L, out_fp32):
    x = make_inputs(2, 2, 6, 1, L, DTYPES[dtype])  # D=6 channels, 4 per block: 2 blocks per direction
    check_interp(_triton, x, out_fp32=out_fp32, label=f"N=1 {dtype} L={L}")


def test_triton_n1_chunks_fit_the_length(interp):
    """N = 1 chunks halve while they would pad L by more than n1_max_pad (the forward's down to 32, the
    backward's down to 16); with the defaults, rows of at most n1_fwd_whole positions are one forward chunk.
    Results stay within the derived tolerance."""
    with T.scan_config(n1_fwd_chunk=64, n1_bwd_chunk=32, n1_max_pad=0.125, n1_fwd_whole=0):
        assert (SC._n1_chunk(3136, False), SC._n1_chunk(3136, True)) == (64, 32)  # stage 1: no padding
        assert (SC._n1_chunk(196, False), SC._n1_chunk(196, True)) == (32, 16)  # stage 3: 224 / 208 slots
        assert (SC._n1_chunk(49, False), SC._n1_chunk(49, True)) == (32, 16)
        assert T._blocks(196, 1, 384, backward=False)[0] == SC._cfg("n1_fwd_tile") // 64  # rows kept
    with T.scan_config(**SC._DEFAULTS):
        # the defaults at VMamba-T's stage lengths: (forward, backward) chunk and rows
        fwd = {L: (SC._n1_chunk(L, False), T._blocks(L, 1, 768, backward=False)[0]) for L in (3136, 784, 196, 49)}
        assert fwd == {3136: (128, 4), 784: (128, 4), 196: (256, 2), 49: (64, 8)}  # rows up to 64: twice the rows
        bwd = {L: T._blocks(L, 1, 768, backward=True) for L in (3136, 784, 196, 49)}
        assert bwd == {3136: (16, 1, 32, 1), 784: (16, 1, 32, 1), 196: (16, 1, 32, 1), 49: (16, 1, 16, 4)}
        assert SC._n1_bwd_prefetch(32) and not SC._n1_bwd_prefetch(16)  # 32-position chunks prefetch, 16 not
    with T.scan_config(n1_fwd_chunk=64, n1_bwd_chunk=32, n1_fwd_tile=128, n1_bwd_tile=64, n1_max_pad=0.125,
                       n1_fwd_whole=0):
        L = 3 * CHUNK + 2  # 50: chunks of 64, 32 and 16 all pad it by 14 (28 %): forward 32, backward 16
        x = make_inputs(1, 2, 6, 1, L, torch.bfloat16)
        check_interp(_triton, x, out_fp32=False, label="fitted chunks")


def test_triton_n1_hints():
    """ALIGN divides both L and B / C's row stride (the kernels rebuild L as (L // ALIGN) * ALIGN, which is L
    only then); VEC is n1_vec, or the whole chunk when n1_vec is 0."""
    for L, sbc, align in ((3136, 3136, 16), (3136, 4 * 3136, 16), (196, 196, 4), (196, 200, 4), (196, 198, 2),
                          (49, 49, 1), (150, 150, 2), (64, 48, 16), (1, 1, 1)):
        hints = T._n1_hints(L, sbc, 32)
        assert hints["ALIGN"] == align and L % align == 0 and sbc % align == 0, (L, sbc, hints)
    with T.scan_config(n1_vec=4):
        assert T._n1_hints(196, 196, 32)["VEC"] == 4
    with T.scan_config(n1_vec=0):
        assert T._n1_hints(196, 196, 32)["VEC"] == 32


@pytest.mark.parametrize("prefetch", [0, CHUNK])
@pytest.mark.parametrize("L", [7, 3 * CHUNK, 2 * CHUNK + 13])
def test_triton_n1_backward_prefetch(interp, L, prefetch):
    """The backward with and without loading the chunk before while it computes one (`n1_bwd_prefetch`: chunks of at
    least CHUNK positions): one chunk, whole chunks, and a partial last chunk (the first one computed)."""
    with T.scan_config(n1_bwd_prefetch=prefetch):
        assert SC._n1_bwd_prefetch(SC._n1_chunk(L, True)) == bool(prefetch)
        check_interp(_triton, make_inputs(2, 2, 6, 1, L, torch.bfloat16), label=f"prefetch {prefetch}, L={L}")


@pytest.mark.parametrize("L", [2 * CHUNK + 13, 4 * CHUNK])
def test_triton_n1_states_saved_inside_a_chunk(interp, L):
    """A forward chunk four backward chunks long saves three states inside it (the last masked past L at 45)."""
    with T.scan_config(n1_fwd_chunk=4 * CHUNK, n1_fwd_tile=4 * 4 * CHUNK):
        assert SC._n1_chunk(L, False) == 4 * SC._n1_chunk(L, True)
        check_interp(_triton, make_inputs(2, 2, 6, 1, L, torch.float32), label=f"4 states per chunk, L={L}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_n1_general_kernel(interp, dtype):
    # N = 1 through the general 3-D kernels (the previous version, kept for N > 1 and for comparison)
    with T.scan_config(n1=0):
        x = make_inputs(2, 2, 6, 1, 2 * CHUNK + 13, DTYPES[dtype])
        check_interp(_triton, x, label=f"N=1 general {dtype}")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("L", [1, CHUNK + 3, 2 * CHUNK + 13])
def test_triton_n16(interp, dtype, L):
    x = make_inputs(1, 2, 2, 16, L, DTYPES[dtype])
    check_interp(_triton, x, out_fp32=(L != 1), label=f"N=16 {dtype} L={L}")


@pytest.mark.parametrize("n", [2, 4, 8])
def test_triton_other_n(interp, n):
    x = make_inputs(1, 2, 3, n, CHUNK + 5, torch.float32)
    check_interp(_triton, x, label=f"N={n}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_no_d_no_bias_no_softplus(interp, dtype):
    x = make_inputs(2, 1, 5, 2, 2 * CHUNK + 1, DTYPES[dtype], with_d=False, with_bias=False)
    x[1] = torch.nn.functional.softplus(x[1].float()).to(x[1].dtype)  # without softplus the caller passes dt > 0
    check_interp(_triton, x, softplus=False, out_fp32=False, label=dtype)


def test_triton_default_config_one_long_chunk(interp):
    with T.scan_config(chunk=SC._DEFAULTS["chunk"], fwd_tile=256, bwd_tile=256,
                       n1_fwd_chunk=SC._DEFAULTS["n1_fwd_chunk"], n1_bwd_chunk=SC._DEFAULTS["n1_bwd_chunk"],
                       n1_max_pad=SC._DEFAULTS["n1_max_pad"], n1_fwd_whole=SC._DEFAULTS["n1_fwd_whole"]):
        x = make_inputs(1, 1, 2, 1, 150, torch.float32)  # N = 1 at the default chunks (150: one of 256 / 32)
        check_interp(_triton, x, label="default chunks")
        with T.scan_config(n1=0):  # the general kernels: one 256-position chunk, 106 padded slots
            check_interp(_triton, x, label="default chunk, general kernels")


def test_triton_noncontiguous_and_mixed_dtypes(interp):
    u, delta, A, B, C, D, bias = make_inputs(1, 2, 3, 2, 21, torch.bfloat16)
    u = u.transpose(1, 2).contiguous().transpose(1, 2)  # (B, KD, L) with stride 1 on KD
    delta = delta.float()  # e.g. a branch autocast left in fp32
    check_interp(_triton, [u, delta, A, B, C, D, bias], out_fp32=False, label="mixed")


def test_triton_dispatcher_op_matches_eager_path(interp):
    """Graph capture (compile, jit.trace) uses the registered ops; eager calls an autograd.Function on the
    same launchers. Both give bit-identical outputs and gradients."""
    x = make_inputs(1, 2, 3, 1, 2 * CHUNK + 5)
    dy = torch.randn(1, 6, 2 * CHUNK + 5)
    op = lambda *a: torch.ops.vmbench.selective_scan_triton(*a, True, True)[0]  # noqa: E731
    y1, g1 = run_with_grads(_triton, x, dy)
    y2, g2 = run_with_grads(op, x, dy)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("n", [1, 2])
def test_triton_inference_path_skips_the_states(interp, n):
    """Without gradients the scan launches without an autograd node and writes no chunk states: the output is
    bit-identical to the training forward's."""
    x = make_inputs(2, 2, 6, n, 2 * CHUNK + 5, torch.bfloat16)
    y_train, hs = T._scan_fwd(*x, True, True)
    y_inf, none = T._scan_fwd(*x, True, True, states=False)
    assert none is None and hs is not None and torch.equal(y_inf, y_train)
    with torch.no_grad():
        assert torch.equal(_triton(*x), y_train)
    xs = [t.requires_grad_(True) for t in x]
    assert _triton(*xs).grad_fn is not None  # with gradients: the autograd Function


def test_triton_n1_reads_strided_b_c_in_place(interp):
    """N = 1: B and C may be row-strided views (SS2D passes the B / C rows of its projections): read in place,
    with results bit-identical to contiguous copies."""
    batch, k, d, L = 2, 2, 6, 2 * CHUNK + 5
    u, delta, A, _, _, D, bias = make_inputs(batch, k, d, 1, L, torch.bfloat16)
    ps = torch.randn(batch, k, 3, L).to(torch.bfloat16)  # rows: (dt, B, C) as in SS2D
    B, C = ps[:, :, 1:2], ps[:, :, 2:3]
    assert not B.is_contiguous() and T._rows_ok(B, C, k)
    y1, hs1 = T._scan_fwd(u, delta, A, B, C, D, bias, True, True)
    y2, hs2 = T._scan_fwd(u, delta, A, B.contiguous(), C.contiguous(), D, bias, True, True)
    assert torch.equal(y1, y2) and torch.equal(hs1, hs2)
    dy = torch.randn(y1.shape)
    g1 = T._scan_bwd_parts(dy, u, delta, A, B, C, D, bias, hs1, True)
    g2 = T._scan_bwd_parts(dy, u, delta, A, B.contiguous(), C.contiguous(), D, bias, hs2, True)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert g1[3].shape == (batch, k, 2, L)  # dB's rows then dC's
    assert not T._rows_ok(B.contiguous(), C, k) and not T._rows_ok(ps[:, :, 1:2, ::2], ps[:, :, 2:3, ::2], k)


def test_triton_is_one_traced_node(interp):
    kinds = _trace_kinds(_Scan("triton"), make_inputs(1, 2, 2, 1, 8))
    assert kinds == ["vmbench::selective_scan_triton", "aten::mul"]
    assert kinds[0] in SCAN_TRACE_NAMES


def test_triton_rejects_bad_inputs(interp):
    u, delta, A, B, C, D, bias = make_inputs(1, 2, 3, 2, 5)
    with pytest.raises(ValueError, match="fp32"):
        _triton(u, delta, A.double(), B, C, D, bias)
    with pytest.raises(ValueError, match="A must be"):
        _triton(u, delta, A[:-1], B, C, D, bias)
    with pytest.raises(ValueError, match="fp64"):
        T.selective_scan_triton(u.double(), delta.double(), A, B.double(), C.double(), D, bias)
    with pytest.raises(ValueError, match="unknown scan config"):
        with T.scan_config(blok=3):
            pass


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="cannot run"):
        _triton(*make_inputs(1, 1, 2, 1, 4))


# --------------------------------------------------------------------------------------------
# GPU: the VMamba-T stage shapes (K = 4, N = 1), a long sequence, N = 16, torch.compile
# --------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
STAGES = [(384, 3136), (768, 784), (1536, 196), (3072, 49)]  # (K*D, L) of VMamba-T at 224^2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kd,L", STAGES)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_stage_shapes(monkeypatch, kd, L, dtype):
    monkeypatch.setattr(T, "_POISON", True)
    x = make_inputs(4, 4, kd // 4, 1, L, DTYPES[dtype], device="cuda")
    check_against_fp64(_triton, x, out_fp32=dtype != "fp32", label=f"stage {kd}x{L} {dtype}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("n,L", [(16, 784), (4, 65536), (2, 1), (8, 257)])
def test_gpu_other_shapes(monkeypatch, n, L):
    monkeypatch.setattr(T, "_POISON", True)
    x = make_inputs(1 if L > 10000 else 2, 2, 8, n, L, torch.bfloat16, device="cuda")
    check_against_fp64(_triton, x, out_fp32=True, label=f"N={n} L={L}")


@pytest.mark.gpu
@gpu
def test_gpu_compile_fullgraph_and_autocast():
    x = make_inputs(2, 4, 24, 1, 196, torch.float32, device="cuda")
    xs = [t.requires_grad_(True) for t in x]

    def f(*a):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            u, delta, A, B, C, D, bias = a
            lin = torch.nn.functional.linear  # autocast makes these bf16, as in the model
            eye = torch.eye(u.shape[-1], device=u.device)
            return _triton(lin(u, eye), lin(delta, eye), A, lin(B, eye), lin(C, eye), D, bias).square().sum()

    cf = torch.compile(f, fullgraph=True)
    l1 = cf(*xs)
    g1 = torch.autograd.grad(l1, xs)
    l2 = f(*xs)
    g2 = torch.autograd.grad(l2, xs)
    assert rel(l1, l2) < 1e-3  # same kernels; only the bf16 projections around them may be fused differently
    for a, b in zip(g1, g2):
        assert rel(a, b) < 1e-2
