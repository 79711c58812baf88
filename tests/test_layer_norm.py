"""LayerNorm: the Triton kernels against the torch twin and float64, and the nn.LayerNorm drop-in.

CPU: Triton's interpreter, set up as in tests/test_cross_scan.py (TRITON_INTERPRET=1 before `triton` is
first imported, else this file re-runs itself in a subprocess). tests/triton_interp.py imports the
older kernel modules in interpreter mode; `_import_layer_norm_interpreted` does the same for this one.
Most tests shrink the per-program tile targets so that tiny shapes still give several programs, a
ragged last tile and backward programs that walk more than one tile.

Tolerance (derived): for y, dx, dweight and dbias,
    ||kernel - fp64|| / ||fp64|| <= 2 * ||ref - fp64|| / ||fp64|| + FLOOR,
`ref` = `layer_norm_ref` on the same low-precision inputs, fp64 = the same function on those inputs
upcast (weights drawn in fp32, so upcasting is exact), FLOOR = 8 * fp32 eps. Outputs and the partial
sum buffers are poisoned with NaN before each launch and checked to be fully written.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from triton_interp import CHILD, FLOOR, interpreter_ready, rel, run_compile_child, subprocess_test, use_interpreter

MODULE = "vmbench.kernels._layer_norm_triton"
ROOT = Path(__file__).resolve().parents[1]


def _import_layer_norm_interpreted() -> None:
    """Import this kernel module with TRITON_INTERPRET=1 when this process's Triton is the interpreter
    (triton_interp.KERNEL_MODULES does not list it); never in a GPU process or a compiled-mode one."""
    if torch.cuda.is_available() or MODULE in sys.modules or os.environ.get(CHILD) == "1":
        return
    try:
        import triton.language.standard as std
        from triton.runtime.jit import JITFunction
    except ImportError:
        return
    if isinstance(std.cdiv, JITFunction):
        return  # compiled mode: test_interpreter_subprocess covers this file
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module(MODULE)
    except ImportError:
        pass
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


INTERP = interpreter_ready("vmbench.kernels._cross_scan_triton", "_cross_scan_kernel")
if INTERP:
    _import_layer_norm_interpreted()
    INTERP = interpreter_ready(MODULE, "_ln_fwd_kernel")
interp = pytest.mark.skipif(not INTERP, reason="Triton imported in compiled mode; see test_interpreter_subprocess")


@pytest.fixture
def triton_cpu(monkeypatch):
    """Interpreter, GPU-like bf16 rounding, NaN-poisoned buffers (the kernels share cross-scan's new_buffer)."""
    use_interpreter(monkeypatch)
    return importlib.import_module(MODULE)


@pytest.fixture
def small_tiles(triton_cpu, monkeypatch):
    """Tile targets shrunk so tiny shapes give several programs and ragged last tiles."""
    monkeypatch.setattr(triton_cpu, "FWD_ELEMS", 32)
    monkeypatch.setattr(triton_cpu, "BWD_ELEMS", 16)
    monkeypatch.setattr(triton_cpu, "CPU_PROGRAMS", 3)
    return triton_cpu


test_interpreter_subprocess = subprocess_test(__file__, INTERP)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OTHER = {torch.float32: torch.bfloat16, torch.bfloat16: torch.float32, torch.float16: torch.bfloat16}
SHAPES = [(15, 6), (2, 3, 5, 12), (7, 40), (1, 1, 2, 96)]  # rows 15, 30, 7, 2: none a multiple of BLOCK_R


def make_params(c, affine, device="cpu"):
    """weight, bias in fp32 ('wb': both, 'w': weight only, 'none')."""
    w = (1 + 0.5 * torch.randn(c, device=device)) if affine in ("wb", "w") else None
    b = 0.5 * torch.randn(c, device=device) if affine == "wb" else None
    return [t.requires_grad_(True) if t is not None else None for t in (w, b)]


def check_against_fp64(fn, x, w, b, out_dtype=None, eps=1e-5, g=None):
    """Run `fn` (kernel path) and the twin at x's precision and in fp64; assert the derived tolerance for
    y and every gradient. Returns (y, grads)."""
    from vmbench.kernels import layer_norm_ref

    leaves = [t for t in (x, w, b) if t is not None]
    y = fn(x, w, b, eps, out_dtype)
    assert y.shape == x.shape and y.dtype == (out_dtype or x.dtype) and y.is_contiguous()
    assert not y.isnan().any(), "unwritten output"
    g = torch.randn(x.shape, device=x.device).to(y.dtype) if g is None else g
    grads = torch.autograd.grad(y, leaves, g)
    y_ref = layer_norm_ref(x, w, b, eps, out_dtype)
    grads_ref = torch.autograd.grad(y_ref, leaves, g)
    up = [t.detach().double().requires_grad_(True) for t in leaves]
    x64, w64, b64 = (up.pop(0) if t is not None else None for t in (x, w, b))
    y64 = layer_norm_ref(x64, w64, b64, eps)
    grads64 = torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None], g.double())
    assert rel(y, y64) <= 2 * rel(y_ref, y64) + FLOOR, ("y", rel(y, y64), rel(y_ref, y64))
    for name, gk, gr, g64, leaf in zip("xwb", grads, grads_ref, grads64, leaves):
        assert gk.dtype == leaf.dtype and gk.shape == leaf.shape
        assert not gk.isnan().any(), f"unwritten d{name}"
        assert rel(gk, g64) <= 2 * rel(gr, g64) + FLOOR, (f"d{name}", rel(gk, g64), rel(gr, g64))
    return y, grads


