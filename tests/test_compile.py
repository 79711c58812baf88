"""VMamba under torch.compile on the CPU: one graph, no graph break, no recompile — in inference (no_grad, with
and without autocast) and in a training step (forward, backward, optimizer step) with per-block drop-path rates.

The torch scan backend (what `auto` picks on the CPU) runs in this process with AOTAutograd ("aot_eager"); the
Triton path (what runs on a GPU) runs in a fresh process under Triton's interpreter, captured by Dynamo
(backend "eager": AOTAutograd cannot trace an interpreted kernel), so its graph shows the registered ops.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmbench.models.vmamba import VSSBlock, _create_vmamba

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dims=16, depths=(1, 1, 2, 1))


def _counting(inner: str):
    """A torch.compile backend that records each graph Dynamo hands it, then compiles it with `inner`."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(inner)(gm, example_inputs)

    return backend, graphs


def _stats():
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _model(drop_path_rate=0.2, depths=TINY["depths"], backend="torch"):
    torch.manual_seed(0)
    return _create_vmamba(dict(TINY, depths=depths), num_classes=10, scan_backend=backend,
                          drop_path_rate=drop_path_rate)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp_bf16"])
def test_inference_is_one_graph(amp):
    model = _model().eval()
    backend, graphs = _counting("aot_eager")
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
            y = compiled(x)
            ref = model(x)
    assert _stats() == (1, 0) and len(graphs) == 1
    ops = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert any("selective_scan_torch" in o for o in ops), "the scan is one opaque custom op in the graph"
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2 if amp else 1e-4, atol=2e-2 if amp else 1e-5)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad_checkpointing"])
def test_training_step_is_one_graph(checkpointing):
    """Forward and backward of every step in one compiled graph; optimizer steps (they move every parameter's
    version and the parameter caches' generation), per-block drop-path rates and activation checkpointing
    (`set_grad_checkpointing`) cause no break and no recompile."""
    model = _model(drop_path_rate=0.3).train()
    model.set_grad_checkpointing(checkpointing)
    backend, graphs = _counting("aot_eager")
    compiled = torch.compile(model, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(compiled(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert _stats() == (1, 0) and len(graphs) == 1
    assert torch.isfinite(loss)


def test_blocks_compiled_one_by_one_share_a_graph_per_stage():
    """`block.compile()` on every block (regional compilation): blocks of one stage, each with its own
    drop-path rate (0 in the first), reuse one graph — the rate is a tensor to the graph, not a constant guarded
    by value (with timm's float rate this model compiled 8 graphs, one per block)."""
    model = _model(drop_path_rate=0.3, depths=(2, 1, 4, 1)).train()
    rates = sorted({b.drop_path.drop_prob for b in model.modules() if isinstance(b, VSSBlock)})
    assert len(rates) == 8 and rates[0] == 0.0  # every block its own rate
    for m in model.modules():
        if isinstance(m, VSSBlock):
            m.compile(backend="eager")
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        model(x).sum().backward()
    graphs, breaks = _stats()
    assert breaks == 0 and graphs == 4  # one per stage: the stages differ in shape


def test_drop_path_is_timms_in_distribution_and_state_dict():
    """vmbench's DropPath keeps a sample's branch with probability 1 - p and scales it by 1 / (1 - p) in
    training, is the identity in eval, and adds nothing to the state_dict (official checkpoints load strictly)."""
    from vmbench.models.vmamba import DropPath

    dp = DropPath(0.25).train()
    x = torch.ones(4000, 1, 1, 3, dtype=torch.bfloat16)
    y = dp(x)
    assert y.dtype == torch.bfloat16
    kept = (y[:, 0, 0, 0] != 0).float()
    assert set(torch.unique(y.float()).tolist()) <= {0.0, torch.tensor(1 / 0.75).bfloat16().item()}
    assert abs(kept.mean().item() - 0.75) < 0.03
    assert torch.equal(dp.eval()(x), x) and dict(dp.state_dict()) == {}
    assert not [k for k in _model().state_dict() if "drop_path" in k]


def test_ddp_does_not_broadcast_the_drop_path_buffers(tmp_path):
    """The keep probabilities are constants equal on every rank: a DistributedDataParallel VMamba has no buffer
    to broadcast before each forward (as before they were buffers)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = _model()
    assert len(model._ddp_params_and_buffers_to_ignore) == sum(1 for m in model.modules() if isinstance(m, VSSBlock))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        assert ddp.modules_buffers == []
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        dist.destroy_process_group()


_TRITON_CHILD = r"""
import json, torch
from torch._dynamo.utils import counters
from vmbench.models.vmamba import _create_vmamba
from vmbench.kernels import _ss2d_map_triton

out = {}
bwd_calls = []
launch = _ss2d_map_triton.map_scan_bwd_launch
_ss2d_map_triton.map_scan_bwd_launch = lambda *a: bwd_calls.append(1) or launch(*a)
for mode in ("eval", "train", "map", "map_dot", "map_train"):
    _ss2d_map_triton.USE_MAP = mode.startswith("map")
    _ss2d_map_triton.MAP_CONFIG.update(delta="dot" if mode == "map_dot" else "gemm", train_max_l=1 << 30,
                                       min_programs=0)
    bwd_calls.clear()
    torch._dynamo.reset(); counters.clear()
    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=16, depths=(1, 1, 2, 1)), num_classes=10, scan_backend="triton",
                           drop_path_rate=0.0)
    graphs = []
    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(1, 3, 16, 16)
    train = mode.endswith("train")
    model.train(train)
    with torch.set_grad_enabled(train):
        for i in range(2):  # the second call shows no recompile; training graphs compile their backward at the first
            y = compiled(x)
            if train and i == 0:
                y.sum().backward()
        ref = model(x)
    out[mode] = dict(graphs=counters["stats"]["unique_graphs"], breaks=sum(counters["graph_break"].values()),
                     ops=sorted({str(n.target) for g in graphs for n in g.graph.nodes
                                 if n.op == "call_function" and "vmbench" in str(n.target)}),
                     max_diff=(y - ref).abs().max().item(), map_bwd=len(bwd_calls))
print("RESULT " + json.dumps(out))
"""


def test_triton_path_is_one_graph_with_the_registered_ops():
    """The GPU code path (scan_backend="triton"), captured on the CPU: one graph per mode, no break; inference
    calls vmbench::ss2d_scan_infer (no chunk states), training vmbench::ss2d_scan; the eager output. Opted in to
    the map layout (`USE_MAP`), inference calls vmbench::ss2d_map_scan and training's vmbench::ss2d_scan runs
    the map-layout backward."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", _TRITON_CHILD], capture_output=True, text=True, timeout=900, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    for mode, op in (("eval", "vmbench.ss2d_scan_infer"), ("train", "vmbench.ss2d_scan"),  # opted in below
                     ("map", "vmbench.ss2d_map_scan"), ("map_dot", "vmbench.ss2d_map_scan"),
                     ("map_train", "vmbench.ss2d_scan")):
        r = out[mode]
        assert (r["graphs"], r["breaks"]) == (1, 0), r
        assert r["map_bwd"] == (5 if mode == "map_train" else 0), r  # 5 blocks, one backward: the map backward
        assert op in r["ops"] and len([o for o in r["ops"] if "_scan" in o]) == 1, r["ops"]
        assert r["max_diff"] < 1e-5, r  # compiled, the norms are torch's (eager: the Triton LayerNorm)
