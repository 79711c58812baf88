"""GPU: VMamba's no-gradient eval calls replayed from CUDA graphs (vmbench/models/graph_replay.py) give the eager
forward's outputs, and step aside or start over wherever a replay could be wrong.

Run with `pytest -m gpu tests/test_graph_replay_gpu.py`.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model():
    from vmbench.models import create_model

    torch.manual_seed(0)
    return create_model("vmamba_t", num_classes=10, scan_backend="triton", depths=(1, 1, 2, 1), dims=96).cuda().eval()


def _eager(model, x):
    model.graph_replay.enabled = False
    try:
        return model(x)
    finally:
        model.graph_replay.enabled = True


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_replays_equal_eager_and_outputs_stay(grad_mode):
    model = _model()
    xs = [torch.randn(4, 3, 64, 64, device="cuda") for _ in range(4)]
    with grad_mode(), torch.autocast("cuda", torch.bfloat16):
        want = [_eager(model, x) for x in xs]
        got = [model(x) for x in xs]  # eager, recorded at the second call, then replays
        assert len(model.graph_replay.graphs) == 1
    for g, w in zip(got, want):  # every output kept by the caller is its own: later replays do not overwrite it
        assert torch.equal(g, w)


def test_parameters_changed_in_place_and_replaced():
    model = _model()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    with torch.no_grad():
        for _ in range(3):
            model(x)
        model.load_state_dict(other.state_dict())  # in place: the graph reads the new values
        assert len(model.graph_replay.graphs) == 0  # load_state_dict drops graphs (assign=True would swap tensors)
        for _ in range(3):
            model(x)
        w = model.classifier.head.weight
        w.data = w.data + 1.0  # a new tensor under the same Parameter: the recorded graph no longer applies
        got = model(x)
        assert torch.equal(got, _eager(model, x))
        assert torch.equal(model(x), _eager(model, x))


def test_steps_aside_for_hooks_grad_and_train_mode():
    model = _model()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(x)
    assert len(model.graph_replay.graphs) == 1
    calls = []
    handle = model.layers[1].blocks[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(x)
        model(x)
    assert len(calls) == 2  # a hooked model runs eager: the hook sees every call
    handle.remove()
    model(x)  # gradients on: eager
    model.train()
    assert len(model.graph_replay.graphs) == 0  # train() drops graphs and their memory
    model.eval()
    with torch.no_grad():
        for b in (1, 2, 3):  # a new shape each call: never warm, nothing recorded
            model(torch.randn(b, 3, 64, 64, device="cuda"))
    assert len(model.graph_replay.graphs) == 0


def test_keeps_at_most_two_graphs():
    model = _model()
    with torch.no_grad():
        for b in (1, 2, 3):
            x = torch.randn(b, 3, 64, 64, device="cuda")
            for _ in range(3):
                model(x)
        assert len(model.graph_replay.graphs) == 2
        assert torch.equal(model(x), _eager(model, x))
