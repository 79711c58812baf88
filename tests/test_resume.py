"""Crash-safe checkpoints and `vmbench resume`: atomic saves, fallback to last.prev.pt, refusals (exit 2, DB
untouched), and a SIGKILLed deterministic run that, resumed, ends bit-identical to an uninterrupted one."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vmbench import checkpoint as ck
from vmbench.cli import main
from vmbench.store import Store

from dbfiles import db_digest

RUN = ["run", "test_resnet", "shapes", "--deterministic", "--epochs", "3", "--max-train-batches", "3",
       "--max-val-batches", "2", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--set", "checkpoints=true"]
SAME = ("train_loss", "train_acc", "val_top1", "val_top5", "val_loss", "lr")  # timings differ between runs




def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "vmbench.cli", *args], capture_output=True, text=True, **kw)


def test_atomic_save_keeps_old_file_when_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / ck.LAST
    ck.save_checkpoint(path, {"epochs_done": 1, "w": torch.ones(3)}, keep_prev=True)

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(path, {"epochs_done": 2, "w": torch.zeros(3)}, keep_prev=True)
    monkeypatch.undo()
    state = ck.load_checkpoint(path)
    assert state["epochs_done"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.LAST]  # no temp files left behind


def test_corrupt_last_falls_back_to_prev(tmp_path):
    ck.save_checkpoint(tmp_path / ck.LAST, {"epochs_done": 1}, keep_prev=True)
    ck.save_checkpoint(tmp_path / ck.LAST, {"epochs_done": 2}, keep_prev=True)
    assert ck.load_checkpoint(tmp_path / ck.PREV)["epochs_done"] == 1
    assert ck.latest_good(tmp_path) == tmp_path / ck.LAST
    data = (tmp_path / ck.LAST).read_bytes()
    (tmp_path / ck.LAST).write_bytes(data[: len(data) // 2])  # truncated by a crash / full disk
    with pytest.raises(ck.CheckpointError, match="cannot be loaded"):
        ck.load_checkpoint(tmp_path / ck.LAST)
    assert ck.latest_good(tmp_path) == tmp_path / ck.PREV
    (tmp_path / ck.PREV).write_bytes(b"garbage")
    assert ck.latest_good(tmp_path) is None
    assert ck.latest_good(tmp_path / "missing") is None


def test_rng_state_round_trip_is_weights_only():
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    state = ck.rng_state(gen)
    a = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    ck.set_rng_state(state, gen)
    b = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def test_resume_refusals_exit_2_and_write_nothing(tmp_path):
    db = tmp_path / "x.db"
    r = CliRunner().invoke(main, ["run", "test_resnet", "shapes", "--epochs", "1", "--max-train-batches", "1",
                                  "--max-val-batches", "1", "--img-size", "32", "--batch-size", "8", "--device",
                                  "cpu", "--set", "checkpoints=true", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.stdout)["id"]
    with Store(str(db)) as store:
        run = store.get_run(run_id)
    assert run.checkpoint_dir == str(tmp_path / "runs" / run.run_uuid) and len(run.run_uuid) == 32
    assert {p.name for p in Path(run.checkpoint_dir).iterdir()} == {ck.LAST, ck.BEST, "run.log"}
    before = db_digest(db)
    for args, msg in ([str(run_id)], "is completed"), (["999"], "no run 999"):
        r = CliRunner().invoke(main, ["resume", *args, "--db", str(db)])
        assert r.exit_code == 2 and msg in r.output, r.output
        assert db_digest(db) == before
    # An interrupted run whose checkpoints are gone: refused too.
    with Store(str(db)) as store:
        store.update_run(run_id, status="interrupted")
    before = db_digest(db)
    for p in Path(run.checkpoint_dir).iterdir():
        p.write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(main, ["resume", str(run_id), "--db", str(db)])
    assert r.exit_code == 2 and "no loadable checkpoint" in r.output, r.output
    assert db_digest(db) == before
    r = CliRunner().invoke(main, ["resume", "1", "--db", str(tmp_path / "none.db")])
    assert r.exit_code == 2 and not (tmp_path / "none.db").exists()


def _epochs(db, run_id):
    by_epoch: dict = {}
    for m in Store(str(db)).get_run(run_id).metrics:
        by_epoch.setdefault(m.epoch, {})[m.key] = m.value
    return {e: {k: v[k] for k in SAME} for e, v in sorted(by_epoch.items())}


def _killed_run(tmp_path, attempt):
    """Start the run in a subprocess, SIGKILL it at a random point after the epoch-1 checkpoint exists."""
    db = tmp_path / f"killed{attempt}" / "x.db"
    db.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "vmbench.cli", *RUN, "--db", str(db), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((db.parent / "runs").glob(f"*/{ck.LAST}")):
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.2 / (attempt + 1)))  # somewhere in epoch 2 (an epoch takes ~0.3 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return db


def test_sigkilled_deterministic_run_resumes_to_identical_metrics(tmp_path):
    ref_db = tmp_path / "ref" / "x.db"
    ref_db.parent.mkdir()
    ref = _cli([*RUN, "--db", str(ref_db), "--json"], timeout=300)
    assert ref.returncode == 0, ref.stderr
    ref_out = json.loads(ref.stdout)

    for attempt in range(3):
        db = _killed_run(tmp_path, attempt)
        run = Store(str(db)).get_run(1)
        # a kill that came after the last epoch's checkpoint (before the run was marked completed) missed epoch 2
        if run.status != "completed" and \
                ck.load_checkpoint(ck.latest_good(run.checkpoint_dir))["epochs_done"] < 3:
            break
    else:
        pytest.fail("the run finished before every kill")
    run = Store(str(db)).get_run(1)
    assert run.status == "running" and run.pid is not None  # SIGKILL: nothing recorded; shown as interrupted
    done = ck.load_checkpoint(ck.latest_good(run.checkpoint_dir))["epochs_done"]
    assert done in (1, 2)

    r = _cli(["resume", "1", "--db", str(db), "--json"], timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["id"] == 1 and out["epochs_done"] == 3
    for key in ("top1", "top5", "val_loss", "train_loss"):
        assert out[key] == ref_out[key], key
    assert _epochs(db, 1) == _epochs(ref_db, ref_out["id"])
    run = Store(str(db)).get_run(1)
    assert run.status == "completed" and run.error is None and run.ended_at is not None
    assert run.params["recipe"] and run.recipe == "smoke"
    # A completed run cannot be resumed again.
    again = _cli(["resume", "1", "--db", str(db)])
    assert again.returncode == 2 and "is completed" in again.stderr
