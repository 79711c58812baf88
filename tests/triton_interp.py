"""Shared set-up for the Triton kernel tests that run on the CPU through Triton's interpreter.

Triton decides "interpreted or compiled" when a function is decorated, its own library (tl.sum,
tl.cdiv, ...) included, so TRITON_INTERPRET=1 must be set before `triton` is first imported. If a
test module is collected before anything imported triton (and there is no GPU), `interpreter_ready`
imports triton and the kernel modules with the variable set and restores the environment;
otherwise `rerun_in_interpreter` re-runs the test file in a fresh subprocess with the variable set.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import torch

CHILD = "_VMBENCH_INTERP_CHILD"  # set in the re-run subprocess
FLOOR = 8 * torch.finfo(torch.float32).eps
KERNEL_MODULES = ("vmbench.kernels._cross_scan_triton", "vmbench.kernels._ss2d_triton",
                  "vmbench.kernels._layer_norm_triton", "vmbench.kernels._linear_gelu_triton",
                  "vmbench.kernels._dwconv_silu_triton", "vmbench.kernels._mlp_triton")


def interpreter_ready(module: str, kernel: str) -> bool:
    """Can this process run `module.kernel` (and Triton's library) under the interpreter?"""
    if os.environ.get(CHILD) == "1":
        return True
    if torch.cuda.is_available():
        return False  # never switch a GPU process's Triton into interpreter mode
    if "triton" not in sys.modules:
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton.language  # noqa: F401

            for name in KERNEL_MODULES:
                importlib.import_module(name)
        except ImportError:
            return False
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
    try:
        import triton.language.standard as std
        from triton.runtime.jit import JITFunction

        mod = importlib.import_module(module)
    except ImportError:
        return False
    return not isinstance(std.cdiv, JITFunction) and not isinstance(getattr(mod, kernel), JITFunction)


def run_fresh(test_file: str, env: dict) -> subprocess.CompletedProcess:
    """Run `test_file`'s CPU tests in a fresh process with environment `env`; skips are listed ("SKIPPED")."""
    # one process (addopts' -n dropped): the parent suite already runs a worker per CPU
    r = subprocess.run([sys.executable, "-m", "pytest", test_file, "-o", "addopts=", "-q", "-x", "-rs", "-p",
                        "no:cacheprovider", "-m", "not gpu"], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    return r


def rerun_in_interpreter(test_file: str) -> None:
    """Run `test_file`'s CPU tests in a fresh process with TRITON_INTERPRET=1 from the start."""
    run_fresh(test_file, dict(os.environ, TRITON_INTERPRET="1", **{CHILD: "1"}))


def subprocess_test(test_file: str, in_process: bool):
    """A test for `test_file` to bind as `test_interpreter_subprocess`: its interpreter tests re-run in a fresh
    process with TRITON_INTERPRET=1 from the start, unless they run in this one (`in_process`)."""
    import pytest

    @pytest.mark.skipif(in_process or os.environ.get(CHILD) == "1", reason="ran in-process")
    def test_interpreter_subprocess():
        """This file's interpreter tests, in a fresh process with TRITON_INTERPRET=1 from the start."""
        rerun_in_interpreter(test_file)
    return test_interpreter_subprocess


def patch_interpreter_bf16(monkeypatch) -> None:
    """The interpreter casts fp32 -> bf16 by truncation; CUDA (and torch) round to nearest even.
    Patch that one cast to torch's conversion so bf16 outputs are rounded as on the GPU."""
    import triton.language as tl
    from triton.runtime import interpreter as ip

    orig = ip.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            data = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16).view(torch.int16).numpy()
            return ip.TensorHandle(data.view(np.uint16), dst_type.scalar)
        return orig(self, src, dst_type)

    monkeypatch.setattr(ip.InterpreterBuilder, "cast_impl", cast_impl)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def use_interpreter(monkeypatch):
    """Per test: TRITON_INTERPRET=1 (so resolve_backend accepts "triton" on CPU tensors), GPU-like bf16
    rounding, and NaN-poisoned outputs in the cross-scan kernels. Returns the cross-scan kernel module."""
    import vmbench.kernels._cross_scan_triton as xst

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    patch_interpreter_bf16(monkeypatch)
    monkeypatch.setattr(xst, "POISON", True)
    return xst


def saved_activation_bytes(fn, x: torch.Tensor) -> int:
    """Bytes autograd saves for a backward while fn() runs, counting each distinct tensor of at least x's size once
    (the activations; the weights of these tests are smaller)."""
    seen = {}

    def pack(t):
        if t.numel() >= x.numel():
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def check_against_fp64(fn, ref, *operands):
    """An op of tensors (None entries allowed: absent biases) against its twin `ref` and float64: y = fn(*operands)
    must be fully written and, like the gradient of every tensor operand, within 2 x the twin's error at the
    operands' precision (against fp64) + FLOOR. Returns y."""
    leaves = [t for t in operands if t is not None]

    def call(f, tensors):
        it = iter(tensors)
        return f(*(None if t is None else next(it) for t in operands))
    y = fn(*operands)
    assert y.dtype == leaves[0].dtype and not y.isnan().any(), "unwritten output"
    g = torch.randn(y.shape, device=y.device).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, g)
    y_ref = ref(*operands)
    grads_ref = torch.autograd.grad(y_ref, leaves, g)
    up = [t.detach().double().requires_grad_(True) for t in leaves]
    y64 = call(ref, up)
    grads64 = torch.autograd.grad(y64, up, g.double())
    assert rel(y, y64) <= 2 * rel(y_ref, y64) + FLOOR, ("y", rel(y, y64), rel(y_ref, y64))
    for i, (gk, gr, g64, leaf) in enumerate(zip(grads, grads_ref, grads64, leaves)):
        assert gk.dtype == leaf.dtype and gk.shape == leaf.shape and not gk.isnan().any(), f"grad {i}"
        assert rel(gk, g64) <= 2 * rel(gr, g64) + FLOOR, (f"grad {i}", rel(gk, g64), rel(gr, g64))
    return y



