"""A results database for the report tests, written through the store's API with the keys vmbench's runs record:
seeds of one protocol, another image size, evaluations of a checkpoint (on its own and on another dataset),
a 2-class dataset, a failed run whose error and paths look like rich markup, and benchmarks at several batches,
precisions, resolutions and modes (CPU RSS growth and CUDA absolute memory)."""
from __future__ import annotations

from pathlib import Path

from vmbench.store import Store

MARKUP = "RuntimeError: bad [/x] tag [bold]not bold[/bold] in /data/[/red]/img.png"


def _train(store, model, dataset, top1, *, seed=0, img=32, epochs=3, classes=10, img_s=100.0, ckpt=None,
           tags=(), recipe="smoke", top5=95.0, mem=900.0):
    rid = store.create_run("train", model, dataset, {"epochs": epochs, "batch_size": 8, "img_size": img,
                                                     "amp": False, "recipe": {"lr": 0.001}},
                           recipe=recipe, seed=seed, tags=tags, device="cpu", scan_backend="torch",
                           env={"torch": "2.14.1", "timm": "1.0", "cpu": "x86_64"}, git_sha="abc123",
                           checkpoint_dir=ckpt)
    for e in range(1, epochs + 1):
        store.log_metrics(rid, {"train_loss": 2.0 / e, "val_top1": top1 - (epochs - e) * 5, "val_loss": 1.5 / e,
                                "lr": 0.001 * (epochs - e + 1) / epochs}, epoch=e)
    store.finish_run(rid, "completed", {
        "top1": top1, "top5": top5, "val_loss": 0.5, "train_loss": 0.6, "train_time_s": 60.0 + seed,
        "params_m": 30.2 if model.startswith("vmamba") else 28.6, "gflops": 0.1, "img_s": img_s, "latency_ms": 80.0,
        "bench_batch": 8, "peak_mem_mb": mem, "peak_mem_source": "cpu_peak_rss", "scan_backend": "torch",
        "device": "cpu", "amp": False, "img_size": img, "num_classes": classes, "epochs_done": epochs,
        "compile": False, "channels_last": False})
    return rid


def _bench(store, model, *, res=224, batch=16, precision="fp32", device="cpu", img_s=50.0, section=None,
           gpu=None, mem=300.0):
    params = {"model": model, "res": res, "batch": batch, "precision": precision, "device": device,
              "compile": False, "cuda_graph": False, "channels_last": False}
    if section:
        params["section"] = section
    rid = store.create_run("bench", model, None, params, device=device, scan_backend="torch")
    store.finish_run(rid, "completed", {
        "img_s": img_s, "latency_ms": batch * 1e3 / img_s, "params_m": 30.2, "gflops": 4.9, "res": res,
        "batch": batch, "precision": precision, "peak_mem_mb": mem, "gpu_name": gpu,
        "peak_mem_source": "cuda_max_allocated" if device == "cuda" else "cpu_peak_rss_delta",
        "scan_backend": "torch"}, scan_backend="torch")
    return rid


def make_db(tmp_path: Path, url: str | None = None) -> str:
    """The database at `url`, else a SQLite file in `tmp_path`; returns its path or URL."""
    path = url or str(tmp_path / "report.db")
    ckpt = tmp_path / "runs" / "1"
    ckpt.mkdir(parents=True)
    (ckpt / "best.pt").write_bytes(b"0" * 1024)
    with Store(path) as store:
        r1 = _train(store, "vmamba_t", "shapes", 72.5, seed=0, ckpt=str(ckpt), tags=["paper"])  # 1
        _train(store, "vmamba_t", "shapes", 70.0, seed=1, img_s=110.0, tags=["paper"])  # 2
        _train(store, "convnext_t", "shapes", 61.0, img_s=150.0)  # 3
        _train(store, "vmamba_t", "shapes", 80.0, img=64, img_s=30.0)  # 4: another image size
        _train(store, "vmamba_t", "tiny2", 90.0, classes=2, top5=100.0)  # 5: two classes
        for ds, top1, classes in (("shapes", 72.5, 10), ("tiny2", 40.0, 2)):  # 6, 7: evaluations of run 1's file
            rid = store.create_run("eval", "vmamba_t", ds, {"weights_path": str(ckpt / "best.pt"), "img_size": 32,
                                                            "batch_size": 8}, device="cpu", scan_backend="torch")
            store.finish_run(rid, "completed", {"top1": top1, "top5": 99.0 if classes > 5 else 100.0,
                                                "val_loss": 0.7, "num_classes": classes, "img_size": 32,
                                                "params_m": 30.2})
        rid = store.create_run("train", "swin_t", "shapes", {"epochs": 3}, device="cpu", checkpoint_dir=MARKUP)  # 8
        store.log_metrics(rid, {"train_loss": 2.5, "val_top1": 11.0}, epoch=1)
        store.finish_run(rid, "failed", error=MARKUP)
        _bench(store, "vmamba_t", batch=1, img_s=20.0)  # 9
        _bench(store, "vmamba_t", batch=16, img_s=60.0)  # 10
        _bench(store, "vmamba_t", batch=16, img_s=64.0)  # 11: a repeat of 10's protocol
        _bench(store, "vmamba_t", batch=8, res=32, img_s=120.0)  # 12: run 1's own speed protocol
        _bench(store, "vmamba_t", batch=8, res=32, img_s=40.0, section="train")  # 13: its training step
        for res, img_s, mem in ((224, 5000.0, 3000.0), (384, 1500.0, 9000.0)):  # 14, 15
            _bench(store, "vmamba_t", res=res, batch=128, precision="amp_bf16", device="cuda", img_s=img_s,
                   gpu="NVIDIA H100", mem=mem)
        _bench(store, "swin_t", res=224, batch=128, precision="amp_bf16", device="cuda", img_s=4000.0,
               gpu="NVIDIA H100", mem=2800.0)  # 16
    assert r1 == 1
    return path