def _triton(x, w, b, eps, out_dtype):
    from vmbench.kernels import layer_norm

    return layer_norm(x, w, b, eps, out_dtype, backend="triton")


@interp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("other_out", [False, True])
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
def test_forward_backward(small_tiles, shape, dtype, other_out, affine):
    x = torch.randn(shape).mul(2).add(0.5).to(dtype).requires_grad_(True)  # non-zero mean
    w, b = make_params(shape[-1], affine)
    check_against_fp64(_triton, x, w, b, OTHER[dtype] if other_out else None)


@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_default_tiles(triton_cpu, dtype):
    """The real tile targets (one program per 4K elements) at a small shape; eps other than the default."""
    x = torch.randn(3, 7, 7, 24).to(dtype).requires_grad_(True)
    w, b = make_params(24, "wb")
    check_against_fp64(_triton, x, w, b, eps=1e-3)


@interp
def test_stats_and_launch_configs(small_tiles):
    """Saved mean / rstd match fp64; explicit configs (1 program, more programs than tiles) agree."""
    lt = small_tiles
    x = torch.randn(13, 40) * 3 + 1
    w, b = torch.randn(40), torch.randn(40)
    y, mean, rstd = lt.layer_norm_fwd_launch(x, w, b, 1e-5)
    x64 = x.double()
    assert mean.shape == (13,) and rstd.shape == (13,) and mean.dtype == rstd.dtype == torch.float32
    assert rel(mean, x64.mean(-1)) <= 1e-6
    assert rel(rstd, (x64.var(-1, unbiased=False) + 1e-5).rsqrt()) <= 1e-6
    dy = torch.randn(13, 40)
    base = lt.layer_norm_bwd_launch(dy, x, w, mean, rstd)
    for cfg in [(1, 4, 1), (4, 4, 2), (2, 8, 64)]:
        assert torch.equal(lt.layer_norm_fwd_launch(x, w, b, 1e-5, config=cfg[:2])[0], y)
        got = lt.layer_norm_bwd_launch(dy, x, w, mean, rstd, config=cfg)
        assert torch.equal(got[0], base[0])  # dx: per-row, independent of the grid
        for a, c in zip(got[1:], base[1:]):
            assert rel(a, c) <= 1e-6  # dweight / dbias: summation order follows the grid
    again = lt.layer_norm_bwd_launch(dy, x, w, mean, rstd)
    assert all(torch.equal(a, c) for a, c in zip(again, base)), "backward must be deterministic"


@interp
def test_inference_path_writes_no_stats(small_tiles):
    """Without gradients LayerNorm launches without an autograd node and without mean / rstd; y is
    bit-identical to the training forward's."""
    lt = small_tiles
    x = torch.randn(5, 7, 40)
    w, b = torch.randn(40), torch.randn(40)
    y, mean, rstd = lt.layer_norm_fwd_launch(x, w, b, 1e-5)
    y2, none1, none2 = lt.layer_norm_fwd_launch(x, w, b, 1e-5, stats=False)
    assert none1 is None and none2 is None and mean is not None and torch.equal(y2, y)
    with torch.no_grad():
        assert torch.equal(lt.layer_norm_triton(x, w, b, 1e-5), y)
    assert lt.layer_norm_triton(x.requires_grad_(True), w, b, 1e-5).grad_fn is not None