# What a torch.compile capture test's child process starts with: a backend that records the captured graphs, and
# helpers over the dynamo counters. `capture` compiles fn, calls it under bf16 autocast and compares with eager.
COMPILE_PRELUDE = r"""
import json, torch
from torch._dynamo.utils import counters
graphs = []
def backend(gm, inputs):
    graphs.append(gm)
    return gm.forward
def fresh():
    torch._dynamo.reset(); counters.clear(); graphs.clear()
def stats():
    return dict(graphs=counters["stats"]["unique_graphs"], breaks=sum(counters["graph_break"].values()),
                ops=sorted({str(n.target) for g in graphs for n in g.graph.nodes
                            if n.op == "call_function" and "vmbench" in str(n.target)}))
def capture(fn, x, train):
    fresh()
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.compile(fn, backend=backend)(x)
        ref = fn(x)
    if train:
        y.float().sum().backward()
    return dict(stats(), same=bool(torch.equal(y, ref)))
out = {}
"""


def run_compile_child(body: str, root) -> dict:
    """Run COMPILE_PRELUDE + `body` (which fills the dict `out`) in a fresh process with TRITON_INTERPRET=1 and the
    checkout `root` on the path; returns `out`."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    script = COMPILE_PRELUDE + body + '\nprint("RESULT " + json.dumps(out))\n'
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(line[0][len("RESULT "):])


def assert_one_graph_with(results: dict, op: str) -> None:
    """`run_compile_child` results of `capture` calls: each one graph, no break, the eager output, and `op` the only
    vmbench op in it; the case named "op" (and only it) ran with gradients and reached the parameters."""
    for name, r in results.items():
        assert (r["graphs"], r["breaks"]) == (1, 0) and r["same"], (name, r)
        assert r["ops"] == [op] and r.get("grad", False) == (name == "op"), (name, r)
