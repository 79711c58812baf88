"""GPU: the training step replayed from a CUDA graph (vmbench.engine.graphed_step) trains like the eager loop.

From one seed and the same batches, 50 steps of train_one_epoch eager and 50 with `graph=GraphedStep(...)` (AdamW,
per-step cosine lr with warm-up, clipping, bf16 autocast) give the same losses within bf16 tolerance, for a tiny
VMamba (Triton kernels) and a tiny timm model; the graphed step is not slower. The lr the captured optimizer
reads follows the param groups (AdamW and SGD), and `vmbench run --cuda-graph` completes and records the protocol.
Run with `pytest -m gpu tests/test_cuda_graph_gpu.py -s` (prints the losses' largest gap and the step times).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

STEPS, TIMED, WARM = 50, 30, 5  # compared steps, timed steps after them, lr warm-up steps
BATCH, RES, CLASSES, LR, CLIP = 32, 64, 10, 1e-3, 1.0


def _tiny_vmamba():
    from vmbench.models import create_model

    return create_model("vmamba_t", num_classes=CLASSES, scan_backend="triton", drop_path_rate=0.0,
                        depths=(1, 1, 2, 1), dims=96)


def _tiny_timm():
    from vmbench.models import create_model

    return create_model("test_convnext", num_classes=CLASSES, drop_path_rate=0.0)


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Learnable batches on the GPU: each class is a fixed random image plus noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(CLASSES, 3, RES, RES, generator=g)
    out = []
    for _ in range(n):
        labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
        images = means[labels] + 0.8 * torch.randn(BATCH, 3, RES, RES, generator=g)
        out.append((images.cuda(), labels.cuda()))
    return out


def _parts(make_model, graphed: bool, opt: str = "adamw"):
    """Model, optimizer, schedule, objective and (graphed) GraphedStep as vmbench.engine.train_setup makes them."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from vmbench.engine.graphed_step import GraphedStep, capturable_optimizer_kwargs
    from vmbench.engine.train import ClassificationObjective, param_groups, seed_everything

    seed_everything(0)
    model = make_model().cuda()
    extra = dict(momentum=0.9, nesterov=True) if opt == "sgd" else {}
    if graphed:
        extra.update(capturable_optimizer_kwargs(opt))
    optimizer = create_optimizer_v2(param_groups(model, 0.05), opt=opt, lr=LR, weight_decay=0.05, **extra)
    total = STEPS + TIMED
    sched = CosineLRScheduler(optimizer, t_initial=total - WARM, lr_min=LR * 0.01, warmup_t=WARM,
                              warmup_lr_init=LR * 1e-3, warmup_prefix=True, t_in_epochs=False)
    objective = ClassificationObjective(label_smoothing=0.1)
    graph = GraphedStep(model, optimizer, objective, "cuda", amp=True, clip_grad=CLIP) if graphed else None
    return model, optimizer, sched, objective, graph


def _train(make_model, graphed: bool, batches, timed):
    """Per-step losses over `batches` (one train_one_epoch call per step), then seconds per step over `timed`
    (one call)."""
    from vmbench.engine.train import train_one_epoch

    model, optimizer, sched, objective, graph = _parts(make_model, graphed)
    kw = dict(scheduler=sched, amp=True, clip_grad=CLIP, label_smoothing=0.1, objective=objective, graph=graph)
    losses = [train_one_epoch(model, [b], optimizer, "cuda", start_step=i, **kw)["train_loss"]
              for i, b in enumerate(batches)]
    r = train_one_epoch(model, timed, optimizer, "cuda", start_step=len(batches), **kw)
    assert graph is None or graph.captured
    assert r["steps"] == len(timed) and optimizer.param_groups[-1]["lr"] < LR  # the schedule went on
    return losses, r["train_time_s"] / len(timed)


@pytest.mark.parametrize("make_model", [_tiny_vmamba, _tiny_timm], ids=["vmamba", "timm"])
def test_graphed_losses_match_eager_and_it_is_not_slower(make_model):
    batches, timed = _batches(STEPS, seed=1), _batches(TIMED, seed=2)
    eager, eager_s = _train(make_model, False, batches, timed)
    graphed, graph_s = _train(make_model, True, batches, timed)
    gaps = [abs(g - e) for g, e in zip(graphed, eager)]
    print(f"\n{make_model.__name__}: first/last eager loss {eager[0]:.4f}/{eager[-1]:.4f}, largest gap "
          f"{max(gaps):.2e} (step {gaps.index(max(gaps)) + 1}), mean gap {sum(gaps) / len(gaps):.2e}; "
          f"step {eager_s * 1e3:.2f} ms eager, {graph_s * 1e3:.2f} ms graphed")
    assert all(math.isfinite(x) for x in eager + graphed)
    assert gaps[0] < 1e-3  # the same weights and batch: the same forward
    # bf16 autocast: a step's rounding differs between the eager and the capturable optimizer; 50 steps carry it.
    assert all(gap <= 0.02 + 0.02 * abs(e) for gap, e in zip(gaps, eager)), gaps
    assert sum(gaps) / len(gaps) <= 0.01 + 0.01 * sum(map(abs, eager)) / len(eager)
    assert sum(eager[-10:]) / 10 < eager[0] and sum(graphed[-10:]) / 10 < graphed[0]  # both learned
    assert graph_s <= eager_s * 1.05, (graph_s, eager_s)


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_the_captured_optimizer_reads_the_current_lr(opt):
    """After capture, an lr of 0 set in the param groups freezes the parameters exactly, and a nonzero one moves
    them again: the graph reads the groups' lr at every replay, not the value it was captured with."""
    def make_model():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.GELU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, CLASSES))

    model, optimizer, _, _, graph = _parts(make_model, True, opt)
    batches = _batches(12, seed=3)

    def params():
        return [p.detach().clone() for p in model.parameters()]

    def set_lr(lr):
        for g in optimizer.param_groups:
            g["lr"] = lr

    set_lr(1e-2)
    for b in batches[:6]:
        graph(b)
    assert graph.captured
    set_lr(0.0)
    graph(batches[6])
    frozen = params()
    for b in batches[7:10]:
        graph(b)
    assert all(torch.equal(a, b) for a, b in zip(frozen, params()))
    set_lr(1e-2)
    for b in batches[10:]:
        graph(b)
    assert not all(torch.equal(a, b) for a, b in zip(frozen, params()))


@pytest.mark.parametrize("model", ["resnet18", "vmamba_t"])
def test_run_cuda_graph_end_to_end(model, tmp_path):
    """Two epochs (evaluation and EMA between them, mixup, clipping, channels_last) through the command line."""
    from click.testing import CliRunner

    from vmbench.cli import main
    from vmbench.store import Store

    db = tmp_path / "g.db"
    r = CliRunner().invoke(main, [
        "run", model, "shapes", "--cuda-graph", "--amp", "--device", "cuda", "--epochs", "2",
        "--max-train-batches", "12", "--max-val-batches", "2", "--channels-last", "--workers", "0",
        "--set", "ema=true", "--set", "mixup=0.8", "--set", "clip_grad=1.0", "--db", str(db), "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    assert res["status"] == "completed" and res["cuda_graph"] is True and res["epochs_done"] == 2
    assert math.isfinite(res["train_loss"]) and res["img_s"] > 0
    run = Store(str(db)).list_runs()[0]
    assert run.params["cuda_graph"] is True