@interp
@pytest.mark.parametrize("affine", ["wb", "none"])
def test_dispatcher_op_matches_eager_path(small_tiles, affine):
    """Graph capture uses the registered op; eager calls an autograd.Function on the same launchers."""
    x = torch.randn(15, 40).to(torch.bfloat16).requires_grad_(True)
    w, b = make_params(40, affine)
    op = lambda x, w, b, eps, out: torch.ops.vmbench.layer_norm_fwd(x, w, b, eps, out or x.dtype)[0]  # noqa: E731
    leaves = [t for t in (x, w, b) if t is not None]
    g = torch.randn(15, 40)
    outs = []
    for fn in (_triton, op):
        y = fn(x, w, b, 1e-5, torch.float32)
        outs.append((y, torch.autograd.grad(y, leaves, g)))
    (y1, g1), (y2, g2) = outs
    assert torch.equal(y1, y2) and all(torch.equal(a, c) for a, c in zip(g1, g2))


# Two paths through the same backward kernel with one cotangent: fp32 gradients differ by the statistics' rounding
# (~1e-7 measured); a low-precision dx may also flip a last bit (one ulp of the dtype).
REL_SAME_BACKWARD = {torch.float32: 1e-5, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


@interp
@pytest.mark.parametrize("dtype,out_dtype,affine", [(torch.float32, torch.bfloat16, "wb"),
                                                    (torch.bfloat16, torch.float32, "w"),
                                                    (torch.float16, None, "none")])
def test_compiled_training_function(small_tiles, dtype, out_dtype, affine):
    """`layer_norm_compiled` (compiled graphs with gradients: aten's forward, this backward) called eagerly: y and
    every gradient within the derived tolerance of fp64, and the gradients those of the all-Triton path."""
    x = torch.randn(2, 3, 5, 12).mul(2).add(0.5).to(dtype).requires_grad_(True)
    w, b = make_params(12, affine)
    fn = lambda x, w, b, eps, out: small_tiles.layer_norm_compiled(x, w, b, eps, out or x.dtype)  # noqa: E731
    g = torch.randn(x.shape).to(out_dtype or dtype)
    y, grads = check_against_fp64(fn, x, w, b, out_dtype, g=g)
    y2, grads2 = check_against_fp64(_triton, x, w, b, out_dtype, g=g)
    assert y.grad_fn is not None and y.dtype == y2.dtype
    for a, c in zip(grads, grads2):  # one backward kernel, one cotangent: only the statistics' rounding differs
        assert rel(a, c) <= REL_SAME_BACKWARD[a.dtype], (a.dtype, rel(a, c))


_COMPILE_TRAIN_CHILD = r"""
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
import importlib
from vmbench.kernels import LayerNorm
lnmod = importlib.import_module("vmbench.kernels.layer_norm")  # the package exports a function of that name
torch._functorch.config.decompose_custom_triton_ops = False  # keep the op as one node (the interpreter cannot trace)
graphs_seen = {}
def recorder(name):
    def compiler(gm, inputs):
        graphs_seen[name] = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return make_boxed_func(gm.forward)
    return compiler
torch.manual_seed(0)
norm = LayerNorm(12, autocast_out=True, backend="triton")
with torch.no_grad():
    norm.weight.copy_(torch.randn(12)); norm.bias.copy_(torch.randn(12))
lin = torch.nn.Linear(12, 8)
def block(x, r):
    return lin(norm(x + r))  # the residual add before the norm, a Linear after it: VMamba's block
x = torch.randn(2, 3, 5, 12, requires_grad=True); r = torch.randn(2, 3, 5, 12); g = torch.randn(2, 3, 5, 8)
def grads(fn):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(x, r)
    return y, torch.autograd.grad(y, (x, norm.weight, norm.bias), g.to(y.dtype))
y_eager, eager = grads(block)
def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())
for name, bwd, fwd in (("bwd", True, False), ("fwd", False, True), ("off", False, False)):
    lnmod.USE_KERNEL, lnmod.USE_KERNEL_FWD = bwd, fwd
    fresh(); graphs_seen.clear()
    y, got = grads(torch.compile(block, backend=aot_autograd(fw_compiler=recorder("fw"), bw_compiler=recorder("bw")),
                                 fullgraph=True))
    out[name] = dict(stats(), fw=graphs_seen["fw"], bw=graphs_seen["bw"], y=rel(y, y_eager),
                     grads=[rel(a, b) for a, b in zip(got, eager)])
"""


def test_compiled_training_takes_the_triton_kernels():
    """torch.compile with gradients (AOTAutograd, Triton interpreter): with `USE_KERNEL` alone the forward graph keeps
    aten's LayerNorm (for Inductor to fuse) and the backward graph calls vmbench::layer_norm_bwd; with
    `USE_KERNEL_FWD` the forward calls vmbench::layer_norm_fwd too; with neither no graph has a vmbench op. One
    graph, no break, and the gradients of the eager all-Triton path each time."""
    out = run_compile_child(_COMPILE_TRAIN_CHILD, ROOT)
    for name, r in out.items():
        assert (r["graphs"], r["breaks"]) == (1, 0), (name, r)
        assert r["y"] <= 1e-2 and max(r["grads"]) <= 2e-2, (name, r)  # bf16 y and Linear: eager's roundings
    vm = {name: ([op for op in r["fw"] if "vmbench" in op], [op for op in r["bw"] if "vmbench" in op])
          for name, r in out.items()}
    assert vm == {"bwd": ([], ["vmbench.layer_norm_bwd.default"]),
                  "fwd": (["vmbench.layer_norm_fwd.default"], ["vmbench.layer_norm_bwd.default"]),
                  "off": ([], [])}, vm
    assert "aten.native_layer_norm.default" in out["bwd"]["fw"], out["bwd"]


@interp
def test_noncontiguous_inputs(small_tiles):
    """Last-dim-strided x (copied), row-strided x[..., :C] (read in place), non-contiguous cotangent."""
    w, b = make_params(12, "wb")
    xt = torch.randn(2, 12, 5).to(torch.bfloat16).transpose(1, 2).requires_grad_(True)  # (2, 5, 12), stride(-1)=5
    assert xt.stride(-1) != 1
    g = torch.randn(2, 12, 5).transpose(1, 2).to(torch.bfloat16)
    check_against_fp64(_triton, xt, w, b, g=g)
    wide = torch.randn(3, 4, 17)
    xs = wide[..., 2:14].requires_grad_(True)  # (3, 4, 12), rows 17 apart
    assert not xs.is_contiguous() and xs.stride(-1) == 1
    check_against_fp64(_triton, xs, w, b, torch.float16)


@interp
def test_empty_and_single_row(triton_cpu):
    from vmbench.kernels import layer_norm

    w, b = make_params(6, "wb")
    x = torch.randn(0, 6, requires_grad=True)
    y = layer_norm(x, w, b, backend="triton")
    assert y.shape == (0, 6)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.ones(0, 6))
    assert gx.shape == (0, 6) and torch.equal(gw, torch.zeros(6)) and torch.equal(gb, torch.zeros(6))
    check_against_fp64(_triton, torch.randn(6, requires_grad=True), w, b)  # 1-d x: one row


