"""`vmbench run --cuda-graph` on the CPU: every case it cannot apply to is refused through the real command line
(one line on stderr, exit code 2, database byte-identical), the cheap ones before torch is imported; and the
parts of vmbench.engine.graphed_step that need no GPU (optimizer options, live lr tensors, the objective split
the graph captures). The captured step itself is tested on a GPU: tests/test_cuda_graph_gpu.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dbfiles import db_digest
from vmbench.cli import main
from vmbench.store import Store

RUN = ["run", "resnet18", "shapes", "--cuda-graph"]
CASES = {
    "cpu device": [*RUN, "--device", "cpu"],
    "with --compile": [*RUN, "--compile", "--device", "cuda"],
    "with --gpus 2": [*RUN, "--gpus", "2", "--device", "cuda"],
    "gradient accumulation": [*RUN, "--set", "accum_steps=2", "--device", "cuda"],
    "fp16 autocast": [*RUN, "--amp", "--set", "amp_dtype='fp16'", "--device", "cuda"],
    "detection": ["run", "resnet18", "shapes-det", "--task", "detection", "--cuda-graph", "--device", "cuda"],
    "queue add on cpu": ["queue", "add", "resnet18", "shapes", "--cuda-graph", "--device", "cpu"],
    "sweep on cpu": ["sweep", "resnet18", "--datasets", "shapes", "--cuda-graph", "--device", "cpu"],
}
WORDS = {"cpu device": "CUDA device", "with --compile": "--compile", "with --gpus 2": "--gpus",
         "gradient accumulation": "accum_steps", "fp16 autocast": "bf16", "detection": "classification only",
         "queue add on cpu": "CUDA device", "sweep on cpu": "CUDA device"}


@pytest.fixture
def db(tmp_path):
    """A database holding one completed run (so that 'unchanged' covers rows, not just an empty schema)."""
    path = tmp_path / "x.db"
    with Store(str(path)) as s:
        rid = s.create_run("train", "resnet18", "shapes", {"epochs": 1})
        s.finish_run(rid, "completed", {"top1": 50.0})
    return path


def _refused(args, db) -> str:
    before = db_digest(db)
    r = CliRunner().invoke(main, [*args, "--db", str(db)])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert db_digest(db) == before
    return r.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_refused_one_line_exit_2_db_unchanged(case, db):
    err = _refused(CASES[case], db)
    assert "--cuda-graph" in err and WORDS[case] in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_auto_device_without_a_gpu_is_refused(db):
    err = _refused(RUN, db)  # --device auto: found to be the CPU when the run starts, before anything is written
    assert err == "error: --cuda-graph needs a CUDA device; this run would train on cpu (no GPU found)\n"


def test_cheap_refusals_come_before_torch_is_imported(tmp_path):
    code = ("import sys\nfrom vmbench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(e.code, 'torch' in sys.modules, file=sys.stderr)\n")
    for case in ("cpu device", "with --compile", "gradient accumulation", "fp16 autocast"):
        p = subprocess.run([sys.executable, "-c", code, *CASES[case], "--db", str(tmp_path / "x.db")],
                           capture_output=True, text=True, timeout=120)
        assert p.stderr.splitlines()[-1] == "2 False", (case, p.stderr)
    assert not (tmp_path / "x.db").exists()


def test_the_flag_is_part_of_the_spec_and_the_protocol():
    from vmbench.cli.options import build_spec
    from vmbench.config import RunSpec, cuda_graph_refusal
    from vmbench.report.aggregate import mode

    opts = dict(task="classification", recipe="smoke", sets=(), epochs=None, batch_size=None, lr=None,
                img_size=None, device="cuda", amp=True, seed=0, scan_backend="auto", data_root=None, workers=None,
                weights=None, init=None, pretrained=False, trust_checkpoint=False, compile_=None, channels_last=None,
                tensorboard=None, skip_bad_images=False, max_train_batches=None, max_val_batches=None, tags=(),
                deterministic=False, gpus=1)
    spec, _ = build_spec("resnet18", "shapes", **opts, cuda_graph=True)
    assert spec.cuda_graph and spec.to_dict()["cuda_graph"] is True
    assert cuda_graph_refusal(spec) is None
    assert not build_spec("resnet18", "shapes", **opts)[0].cuda_graph
    assert cuda_graph_refusal(RunSpec("resnet18", "shapes", device="auto", amp=False, amp_dtype="fp16")) is None
    # A train run's speed row (its params hold the spec) is told apart from an eager one in compare.
    assert mode({"kind": "train", "p_cuda_graph": True}) == "inference + graph"
    assert mode({"kind": "train", "p_cuda_graph": False}) == "inference"


def test_optimizers_are_made_capturable():
    from timm.optim import create_optimizer_v2

    from vmbench.engine import SpecError
    from vmbench.engine.graphed_step import capturable_optimizer_kwargs
    from vmbench.engine.train import param_groups

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    adamw = create_optimizer_v2(param_groups(model, 0.05), opt="adamw", lr=1e-3, weight_decay=0.05,
                                **capturable_optimizer_kwargs("adamw"))
    assert isinstance(adamw, torch.optim.AdamW) and all(g["capturable"] for g in adamw.param_groups)
    sgd = create_optimizer_v2(param_groups(model, 0.05), opt="sgd", lr=1e-2, weight_decay=0.05, momentum=0.9,
                              nesterov=True, **capturable_optimizer_kwargs("sgd"))
    assert isinstance(sgd, torch.optim.SGD) and all(g["fused"] and g["nesterov"] for g in sgd.param_groups)
    with pytest.raises(SpecError, match="adamw and sgd"):
        capturable_optimizer_kwargs("lamb")


def test_lr_tensors_follow_the_schedule_and_leave_floats_in_the_groups():
    """What the captured optimizer step reads as its lr: each group's float, copied into a tensor before every
    replay; the groups themselves keep floats (for the scheduler, the logged lr and checkpoints)."""
    from timm.scheduler import CosineLRScheduler

    from vmbench.engine.graphed_step import LrTensors

    w, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([dict(params=[w]), dict(params=[b], lr=0.5)], lr=0.1)
    sched = CosineLRScheduler(opt, t_initial=20, lr_min=1e-4, warmup_t=5, warmup_lr_init=1e-5, warmup_prefix=True,
                              t_in_epochs=False)
    lrs = LrTensors(opt, torch.device("cpu"))
    seen = set()
    for step in range(1, 26):
        sched.step_update(num_updates=step)
        lrs.sync()
        for t, g in zip(lrs.tensors, opt.param_groups):
            assert isinstance(g["lr"], float) and t.dtype == torch.float32
            assert t.item() == pytest.approx(g["lr"], rel=1e-6)
            seen.add(round(g["lr"], 9))
    assert len(seen) > 20  # the schedule moved the lr every step, and the tensors with it
    with lrs.installed():
        assert all(g["lr"] is t for g, t in zip(opt.param_groups, lrs.tensors))
    assert all(isinstance(g["lr"], float) for g in opt.param_groups)
    assert isinstance(opt.state_dict()["param_groups"][0]["lr"], float)


def test_graphed_step_refuses_the_cpu():
    from vmbench.engine import SpecError
    from vmbench.engine.graphed_step import GraphedStep
    from vmbench.engine.train_loop import ClassificationObjective

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(SpecError, match="needs a CUDA device"):
        GraphedStep(model, opt, ClassificationObjective(), "cpu")


@pytest.mark.parametrize("use_mixup", [False, True])
def test_objective_split_is_the_same_step(use_mixup):
    """The graph captures ClassificationObjective.loss() on the tensors inputs() made eagerly: together they are
    exactly the objective's call (mixup's host draws happen in inputs())."""
    from timm.data import Mixup

    from vmbench.engine.train_loop import ClassificationObjective

    def objective():
        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=5) if use_mixup else None
        return ClassificationObjective(label_smoothing=0.1, mixup=mix, channels_last=True)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 5))
    batch = (torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,)))
    autocast = torch.autocast("cpu", enabled=False)
    np.random.seed(1)  # Mixup draws from NumPy
    loss, n, hits = objective()(model, batch, torch.device("cpu"), autocast)
    np.random.seed(1)
    obj = objective()
    images, targets, labels = obj.inputs(batch, torch.device("cpu"))
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert targets.shape == ((6, 5) if use_mixup else (6,))
    loss2, hits2 = obj.loss(model, images, targets, labels, autocast)
    assert n == 6 and torch.equal(loss, loss2) and torch.equal(hits, hits2)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_the_captured_step_is_the_loops_step_and_reads_the_scheduled_lr(opt):
    """graphed_step.train_step (what the graph captures), run with the groups' lr installed as tensors that
    LrTensors refreshes from a warm-up + cosine schedule, trains exactly like train_one_epoch's eager step with
    float lrs. SGD is made as on a GPU (fused=True); AdamW's capturable=True needs a GPU, so here its fused
    form stands in (it also reads a tensor lr)."""
    from timm.scheduler import CosineLRScheduler

    from vmbench.engine.graphed_step import LrTensors, capturable_optimizer_kwargs, train_step
    from vmbench.engine.train import param_groups, train_one_epoch
    from vmbench.engine.train_loop import ClassificationObjective

    def parts(graph_safe: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten(), torch.nn.Linear(6, 4))
        kw = dict(momentum=0.9, nesterov=True) if opt == "sgd" else {}
        if graph_safe:
            kw.update(capturable_optimizer_kwargs(opt) if opt == "sgd" else dict(fused=True))
        cls = torch.optim.SGD if opt == "sgd" else torch.optim.AdamW
        optimizer = cls(param_groups(model, 0.05), lr=0.05, weight_decay=0.05, **kw)
        sched = CosineLRScheduler(optimizer, t_initial=6, lr_min=1e-4, warmup_t=3, warmup_lr_init=1e-4,
                                  warmup_prefix=True, t_in_epochs=False)
        return model, optimizer, sched

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(9)]
    objective = ClassificationObjective(label_smoothing=0.1)

    model, optimizer, sched = parts(False)
    eager = [train_one_epoch(model, [b], optimizer, "cpu", scheduler=sched, start_step=i, clip_grad=1.0,
                             objective=objective)["train_loss"] for i, b in enumerate(batches)]
    gmodel, goptimizer, gsched = parts(True)
    lrs = LrTensors(goptimizer, torch.device("cpu"))
    graphed = []
    for i, b in enumerate(batches):
        goptimizer.zero_grad(set_to_none=True)
        with lrs.installed():  # as in the capture: the step reads the tensors
            loss, _ = train_step(gmodel, goptimizer, objective, objective.inputs(b, torch.device("cpu")),
                                 torch.autocast("cpu", enabled=False), clip_grad=1.0)
        graphed.append(loss.item())
        gsched.step_update(num_updates=i + 1)
    assert graphed == pytest.approx(eager, rel=1e-5)
    for a, b in zip(model.parameters(), gmodel.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(isinstance(x["lr"], float) for x in goptimizer.param_groups)  # floats again outside the step
