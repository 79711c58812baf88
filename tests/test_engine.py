"""Engine: Trainer end to end on `shapes`, evaluate(), benchmark() and the throughput helpers (CPU)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from vmbench.config import BenchSpec, RunSpec
from vmbench.data import DataError, ShapesDataset
from vmbench.engine import SpecError
from vmbench.engine.bench import benchmark, measure_throughput, train_step_throughput
from vmbench.engine.evaluate import evaluate
from vmbench.engine.train import EPOCH_KEYS, RESULT_KEYS, DivergedError, Trainer, param_groups, train_one_epoch
from vmbench.models import UnknownModelError

TINY = "test_resnet"  # timm's tiny test network: fast on the CPU, any input size


def _tiny_spec(**kw) -> RunSpec:
    base = dict(model=TINY, dataset="shapes", epochs=2, batch_size=16, img_size=32, device="cpu",
                max_train_batches=3, max_val_batches=2, bench_batch=4, scan_backend="auto")
    return RunSpec(**{**base, **kw})


def test_trainer_end_to_end():
    calls = []
    tr = Trainer(_tiny_spec(warmup_epochs=0.5), progress=lambda task, done, total: calls.append((task, done, total)))
    history = list(tr.epochs())
    result = tr.finish()

    assert [m["epoch"] for m in history] == [1, 2]
    for m in history:
        assert set(m) == set(EPOCH_KEYS)
        assert math.isfinite(m["train_loss"]) and 0 <= m["val_top1"] <= m["val_top5"] <= 100
        assert m["train_img_s"] > 0 and m["epoch_time_s"] > 0
    assert history[1]["lr"] < history[0]["lr"] or history[0]["lr"] < 1e-3  # warm-up then cosine decay

    assert set(RESULT_KEYS) <= set(result)
    assert result["epochs_done"] == 2 and result["device"] == "cpu" and result["amp"] is False
    assert result["scan_backend"] is None and result["img_size"] == 32 and result["num_classes"] == 10  # no scan
    assert result["params_m"] > 0 and result["gflops"] > 0 and result["img_s"] > 0
    assert result["top1"] == history[-1]["val_top1"] and result["model"] == TINY
    assert result["train_time_s"] == pytest.approx(sum(m["epoch_time_s"] for m in history))

    tasks = {c[0] for c in calls}
    assert {"epoch 1/2 train", "epoch 1/2 eval", "epoch 2/2 train", "bench"} <= tasks
    train_calls = [c for c in calls if c[0] == "epoch 1/2 train"]
    assert train_calls[-1] == ("epoch 1/2 train", 3, 3)


def test_trainer_is_reproducible():
    spec = _tiny_spec(epochs=1, max_train_batches=2)
    a = list(Trainer(spec).epochs())[0]
    b = list(Trainer(spec).epochs())[0]
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_keyboard_interrupt_propagates():
    def hook(task, done, total):
        if task.endswith("train") and done == 2:
            raise KeyboardInterrupt

    tr = Trainer(_tiny_spec(), progress=hook)
    with pytest.raises(KeyboardInterrupt):
        list(tr.epochs())


@pytest.mark.parametrize("kw, error, match", [
    (dict(model="no_such_model_xyz"), UnknownModelError, "no_such_model_xyz"),
    (dict(dataset="no_such_dataset"), DataError, "no_such_dataset"),
    (dict(dataset="/no/such/folder"), DataError, "/no/such/folder"),
    (dict(device="cuda"), SpecError, "CUDA"),
    (dict(scan_backend="triton"), SpecError, "triton"),
])
def test_user_mistakes_fail_before_work(monkeypatch, kw, error, match):
    if kw.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if kw.get("scan_backend") == "triton":
        from vmbench.kernels import triton_available

        if triton_available("cpu"):
            pytest.skip("Triton can run on the CPU here (TRITON_INTERPRET)")
    import vmbench.data
    import vmbench.models

    def no_work(*a, **k):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(vmbench.models, "create_model", no_work)
    monkeypatch.setattr(vmbench.data, "build_loaders", no_work)
    with pytest.raises(error, match=match) as err:
        Trainer(_tiny_spec(**kw))
    assert isinstance(err.value, ValueError)


def test_construction_does_no_work(monkeypatch):
    import vmbench.models

    monkeypatch.setattr(vmbench.models, "create_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    tr = Trainer(_tiny_spec())
    assert tr.model is None and tr.img_size == 32 and tr.bench_batch == 4


def test_loss_decreases_when_overfitting_a_small_subset():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TINY, num_classes=10)
    data = Subset(ShapesDataset("train", 250, 32), range(32))
    loader = DataLoader(data, batch_size=16, shuffle=False)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=3e-3)
    losses = [train_one_epoch(model, loader, opt, "cpu")["train_loss"] for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_param_groups_skip_flags_biases_and_norms():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.A_logs = nn.Parameter(torch.zeros(8, 1))
            self.A_logs._no_weight_decay = True
            self.pos = nn.Parameter(torch.zeros(1, 4, 4))

        def no_weight_decay(self):
            return {"pos"}

    m = M()
    no_decay, decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m.lin.weight)}
    assert len(no_decay["params"]) == 5


def test_divergence_is_reported():
    class Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.flatten(1)[:, :3] * self.w * float("nan")

    loader = [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))]
    opt = torch.optim.SGD(Nan().parameters(), lr=0.1)
    with pytest.raises(DivergedError, match=r"epoch 1, batch 1 \(last finite loss: none before it\)"):
        train_one_epoch(Nan(), loader, opt, "cpu")


def test_step_sums_read_one_step_late():
    """The CUDA path's bookkeeping (lag 1, as on a GPU): sums are exact, a non-finite loss is reported for its own
    batch, with the last finite loss, when the next batch is recorded (or when the pass settles)."""
    from vmbench.engine.train import _StepSums

    sums = _StepSums(torch.device("cpu"), epoch=3, loss_sum=1.0, correct=2, images=4)
    sums.lag = 1
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])  # two right
    hits = (logits.argmax(dim=1) == labels).sum()
    sums.add(0, torch.tensor(0.5), hits, labels.shape[0])
    assert (sums.loss_sum, sums.correct, sums.images) == (1.0, 2, 4)  # not read yet
    sums.add(1, torch.tensor(0.25), hits, labels.shape[0])
    assert (sums.loss_sum, sums.correct, sums.images) == (1.0 + 1.5, 4, 7)
    sums.settle()
    assert (sums.loss_sum, sums.correct, sums.images) == (1.0 + 1.5 + 0.75, 6, 10)
    sums.add(2, torch.tensor(float("inf")), hits, labels.shape[0])  # batch 3
    with pytest.raises(DivergedError, match=r"\(inf\) at epoch 3, batch 3 \(last finite loss: 0.25\)"):
        sums.add(3, torch.tensor(0.1), hits, labels.shape[0])


@pytest.mark.parametrize("num_classes", [3, 7])
def test_evaluate_is_exact(num_classes):
    torch.manual_seed(num_classes)
    logits = torch.randn(10, num_classes)
    labels = torch.randint(num_classes, (10,))
    loader = [(logits[:4], labels[:4]), (logits[4:], labels[4:])]  # the "images" are the logits
    calls = []
    out = evaluate(nn.Identity(), loader, "cpu", amp=False, progress=lambda *c: calls.append(c))

    rank = (logits > logits.gather(1, labels[:, None])).sum(1)  # classes scored above the true one
    assert out["images"] == 10
    assert out["top1"] == pytest.approx(100 * (rank == 0).float().mean().item())
    assert out["top5"] == pytest.approx(100 * (rank < 5).float().mean().item())
    if num_classes < 5:
        assert out["top5"] == 100.0
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert calls == [("eval", 1, 2), ("eval", 2, 2)]

    capped = evaluate(nn.Identity(), loader, "cpu", amp=False, max_batches=1)
    assert capped["images"] == 4


def test_evaluate_restores_training_mode():
    model = nn.Identity().train()
    evaluate(model, [(torch.randn(2, 3), torch.tensor([0, 1]))], "cpu")
    assert model.training


def test_benchmark_fields_on_cpu():
    spec = BenchSpec(model=TINY, res=32, batch=2, warmup=1, repeats=2, device="cpu", num_classes=10)
    calls = []
    out = benchmark(spec, progress=lambda *c: calls.append(c))
    for key in ("model", "params_m", "gflops", "flops_uncovered", "img_s", "latency_ms", "peak_mem_mb", "device",
                "gpu_name", "precision", "res", "batch", "scan_backend", "channels_last", "compile",
                "peak_mem_source"):
        assert key in out, key
    assert out["device"] == "cpu" and out["gpu_name"] is None and out["scan_backend"] is None  # no scan
    assert out["img_s"] > 0 and out["latency_ms"] > 0 and len(out["latencies_ms"]) == 2
    assert out["gflops"] > 0 and isinstance(out["flops_uncovered"], list)
    assert out["img_s"] == pytest.approx(2 * 1e3 / out["latency_ms"])
    assert out["peak_mem_source"] in ("cpu_peak_rss_delta", None)
    assert calls[-1] == ("bench", 4, 4)  # first call + 1 warm-up + 2 timed runs


def test_benchmark_rejects_bad_specs():
    with pytest.raises(UnknownModelError):
        benchmark(BenchSpec(model="no_such_model_xyz", device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(SpecError):
            benchmark(BenchSpec(model=TINY, device="cuda"))
        with pytest.raises(SpecError, match="needs a CUDA device"):  # auto resolves to the CPU here
            benchmark(BenchSpec(model=TINY, cuda_graph=True))
        with pytest.raises(SpecError, match="needs a CUDA device"):
            measure_throughput(torch.nn.Linear(4, 4), batch=2, res=4, device="cpu", cuda_graph=True)


def test_throughput_helpers():
    import timm

    model = timm.create_model(TINY, num_classes=5).train()
    inf = measure_throughput(model, batch=2, res=32, device="cpu", warmup=0, repeats=2)
    assert inf["img_s"] > 0 and model.training  # mode restored
    tr = train_step_throughput(model, batch=2, res=32, device="cpu", precision="fp32", warmup=0, repeats=2,
                               channels_last=True)
    assert tr["img_s"] > 0 and all(p.grad is None for p in model.parameters())
    bf16 = measure_throughput(model, batch=2, res=32, device="cpu", precision="amp_bf16", warmup=0, repeats=1)
    assert bf16["precision"] == "amp_bf16"