# ------------------------------------------------------------------------------------ module


def test_module_state_dict_and_cpu_equivalence():
    from vmbench.kernels import LayerNorm

    for kw in [{}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-6}]:
        ours = LayerNorm(40, **kw)
        ref = nn.LayerNorm(40, **kw)
        with torch.no_grad():
            for p in ours.parameters():
                p.copy_(torch.randn_like(p))
        assert ours.state_dict().keys() == ref.state_dict().keys()
        ref.load_state_dict(ours.state_dict())
        back = LayerNorm(40, **kw)
        back.load_state_dict(ref.state_dict())
        assert all(torch.equal(a, c) for a, c in zip(back.state_dict().values(), ours.state_dict().values()))
        x = torch.randn(2, 3, 4, 40)
        assert torch.equal(ours(x), ref(x))
        xb = x.to(torch.bfloat16)
        assert torch.equal(ours(xb), ref(xb))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast_out off: nn.LayerNorm's autocast policy
            a, c = ours(xb), ref(xb)
        assert a.dtype == c.dtype and torch.equal(a, c)
    assert "autocast_out=False" in repr(LayerNorm(8))


def test_module_autocast_out():
    from vmbench.kernels import LayerNorm, layer_norm_ref

    m = LayerNorm(12, autocast_out=True)
    x = torch.randn(5, 12)
    assert m(x).dtype == torch.float32  # autocast off: x's dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, layer_norm_ref(x, m.weight, m.bias, m.eps, torch.bfloat16))
    with pytest.raises(ValueError):
        m(torch.randn(5, 13))
    with pytest.raises(ValueError):
        LayerNorm((4, 12))


