"""CLI commands through CliRunner on a temporary database; exit codes; no torch for the light commands."""
import csv
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.store import Store

from dbfiles import db_digest


@pytest.fixture()
def db(tmp_path):
    """A database with two completed shapes runs, a failed one and a bench run."""
    path = str(tmp_path / "exp.db")
    store = Store(path)
    for model, top1, img_s in (("convnext_t", 61.0, 90.0), ("vmamba_t", 72.5, 80.0), ("vmamba_t", 70.0, 85.0)):
        rid = store.create_run("train", model, "shapes", {"epochs": 3}, seed=0)
        store.log_metrics(rid, {"train_loss": 1.5, "val_top1": top1 - 5}, epoch=1)
        store.log_metrics(rid, {"train_loss": 1.1, "val_top1": top1}, epoch=2)
        store.finish_run(rid, "completed", {"top1": top1, "top5": 99.0, "params_m": 30.2, "gflops": 0.4,
                                            "img_s": img_s, "scan_backend": "torch"})
    rid = store.create_run("train", "swin_t", "shapes", {})
    store.finish_run(rid, "failed", error="RuntimeError: boom")
    rid = store.create_run("bench", "vmamba_t", None, {"res": 224, "batch": 2, "precision": "fp32"}, device="cpu")
    store.finish_run(rid, "completed", {"img_s": 12.5, "params_m": 30.2, "gflops": 4.9, "res": 224})
    for params, img_s in (({"section": "train", "kind": None}, 5.0), ({"section": "graph", "kind": "infer"}, 30.0)):
        rid = store.create_run("bench", "vmamba_t", None, {"res": 224, "batch": 2, "precision": "fp32", **params},
                               device="cpu", tags=["suite:paper"])
        store.finish_run(rid, "completed", {"img_s": img_s, "res": 224})
    store.close()
    return path


def test_compare_json_rows(db):
    r = CliRunner().invoke(main, ["compare", "--db", db, "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    train = [row for row in rows if row["dataset"] == "shapes"]
    # two runs of one protocol: their mean ± std (n)
    assert [(x["model"], x["top1"], x["runs"]) for x in train] == [("vmamba_t", 71.25, 2), ("convnext_t", 61.0, 1)]
    assert train[0]["top1_std"] == pytest.approx(1.7677, abs=1e-4) and train[0]["run_ids"] == [2, 3]
    bench = [row for row in rows if row["kind"] == "bench"]
    assert all(row["dataset"] == "(benchmark)" for row in bench)
    # eager inference, a training step and a CUDA-graph replay are different measurements: never one row
    assert sorted((row["img_s"], row["precision"], row["mode"], row["batch"]) for row in bench) == [
        (5.0, "fp32", "train step", 2), (12.5, "fp32", "inference", 2), (30.0, "fp32", "inference + graph", 2)]
    assert all(row["top1"] is None for row in bench)


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv"])
def test_compare_formats(db, fmt):
    r = CliRunner().invoke(main, ["compare", "--db", db, "--format", fmt])
    assert r.exit_code == 0, r.output
    assert "vmamba_t" in r.output and "convnext_t" in r.output and "swin_t" not in r.output
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.output)))
        assert rows[0]["model"] == "vmamba_t" and float(rows[0]["top1"]) == 71.25
    if fmt == "markdown":
        assert "| model | source |" in r.output and "| 71.25 ± 1.77 |" in r.output.replace("**", "")


def test_compare_dataset_filter(db):
    before = db_digest(db)
    r = CliRunner().invoke(main, ["compare", "--db", db, "--format", "json", "--dataset", "nope"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "'nope'" in r.output and "shapes" in r.output
    assert db_digest(db) == before
    r = CliRunner().invoke(main, ["compare", "--db", db, "--format", "json", "--dataset", "shapes"])
    assert r.exit_code == 0 and {x["dataset"] for x in json.loads(r.output)} == {"shapes"}


def test_show_and_runs(db):
    r = CliRunner().invoke(main, ["show", "1", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["model"] == "convnext_t" and d["results"]["top1"] == 61.0
    assert [m["val_top1"] for m in d["metrics"]] == [56.0, 61.0]
    r = CliRunner().invoke(main, ["show", "1", "--db", db])
    assert r.exit_code == 0 and "per-epoch metrics" in r.output
    r = CliRunner().invoke(main, ["runs", "--db", db, "--json", "--status", "failed"])
    assert r.exit_code == 0 and [x["model"] for x in json.loads(r.output)] == ["swin_t"]


@pytest.mark.parametrize("args", [["show", "99"], ["compare"], ["runs"]])
def test_read_commands_user_errors(tmp_path, db, args):
    target = db if args[0] == "show" else str(tmp_path / "missing.db")
    r = CliRunner().invoke(main, [*args, "--db", target])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert not (tmp_path / "missing.db").exists()


def test_db_from_environment(db, monkeypatch):
    monkeypatch.setenv("VMBENCH_DB", db)
    r = CliRunner().invoke(main, ["compare", "--format", "json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 5  # 2 trained models, 3 benchmark modes


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--format", "json"], ["runs"], ["models", "--json"]])
def test_light_commands_do_not_import_torch(db, argv):
    code = ("import sys; from vmbench.cli import main; argv = sys.argv[1:]\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert argv[0] not in ('compare', 'runs') or 'sqlalchemy.orm' not in sys.modules, 'the ORM was imported'\n")
    extra = ["--db", db] if argv[0] in ("compare", "runs") else []
    p = subprocess.run([sys.executable, "-c", code, *argv, *extra], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
