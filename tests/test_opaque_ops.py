"""The ops VMamba's compiled graphs keep opaque to Inductor (vmbench/models/opaque_ops.py): their registrations (fake
kernel, autograd) checked by torch.library.opcheck, their values and gradients against the aten ops they stand
for, and what they are for: with the convolution op no aten convolution reaches Inductor, so its layout
optimisation stays off (by the rules it applies to a GPU graph) and VMamba's (B, H, W, C) maps keep their layout.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vmbench.models import opaque_ops

import bench_script

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])
# (channels in, channels out, stride, padding, groups, bias): VMamba's stem, downsample and depthwise convolutions
CONVS = {"stem": (3, 8, 2, 1, 1, True), "downsample": (8, 16, 2, 1, 1, True), "depthwise": (16, 16, 1, 1, 16, True),
         "no_bias": (8, 8, 1, 1, 1, False)}


def _operands(case, device, dtype):
    cin, cout, stride, padding, groups, bias = CONVS[case]
    torch.manual_seed(0)
    x = torch.randn(2, cin, 9, 10, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(cout, cin // groups, 3, 3, device=device, dtype=dtype)
    b = torch.randn(cout, device=device, dtype=dtype) if bias else None
    return x, w, b, [stride, stride], [padding, padding], [1, 1], groups


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv2d_op_is_conv2d(case, device):
    """vmbench::conv2d and its backward op pass opcheck (schema, fake kernel, autograd registration, AOT dispatch),
    and the op gives F.conv2d's output and gradients, bit for bit (the same aten kernels), with a channels_last
    output."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    x, w, b, *conf = _operands(case, device, dtype)
    leaves = [t.requires_grad_(True) for t in (x, w, b) if t is not None]
    torch.library.opcheck(opaque_ops.conv2d, (x, w, b, *conf))
    gy = torch.randn_like(F.conv2d(x, w, b, *conf))
    for need in ([True, True, b is not None], [False, True, False]):
        torch.library.opcheck(opaque_ops.conv2d_backward, (gy, x.detach(), w.detach(), b is not None, *conf, need))
    y = opaque_ops.conv2d(x, w, b, *conf)
    ref = F.conv2d(x, w, b, *conf)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ref)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(ref, leaves, g)):
        assert torch.equal(got, want)


def test_gelu_op_is_gelu():
    """vmbench::gelu runs inside `gelu_linear`'s forward only, whose own backward recomputes the GELU: it has no
    autograd formula and is checked without gradients."""
    h = torch.randn(3, 5, 7)
    torch.library.opcheck(opaque_ops.gelu, (h,))
    assert torch.equal(opaque_ops.gelu(h), F.gelu(h))


def _forward_graph_facts(model, x, train: bool) -> dict:
    """The forward graph Inductor would lower for `model(x)` (inductor_graph.inspect): its aten convolutions and
    vmbench::conv2d ops, and Inductor's layout-optimisation decision by its GPU rules (oneDNN off: on the CPU it
    would always say yes)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        facts = bench_script.load("inductor_graph").inspect(model, x, train)
    return {k: facts[k] for k in ("aten_convs", "conv_ops", "conv_op_biases", "layout_opt")}


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
def test_compiled_vmamba_keeps_layout_optimisation_off(train, monkeypatch):
    """A VMamba's forward graph as Inductor gets it (channels_last model and input, as on a GPU): with the
    convolution op it holds no aten convolution (and the op gets no bias), and Inductor's layout optimisation, which
    would give VMamba's (B, H, W, C) tensors channels_last strides (H innermost), stays off. With the op off
    (USE_CONV_OP = False) the same graph turns it on: the check sees what it is meant to see."""
    from vmbench.models.vmamba import _create_vmamba

    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=24, depths=(1, 1, 1, 1)), num_classes=10, scan_backend="torch",
                           drop_path_rate=0.1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in model.modules())
    with_op = _forward_graph_facts(model, x, train)
    monkeypatch.setattr(opaque_ops, "USE_CONV_OP", False)
    without = _forward_graph_facts(model, x, train)
    # the biases are added outside the op, where Inductor fuses the add (cuDNN would add them in a pass of its own)
    assert with_op == dict(aten_convs=0, conv_ops=n_convs, conv_op_biases=0, layout_opt=False), with_op
    assert without == dict(aten_convs=n_convs, conv_ops=0, conv_op_biases=0, layout_opt=True), without


def test_compiled_training_step_matches_eager():
    """A compiled training step (Inductor) of a VMamba whose convolutions run as the op: the loss and every
    gradient of eager's (fp32: only Inductor's reassociations differ)."""
    from vmbench.models.vmamba import _create_vmamba

    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=16, depths=(1, 1, 1, 1)), num_classes=10, scan_backend="torch",
                           drop_path_rate=0.0).train()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([3, 8])

    def step(fn):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fn(x), target)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = step(model)
    torch._dynamo.reset()
    loss_c, grads_c = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_c, grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("conv_op", [True, False], ids=["conv_op", "aten_conv"])
def test_gpu_compiled_training_step_matches_eager(conv_op, monkeypatch):
    """On a GPU (Triton path, channels_last, autocast-bf16): a compiled training step with the convolutions as the
    op (cuDNN's output strides as the fake promised them, or the op's copy) and, for comparison, as aten's: loss and
    gradients as eager's up to bf16 rounding."""
    from vmbench.models.vmamba import _create_vmamba

    monkeypatch.setattr(opaque_ops, "USE_CONV_OP", conv_op)
    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=32, depths=(1, 1, 2, 1)), num_classes=10, scan_backend="triton",
                           drop_path_rate=0.0).cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    target = torch.tensor([3, 8, 1, 0], device="cuda")

    def step(fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fn(x).float(), target)
        loss.backward()
        return loss.detach(), [p.grad.float().clone() for p in model.parameters()]

    loss, grads = step(model)
    torch._dynamo.reset()
    loss_c, grads_c = step(torch.compile(model, fullgraph=True))
    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    assert abs(loss_c.item() - loss.item()) <= 1e-2 * abs(loss.item())
    assert rel(torch.cat([g.flatten() for g in grads_c]), torch.cat([g.flatten() for g in grads])) <= 2e-2
    assert max(rel(got, want) for got, want in zip(grads_c, grads)) <= 0.1


def test_inductor_graph_script_reads_the_layout_decision():
    """benchmarks/inductor_graph.py (the CPU trace behind the layout figures) runs and reports the decision: off for
    VMamba with its defaults, on with the convolution op off; what the training forward saves is counted."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "inductor_graph.py"), "--models", "vmamba_t",
                        "--batch", "1", "--res", "64", "--modes", "train", "--fusions", "default,lnbwd",
                        "--top", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {m.group(1): m for m in re.finditer(r"^\| (vmamba_t\S*) \| train \| \d+ \| (\d+) \| (on|off) \| ([0-9.]+) ",
                                                p.stdout, re.M)}
    assert rows["vmamba_t"].group(2, 3) == ("0", "off") and float(rows["vmamba_t"].group(4)) > 0, p.stdout
    assert rows["vmamba_t/fuse-lnbwd"].group(3) == "on", p.stdout