def test_module_compiles_fullgraph_cpu():
    """Dynamo traces the autocast-dtype lookup without a graph break (torch backend; eager compiler)."""
    from vmbench.kernels import LayerNorm

    m = LayerNorm(12, autocast_out=True)
    f = torch.compile(m, backend="eager", fullgraph=True)
    x = torch.randn(3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f(x)
    assert y.dtype == torch.bfloat16


@interp
@pytest.mark.parametrize("autocast_out", [False, True])
def test_module_triton_backend(small_tiles, autocast_out):
    from vmbench.kernels import LayerNorm, layer_norm_ref

    m = LayerNorm(12, autocast_out=autocast_out, backend="triton")
    with torch.no_grad():
        m.weight.copy_(torch.randn(12))
        m.bias.copy_(torch.randn(12))
    x = torch.randn(2, 3, 3, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    want = torch.bfloat16 if autocast_out else torch.float32
    assert y.dtype == want
    y_ref = layer_norm_ref(x, m.weight, m.bias, m.eps, want)
    assert rel(y, y_ref) <= (4e-3 if autocast_out else 1e-6)
    y.float().sum().backward()
    assert m.weight.grad is not None and m.bias.grad is not None and x.grad is not None
    xb = x.detach().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 in: fp32 out as nn.LayerNorm under autocast
        yb = m(xb)
    assert yb.dtype == want
    assert rel(yb, layer_norm_ref(xb, m.weight, m.bias, m.eps, want)) <= (4e-3 if autocast_out else 1e-6)
    assert m(xb).dtype == torch.bfloat16  # autocast off: x's dtype


# ------------------------------------------------------------------------------------ errors


def test_errors(monkeypatch):
    from vmbench.kernels import layer_norm

    with pytest.raises(ValueError):
        layer_norm(torch.randn(3, 8), torch.randn(7), backend="torch")
    with pytest.raises(ValueError):
        layer_norm(torch.randn(3, 8), None, torch.randn(8, 1), backend="torch")
    with pytest.raises(ValueError):
        layer_norm(torch.randn(3, 8), backend="cuda")
    assert layer_norm(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float64  # auto: twin
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError):
        layer_norm(torch.randn(3, 8), backend="triton")


@interp
def test_triton_rejects_unsupported(triton_cpu):
    from vmbench.kernels import layer_norm

    with pytest.raises(ValueError):
        layer_norm(torch.randn(3, 8, dtype=torch.float64), backend="triton")
    with pytest.raises(ValueError):
        layer_norm(torch.randn(3, 8), out_dtype=torch.float64, backend="triton")


# ------------------------------------------------------------------------------------------ GPU


gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GPU_SHAPES = [(128 * 56 * 56, 96), (128 * 28 * 28, 192), (128 * 14 * 14, 384), (128 * 7 * 7, 768)]


@gpu
@needs_cuda
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtypes", [(torch.bfloat16, None), (torch.float32, None), (torch.float32, torch.bfloat16)])
def test_gpu_vmamba_shapes(shape, dtypes):
    """VMamba-T's LayerNorm shapes (batch 128): forward and all gradients vs fp64, deterministic backward."""
    import vmbench.kernels._cross_scan_triton as xst

    dtype, out_dtype = dtypes
    xst.POISON = True
    try:
        x = torch.randn(shape, device="cuda").mul(2).add(0.5).to(dtype).requires_grad_(True)
        w, b = make_params(shape[-1], "wb", device="cuda")
        y, grads = check_against_fp64(_triton, x, w, b, out_dtype)
        g = torch.randn(shape, device="cuda").to(y.dtype)
        y1 = _triton(x, w, b, 1e-5, out_dtype)
        a = torch.autograd.grad(y1, (x, w, b), g)
        y2 = _triton(x, w, b, 1e-5, out_dtype)
        c = torch.autograd.grad(y2, (x, w, b), g)
        assert torch.equal(y1, y2) and all(torch.equal(p, q) for p, q in zip(a, c)), "not deterministic"
    finally:
        xst.POISON = False


@gpu
@needs_cuda
def test_gpu_compile_traces_through():
    """torch.compile(fullgraph=True) sees the custom ops (no graph break), forward and backward, under AMP."""
    from vmbench.kernels import LayerNorm, layer_norm_ref

    m = LayerNorm(96, autocast_out=True).cuda()
    with torch.no_grad():
        m.weight.copy_(torch.randn(96))
        m.bias.copy_(torch.randn(96))
    lin = nn.Linear(96, 32).cuda()

    def f(x):
        return lin(m(x))

    x = torch.randn(4, 14, 14, 96, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = torch.compile(f, fullgraph=True)(x)
        assert m(x).dtype == torch.bfloat16
    y_ref = nn.functional.linear(layer_norm_ref(x, m.weight, m.bias, m.eps, torch.bfloat16),
                                 lin.weight.bfloat16(), lin.bias.bfloat16())
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    (gx,) = torch.autograd.grad(y.float().sum(), x)
    (gx_ref,) = torch.autograd.grad(y_ref.float().sum(), x)
    assert rel(gx, gx_ref) <= 2e-2


@gpu
@needs_cuda
def test_gpu_compiled_training_kernels():
    """Inductor, with gradients, at VMamba-T's stage-1 shape (batch 8): the residual add, LayerNorm and a Linear
    compiled with the Triton backward (`USE_KERNEL`), with the Triton forward and backward (`USE_KERNEL_FWD`) and
    with Inductor's own LayerNorm give the same gradients."""
    lnmod = importlib.import_module("vmbench.kernels.layer_norm")
    from vmbench.kernels import LayerNorm

    torch.manual_seed(0)
    m = LayerNorm(96, autocast_out=True).cuda()
    with torch.no_grad():
        m.weight.copy_(torch.randn(96))
        m.bias.copy_(torch.randn(96))
    lin = nn.Linear(96, 384).cuda()
    x = torch.randn(8, 56, 56, 96, device="cuda", requires_grad=True)
    r = torch.randn(8, 56, 56, 96, device="cuda")
    g = torch.randn(8, 56, 56, 384, device="cuda").bfloat16()
    got = {}
    old = lnmod.USE_KERNEL, lnmod.USE_KERNEL_FWD
    try:
        for flags in ((True, False), (False, True), (False, False)):
            lnmod.USE_KERNEL, lnmod.USE_KERNEL_FWD = flags
            torch._dynamo.reset()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = torch.compile(lambda x, r: lin(m(x + r)), fullgraph=True)(x, r)
            got[flags] = torch.autograd.grad(y, (x, m.weight, m.bias), g)
    finally:
        lnmod.USE_KERNEL, lnmod.USE_KERNEL_FWD = old
        torch._dynamo.reset()
    for flags in ((True, False), (False, True)):
        for a, b in zip(got[flags], got[(False, False)]):
            assert rel(a, b) <= 1e-4, (flags, rel(a, b))  # the same dy: fp32 statistics and sums in another order


@gpu
@needs_cuda
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=["bf16_in", "fp32_in"])
def test_gpu_compiled_training_fp32_output(x_dtype):
    """A norm whose output is fp32 (autocast_out=False under autocast: VMamba's stem and final norms), compiled with
    gradients: the gradients of eager. (The Triton backward gave zero dx there in compiled graphs on an H100; such
    norms keep Inductor's.)"""
    from vmbench.kernels import LayerNorm

    torch.manual_seed(0)
    m = LayerNorm(96).cuda()
    with torch.no_grad():
        m.weight.copy_(torch.randn(96))
        m.bias.copy_(torch.randn(96))
    x = torch.randn(4, 14, 14, 96, device="cuda").to(x_dtype).requires_grad_(True)
    g = torch.randn(4, 14, 14, 96, device="cuda")

    def grads(fn):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x)
        assert y.dtype == torch.float32
        return torch.autograd.grad(y, (x, m.weight, m.bias), g)

    eager = grads(m)
    torch._dynamo.reset()
    compiled = grads(torch.compile(m, fullgraph=True))
    for a, b in zip(compiled, eager):
        assert rel(a, b) <= 1e-2, rel(a, b)
