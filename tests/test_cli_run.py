"""`vmbench run` / `vmbench bench` end to end through CliRunner, and user mistakes (exit 2, DB untouched)."""
import json
import os

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.store import Store

from dbfiles import db_digest

SMALL = ["--device", "cpu", "--max-train-batches", "2", "--max-val-batches", "2", "--batch-size", "8"]




def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_run_json_contract_and_store(tmp_path):
    db = str(tmp_path / "x.db")
    r = _invoke(["run", "convnext_t", "shapes", "--epochs", "1", *SMALL, "--db", db, "--json", "--tag", "ci"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "completed" and isinstance(out["id"], int)
    assert 0.0 <= out["top1"] <= 100.0 and out["params_m"] > 1 and out["gflops"] > 0 and out["img_s"] > 0
    run = Store(db).get_run(out["id"])
    assert run.status == "completed" and run.tags == ["ci"] and run.dataset == "shapes"
    assert run.env["torch"] and run.scan_backend is None and run.device == "cpu"  # ConvNeXt has no scan
    assert {m.key for m in run.metrics} >= {"train_loss", "val_top1", "lr"}
    r = _invoke(["compare", "--db", db, "--format", "json"])
    rows = json.loads(r.output)
    assert [(x["model"], x["dataset"]) for x in rows] == [("convnext_t", "shapes")]
    assert rows[0]["top1"] == pytest.approx(out["top1"])


def test_run_vmamba_records_backend(tmp_path):
    db = str(tmp_path / "x.db")
    r = _invoke(["run", "vmamba_t", "shapes", "--epochs", "1", *SMALL, "--img-size", "32", "--db", db, "--json",
                 "--scan-backend", "torch"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["scan_backend"] == "torch" and Store(db).get_run(out["id"]).scan_backend == "torch"


def test_bench_json_contract(tmp_path):
    db = str(tmp_path / "x.db")
    r = _invoke(["bench", "vmamba_t", "--device", "cpu", "--batch", "2", "--res", "64", "--warmup", "0",
                 "--repeats", "1", "--json", "--db", db])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["params_m"] == pytest.approx(30.2, rel=0.01) and out["gflops"] > 0 and out["img_s"] > 0
    assert isinstance(out["flops_uncovered"], list)
    run = Store(db).get_run(out["id"])
    assert run.kind == "bench" and run.status == "completed"


@pytest.mark.parametrize("args", [
    ["run", "no_such_model", "shapes"],
    ["run", "convnext_t", "no_such_dataset_dir"],
    ["run", "convnext_t", "imagenet", "--data-root", "/nonexistent"],
    ["run", "convnext_t", "shapes", "--epochs", "0"],
    ["run", "convnext_t", "shapes", "--device", "cuda"],
    ["run", "vmamba_t", "shapes", "--scan-backend", "triton"],
    ["run", "convnext_t", "shapes", "--weights", "/nonexistent.pth"],
    ["bench", "no_such_model", "--device", "cpu"],
    ["bench", "convnext_t", "--batch", "0"],
    ["bench"],
    ["bench", "convnext_t", "--cuda-graph", "--device", "cpu"],
    ["bench", "convnext_t", "--cuda-graph", "--compile"],
])
def test_user_mistakes_exit_2_and_write_nothing(tmp_path, args, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    db = tmp_path / "x.db"
    Store(str(db)).close()
    before = db_digest(db)
    r = _invoke([*args, "--db", str(db)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert db_digest(db) == before and Store(str(db)).count_runs() == 0


def test_unknown_model_suggests_close_match(tmp_path):
    r = _invoke(["run", "vmamba_tt", "shapes", "--db", str(tmp_path / "x.db")])
    assert r.exit_code == 2 and "vmamba_t" in r.stderr
    assert not (tmp_path / "x.db").exists() or Store(str(tmp_path / "x.db")).count_runs() == 0


def test_unwritable_db_is_a_user_error(tmp_path):
    r = _invoke(["run", "convnext_t", "shapes", "--db", str(tmp_path / "missing" / "x.db")])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_models_and_datasets_json():
    r = _invoke(["models", "--json"])
    names = {m["name"] for m in json.loads(r.output)}
    assert {"vmamba_t", "vmamba_s", "vmamba_b", "swin_t", "convnext_t", "res2net50", "vanilla_vmamba_t"} <= names
    r = _invoke(["datasets", "--json"])
    assert r.exit_code == 0 and "shapes" in {d["name"] for d in json.loads(r.output)}


def _patch_epochs(monkeypatch, exc):
    from vmbench.engine import train

    def epochs(self):
        self.setup()
        yield {"epoch": 1, "train_loss": 2.0}
        raise exc

    monkeypatch.setattr(train.Trainer, "epochs", epochs)


def test_internal_error_is_recorded_as_failed(tmp_path, monkeypatch):
    db = str(tmp_path / "x.db")
    _patch_epochs(monkeypatch, RuntimeError("boom in epoch 2"))
    r = CliRunner().invoke(main, ["run", "resnet18", "shapes", *SMALL, "--db", db])
    assert r.exit_code == 1 and "boom in epoch 2" in r.stderr
    run = Store(db).list_runs()[0]
    assert run.status == "failed" and "RuntimeError: boom in epoch 2" in run.error and "Traceback" in run.error
    assert [m.key for m in Store(db).get_run(run.id).metrics] == ["train_loss"]  # what ran is kept


def test_ctrl_c_is_recorded_as_interrupted(tmp_path, monkeypatch):
    db = str(tmp_path / "x.db")
    _patch_epochs(monkeypatch, KeyboardInterrupt())
    r = CliRunner().invoke(main, ["run", "resnet18", "shapes", *SMALL, "--db", db])
    assert r.exit_code == 130
    assert Store(db).list_runs()[0].status == "interrupted"


def test_sigterm_is_recorded_as_interrupted(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    db = str(tmp_path / "x.db")
    code = "import sys; from vmbench.cli import main; main(sys.argv[1:])"
    p = subprocess.Popen([sys.executable, "-c", code, "run", "resnet18", "shapes", "--device", "cpu", "--epochs", "50",
                          "--db", db], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the run is recorded as running
            if os.path.exists(db) and Store(db).count_runs():
                break
            time.sleep(0.5)
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == 130
    finally:
        p.kill()
    run = Store(db).list_runs()[0]
    assert run.status == "interrupted" and run.ended_at is not None


def _image_tree(root, bad: str | None = None):
    """train/ and val/ with two classes of small PNGs; `bad` names a file written as garbage."""
    from PIL import Image

    for split in ("train", "val"):
        for ci, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (12, 12), (60 * ci, 20 * i, 90)).save(d / f"{i}.png")
    if bad:
        (root / bad).write_bytes(b"not an image")
    return root


def test_run_stops_on_a_corrupt_image_or_skips_and_counts_it(tmp_path):
    root = _image_tree(tmp_path / "imgs", bad="train/dog/9.png")
    db = str(tmp_path / "x.db")
    args = ["run", "test_resnet", str(root), "--epochs", "1", "--device", "cpu", "--batch-size", "4",
            "--img-size", "16", "--db", db]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "9.png" in r.stderr and Store(db).get_run(1).status == "failed"
    r = _invoke([*args, "--skip-bad-images", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["bad_images"] == 1 and out["status"] == "completed"
    assert out["eval_transform"]["input_size"][-1] == 16  # how evaluation preprocessed, recorded on the run
