"""`vmbench eval MODEL DATASET --weights PATH`: our checkpoints (model or EMA weights), plain / wrapped torch
state dicts, .safetensors; weights_only refusals and mismatches exit 2 writing nothing; eval runs are recorded."""
import argparse
import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.store import Store

from dbfiles import db_digest

TRAIN = ["run", "test_resnet", "shapes", "--epochs", "2", "--max-train-batches", "3", "--max-val-batches", "2",
         "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--set", "checkpoints=true"]
EVAL = ["--max-val-batches", "2", "--batch-size", "8", "--device", "cpu"]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run with checkpoints: (database path, run)."""
    db = tmp_path_factory.mktemp("trained") / "x.db"
    r = _invoke([*TRAIN, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    return db, Store(str(db)).get_run(json.loads(r.stdout)["id"])


def _best_epoch(run) -> dict:
    """The epoch best.pt holds: the first with the highest validation top-1."""
    by_epoch: dict = {}
    for m in run.metrics:
        by_epoch.setdefault(m.epoch, {})[m.key] = m.value
    best = max(by_epoch, key=lambda e: (by_epoch[e]["val_top1"], -e))
    return by_epoch[best]


def test_eval_of_best_checkpoint_matches_the_run(trained, tmp_path):
    db, run = trained
    best = f"{run.checkpoint_dir}/best.pt"
    r = _invoke(["eval", "test_resnet", "shapes", "--weights", best, *EVAL, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    epoch = _best_epoch(run)
    assert out["top1"] == epoch["val_top1"] and out["top5"] == epoch["val_top5"]
    assert out["val_loss"] == pytest.approx(epoch["val_loss"], rel=1e-5)
    assert out["img_size"] == 32  # the checkpoint's own input size, not shapes' default 64
    assert out["weights_format"] == "vmbench" and out["weights_entry"] == "model"

    ev = Store(str(db)).get_run(out["id"])
    assert ev.kind == "eval" and ev.status == "completed" and ev.dataset == "shapes"
    assert ev.params["weights_sha256"] == _sha256(best) and ev.params["weights_path"] == best
    assert ev.params["eval_transform"]["input_size"] == [3, 32, 32]
    assert {r.key for r in ev.results} >= {"top1", "top5", "val_loss"}

    # In the leaderboard the evaluation is a row of its own (the train run keeps its row) and says it is one.
    r = _invoke(["compare", "--db", str(db), "--format", "markdown"])
    assert r.exit_code == 0 and f"| {out['id']} (eval) |" in r.output

    # The table summary names the file's entry too.
    r = _invoke(["eval", "test_resnet", "shapes", "--weights", best, *EVAL, "--db", str(db)])
    assert r.exit_code == 0 and "weights_sha256" in r.stdout and "top1" in r.stdout


def test_ema_weights_are_chosen_and_recorded(tmp_path):
    db = tmp_path / "x.db"
    r = _invoke([*TRAIN, "--epochs", "1", "--set", "ema=true", "--set", "ema_decay=0.5", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    train = json.loads(r.stdout)
    last = Store(str(db)).get_run(train["id"]).checkpoint_dir + "/last.pt"
    r = _invoke(["eval", "test_resnet", "shapes", "--weights", last, "--ema", *EVAL, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["weights_entry"] == "ema" and out["top1"] == train["ema_top1"]


def test_no_ema_in_file_is_a_user_error(trained):
    db, run = trained
    before = db_digest(db)
    r = _invoke(["eval", "test_resnet", "shapes", "--weights", f"{run.checkpoint_dir}/best.pt", "--ema", *EVAL,
                 "--db", str(db)])
    assert r.exit_code == 2 and "no EMA weights" in r.stderr and r.stderr.count("\n") == 1
    assert db_digest(db) == before


def _resnet_state(num_classes: int = 10) -> dict:
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


def test_pickled_training_checkpoint_needs_trust(tmp_path):
    db = tmp_path / "x.db"
    Store(str(db)).close()
    path = tmp_path / "timm_train.pth.tar"
    # timm's train.py layout: the weights under "state_dict", the argparse options pickled next to them.
    torch.save({"state_dict": _resnet_state(), "arch": "test_resnet", "args": argparse.Namespace(lr=0.1)}, path)
    before = db_digest(db)
    r = _invoke(["eval", "test_resnet", "shapes", "--weights", str(path), *EVAL, "--db", str(db)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "weights_only=True" in r.stderr and "--trust-checkpoint" in r.stderr and "argparse.Namespace" in r.stderr
    assert db_digest(db) == before and Store(str(db)).count_runs() == 0

    r = _invoke(["eval", "test_resnet", "shapes", "--weights", str(path), "--trust-checkpoint", *EVAL, "--db",
                 str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["weights_format"] == "torch" and out["weights_entry"] == "state_dict"
    assert Store(str(db)).get_run(out["id"]).params["trust_checkpoint"] is True


def test_safetensors_and_bare_state_dicts(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    db = tmp_path / "x.db"
    sd = _resnet_state()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")  # a DataParallel-style bare dict
    tops = []
    for name, fmt in (("model.safetensors", "safetensors"), ("ddp.pth", "torch")):
        r = _invoke(["eval", "test_resnet", "shapes", "--weights", str(tmp_path / name), "--img-size", "32", *EVAL,
                     "--db", str(db), "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["weights_format"] == fmt and out["weights_entry"] is None
        assert out["weights_sha256"] == _sha256(tmp_path / name)
        tops.append((out["top1"], out["val_loss"]))
    assert tops[0] == tops[1]  # the same weights, read from two formats


@pytest.mark.parametrize("setup, message", [
    ("classes", "shape mismatches: fc.weight"),
    ("model", "is a checkpoint of test_resnet, not resnet18"),
    ("junk", "as PyTorch weights"),
    ("missing", "weights file not found"),
])
def test_mismatches_exit_2_and_write_nothing(trained, tmp_path, setup, message):
    db, run = trained
    model, path = "test_resnet", tmp_path / "w.pth"
    if setup == "classes":
        torch.save(_resnet_state(num_classes=1000), path)
    elif setup == "model":
        model, path = "resnet18", f"{run.checkpoint_dir}/best.pt"
    elif setup == "junk":
        path.write_bytes(b"not a torch file")
    before = db_digest(db)
    r = _invoke(["eval", model, "shapes", "--weights", str(path), "--img-size", "32", *EVAL, "--db", str(db)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    assert db_digest(db) == before
