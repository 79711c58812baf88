"""Graceful stop: the first SIGINT/SIGTERM finishes the optimizer step, saves a checkpoint (inside the epoch when it
comes mid-epoch) and records the run as interrupted; `vmbench resume` then continues inside that epoch and ends
with the metrics of an uninterrupted run; a second signal interrupts at once."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vmbench import checkpoint as ck
from vmbench.config import RunSpec
from vmbench.engine.train import Trainer, TrainingStopped
from vmbench.scheduler.local import StopRequest, _graceful_stop
from vmbench.store import Store

from dbfiles import sigterm_after_first_epoch

SAME = ("train_loss", "train_acc", "val_top1", "val_top5", "val_loss", "lr")  # timings differ between runs


def _spec(folder, **kw) -> RunSpec:
    base = dict(model="test_resnet", dataset="shapes", epochs=2, batch_size=8, img_size=32, device="cpu",
                max_train_batches=6, max_val_batches=1, bench_batch=4, checkpoint_dir=str(folder))
    return RunSpec(**{**base, **kw})


def _optimizer_steps(tr: Trainer) -> int:
    """Optimizer steps taken so far (AdamW counts them per parameter), readable in the middle of an epoch."""
    state = next(iter(tr.optimizer.state.values()), None)
    return int(state["step"]) if state else 0


def _same(history):
    return [{k: m[k] for k in SAME} for m in history]


@pytest.mark.parametrize("stop_at, kw, where", [
    (3, {}, "epoch 1, batch 3/6"),  # mid-epoch
    (6, {}, "epoch 1, batch 6/6"),  # after the epoch's last step, before its evaluation
    (4, dict(accum_steps=2, ema=True, ema_decay=0.9), "epoch 2, batch 2/6"),  # 3 optimizer steps per epoch
])
def test_stop_inside_an_epoch_resumes_to_identical_metrics(tmp_path, stop_at, kw, where):
    ref = Trainer(_spec(tmp_path / "ref", **kw))
    ref_history = list(ref.epochs())

    tr = Trainer(_spec(tmp_path / "run", **kw))
    tr.should_stop = lambda: _optimizer_steps(tr) >= stop_at
    done = []
    with pytest.raises(TrainingStopped) as ei:
        for m in tr.epochs():
            done.append(m)
    assert ei.value.step == stop_at and where in str(ei.value)
    assert ei.value.checkpoint == str(tmp_path / "run" / ck.LAST)
    state = ck.load_checkpoint(tmp_path / "run" / ck.LAST)
    assert state["step"] == stop_at and state["epochs_done"] == len(done)
    assert state["partial_epoch"]["batches"] == int(where.split("batch ")[1].split("/")[0])

    resumed = Trainer(_spec(tmp_path / "run", **kw))
    resumed.resume_from(tmp_path / "run" / ck.LAST)
    rest = list(resumed.epochs())
    assert _same(done + rest) == _same(ref_history)
    if kw.get("ema"):
        assert [m["ema_val_loss"] for m in done + rest] == [m["ema_val_loss"] for m in ref_history]
    assert resumed._step == ref._step


def test_stop_between_epochs_keeps_the_epoch_checkpoint(tmp_path):
    tr = Trainer(_spec(tmp_path))
    tr.should_stop = lambda: len(tr.history) >= 1  # asked for during epoch 1's evaluation
    with pytest.raises(TrainingStopped, match=r"optimizer step 6 \(before epoch 2\)"):
        list(tr.epochs())
    state = ck.load_checkpoint(tmp_path / ck.LAST)
    assert state["epochs_done"] == 1 and state["partial_epoch"] is None


def test_stop_without_checkpoints_says_so(tmp_path):
    tr = Trainer(_spec(None, checkpoint_dir=None))
    tr.should_stop = lambda: _optimizer_steps(tr) >= 1
    with pytest.raises(TrainingStopped, match=r"step 1 \(epoch 1, batch 1/6\); no checkpoint kept") as ei:
        list(tr.epochs())
    assert ei.value.checkpoint is None and ei.value.step == 1


def test_second_signal_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with _graceful_stop() as stop:
        assert isinstance(stop, StopRequest) and not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs in the main thread at the next bytecode
        assert stop() and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


RUN = ["run", "test_resnet", "fake", "--epochs", "3", "--max-train-batches", "30", "--max-val-batches", "1",
       "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--set", "checkpoints=true"]


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "vmbench.cli", *args], capture_output=True, text=True, **kw)


def test_sigterm_stops_after_a_step_saves_and_resumes(tmp_path):
    db = tmp_path / "x.db"
    returncode, err = sigterm_after_first_epoch(RUN, db)
    assert returncode == 130, err
    assert "SIGTERM: stopping after the current optimizer step" in err
    assert "continue it with `vmbench resume 1`" in err
    run = Store(str(db)).get_run(1)
    assert run.status == "interrupted" and run.ended_at is not None
    assert run.error.startswith("interrupted by SIGTERM: stopped after optimizer step")
    state = ck.load_checkpoint(ck.latest_good(run.checkpoint_dir))
    assert state["step"] > 0 and state["epochs_done"] >= 1
    if state["partial_epoch"] is not None:  # stopped inside epoch 2 (the usual case)
        assert state["step"] == 30 * state["epochs_done"] + state["partial_epoch"]["batches"]

    r = _cli(["resume", "1", "--db", str(db), "--json"], timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["epochs_done"] == 3
    run = Store(str(db)).get_run(1)
    assert run.status == "completed" and sorted({m.epoch for m in run.metrics}) == [1, 2, 3]
