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
    return create_model("vmamba_t", num_classes=10, scan_backend="triton", depths=(1, 1, 2, 1), dims=96,
                        drop_path_rate=0.0).cuda().eval()  # no random draws: replays and eager calls comparable


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


def _train_steps(model, batches, replay: bool, accum: int = 1):
    """AdamW steps on `batches` (`accum` micro-batches per step); the losses and the final parameters."""
    model.graph_replay.enabled = replay
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for i, (x, y) in enumerate(batches):
        with torch.autocast("cuda", torch.bfloat16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        (loss / accum).backward()
        losses.append(loss.item())
        if (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.graph_replay.enabled = True
    return losses, [p.detach().clone() for p in model.parameters()]


def _batches(n: int, b: int = 8):
    g = torch.Generator(device="cuda").manual_seed(1)
    return [(torch.randn(b, 3, 64, 64, device="cuda", generator=g),
             torch.randint(10, (b,), device="cuda", generator=g)) for _ in range(n)]


@pytest.mark.parametrize("accum", [1, 2])
def test_training_replays_train_as_eager(accum):
    """Without drop path (no random draws) the replayed steps compute what the eager ones do: the same losses and
    parameters after 8 AdamW steps (gradient accumulation over 2 micro-batches too)."""
    batches = _batches(8)
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager_losses, eager_params = _train_steps(model, batches, replay=False, accum=accum)
    model.load_state_dict(state)
    losses, params = _train_steps(model, batches, replay=True, accum=accum)
    assert len(model.graph_replay.graphs) == 1
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-4)
    for p, q in zip(params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_training_replay_waits_for_backward_and_retain_graph():
    model = _model().train()
    x, y = _batches(1)[0]
    for _ in range(3):  # recorded at the second call
        out = model(x)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    a = model(x)  # replayed
    b = model(x)  # a's backward has not run: eager, a's activations untouched
    (a.float().square().mean() + b.float().square().mean()).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model.graph_replay.enabled = False
    a2, b2 = model(x), model(x)
    (a2.float().square().mean() + b2.float().square().mean()).backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-5)
    model.graph_replay.enabled = True
    model.zero_grad(set_to_none=True)
    out = model(x)  # replayed again
    out.float().sum().backward(retain_graph=True)
    model(x)  # the node is kept for a second backward: eager
    out.float().sum().backward()  # the same gradients a second time
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_replay_draws_new_drop_path_masks():
    from vmbench.models import create_model

    torch.manual_seed(0)
    model = create_model("vmamba_t", num_classes=10, scan_backend="triton", drop_path_rate=0.5,
                         depths=(1, 1, 2, 1), dims=96).cuda().train()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    outs = []
    for _ in range(4):
        out = model(x)
        out.float().sum().backward()
        outs.append(out.detach())
    assert len(model.graph_replay.graphs) == 1
    assert not torch.equal(outs[2], outs[3])  # two replays, two sets of masks
