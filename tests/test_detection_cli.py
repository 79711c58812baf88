"""`vmbench eval --task detection` and `vmbench bench --task detection`: a detector checkpoint of a tiny shapes-det
run evaluated end to end and stored as an eval run; checkpoints of the other task refused (exit 2, database
unchanged); detector throughput at an H x W stored as a bench run whose protocol shows H x W; bad sizes refused
before torch is imported."""
from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.engine.detection import DETECTION_METRICS
from vmbench.store import Store
from vmbench.store.api import results_dict

from dbfiles import db_digest

TINY_DET = ["run", "test_resnet", "shapes-det", "--task", "detection", "--epochs", "1", "--max-train-batches", "2",
            "--max-val-batches", "2", "--img-size", "64", "--batch-size", "2", "--device", "cpu", "--set",
            "det_head='light'", "--set", "checkpoints=true", "--json"]


def _invoke(args):
    return CliRunner().invoke(main, args)


def _same(a, b):
    return (a is None and b is None) or (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    """(db, run id, results) of a tiny detection run that kept its checkpoints."""
    db = tmp_path_factory.mktemp("det") / "x.db"
    r = _invoke([*TINY_DET, "--db", str(db)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    return db, out["id"], out


def test_eval_of_a_detector_checkpoint_is_stored_as_an_eval_run(det_run):
    db, run_id, trained = det_run
    best = _checkpoint(db, run_id)
    r = _invoke(["eval", "test_resnet", "shapes-det", "--task", "detection", "--weights", str(best), "--batch-size",
                 "2", "--max-val-batches", "2", "--device", "cpu", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "completed" and out["images"] == 4 and out["det_head"] == "light"
    assert out["img_size"] == 64  # the checkpoint's own size
    for k in DETECTION_METRICS:  # the same weights on the same images: the training run's last evaluation
        assert _same(out[k], trained[k]), (k, out[k], trained[k])
    with Store(str(db)) as store:
        run = store.get_run(out["id"])
        assert run.kind == "eval" and run.status == "completed" and run.dataset == "shapes-det"
        assert run.params["task"] == "detection" and run.params["weights_format"] == "vmbench"
        assert set(DETECTION_METRICS) <= set(results_dict(run))


def _checkpoint(db, run_id) -> Path:
    with Store(str(db)) as store:  # closed: no connection left to checkpoint the WAL later
        return Path(store.get_run(run_id).checkpoint_dir) / "best.pt"


def test_checkpoints_of_the_other_task_are_refused(det_run, tmp_path):
    db, run_id, _ = det_run
    det_ckpt = _checkpoint(db, run_id)
    r = _invoke(["run", "test_resnet", "shapes", "--epochs", "1", "--max-train-batches", "1", "--max-val-batches", "1",
                 "--img-size", "32", "--batch-size", "4", "--device", "cpu", "--set", "checkpoints=true",
                 "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    cls_ckpt = _checkpoint(db, json.loads(r.stdout)["id"])
    gc.collect()  # any connection a finished command left behind closes now, not while the refusals run
    before = db_digest(db)
    cases = [
        (["test_resnet", "shapes-det", "--task", "detection", "--weights", str(cls_ckpt)], "holds classification"),
        (["test_resnet", "shapes", "--weights", str(det_ckpt)], "evaluate it with --task detection"),
        (["test_resnet", "shapes-det", "--weights", str(cls_ckpt)], "is a detection dataset"),
        (["test_resnet", "shapes", "--task", "detection", "--weights", str(det_ckpt)], "has no boxes"),
        (["resnet18", "shapes-det", "--task", "detection", "--weights", str(det_ckpt)], "is a checkpoint of"),
        (["test_resnet", "shapes-det", "--task", "detection", "--weights", str(det_ckpt), "--channels-last"],
         "classification evaluation only"),
    ]
    for args, message in cases:
        r = _invoke(["eval", *args, "--device", "cpu", "--db", str(db)])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert db_digest(db) == before


def test_bench_detection_at_h_x_w_is_stored_with_its_protocol(tmp_path):
    db = tmp_path / "x.db"
    r = _invoke(["bench", "test_resnet", "--task", "detection", "--res", "96x128", "--batch-size", "1", "--warmup",
                 "0", "--repeats", "1", "--device", "cpu", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["task"] == "detection" and (out["res"], out["res_w"]) == (96, 128) and out["flops_res"] == "96x128"
    assert out["num_classes"] == 80
    assert out["img_s"] > 0 and out["params_m"] > 0 and out["gflops"] > 0 and out["peak_mem_mb"] is not None
    with Store(str(db)) as store:
        run = store.get_run(out["id"])
        assert run.kind == "bench" and run.params["task"] == "detection" and run.params["res_w"] == 128
        assert run.params["num_classes"] == 80
    r = _invoke(["compare", "--db", str(db), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = [row for row in json.loads(r.stdout) if row["model"] == "test_resnet"]
    assert len(rows) == 1 and rows[0]["res"] == "96x128" and rows[0]["mode"] == "detector inference"
    # A classification benchmark keeps its square size (an int) and its own protocol row.
    r = _invoke(["bench", "test_resnet", "--res", "32", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
                 "--device", "cpu", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["res"] == 32
    rows = {row["mode"]: row for row in json.loads(_invoke(["compare", "--db", str(db), "--format", "json"]).stdout)}
    assert rows["inference"]["res"] == 32 and rows["detector inference"]["res"] == "96x128"


@pytest.mark.parametrize("args, message", [
    (["--task", "detection", "--res", "0"], "--img-size must be N or HxW"),
    (["--task", "detection", "--res", "12x"], "--img-size must be N or HxW"),
    (["--task", "detection", "--img-size", "axb"], "--img-size must be N or HxW"),
    (["--res", "64x96"], "applies to --task detection"),
    (["--res", "-1"], "--img-size must be N or HxW"),
])
def test_bad_sizes_exit_2_before_torch(tmp_path, args, message):
    db = tmp_path / "x.db"
    code = ("import sys; from vmbench.cli import main\n"
            "try:\n    main()\nfinally:\n    assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code, "bench", "test_resnet", *args, "--db", str(db)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not db.exists()


def test_compare_shows_box_and_mask_ap_for_a_detection_dataset(det_run):
    """A detection dataset's leaderboard: COCO AP columns (the store's listing columns hold every metric the
    detector reports), no top-1 / top-5; a classification section keeps top-1."""
    from vmbench.store.tables import NUM_RESULTS

    assert set(DETECTION_METRICS) <= set(NUM_RESULTS)
    db, run_id, trained = det_run
    r = _invoke(["compare", "--db", str(db), "--dataset", "shapes-det", "--format", "json"])
    assert r.exit_code == 0, r.output
    row = next(x for x in json.loads(r.stdout) if x["run_id"] == run_id)
    assert row["task"] == "detection"
    for k in DETECTION_METRICS:  # a size range with no objects has no AP (NaN, stored as none)
        want = None if isinstance(trained[k], float) and math.isnan(trained[k]) else trained[k]
        assert _same(row[k], want), (k, row[k], trained[k])
    table = _invoke(["compare", "--db", str(db), "--dataset", "shapes-det", "--format", "markdown"]).stdout
    assert "| box AP |" in table and "| mask AP_L |" in table and "top-1" not in table
    r = _invoke(["compare", "--db", str(db), "--dataset", "shapes-det", "--sort", "box_ap50", "--columns",
                 "box_ap,mask_ap", "--format", "csv"])
    assert r.exit_code == 0 and "box_ap" in r.stdout.splitlines()[0]
