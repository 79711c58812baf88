"""The fault suite, short: concurrent writers on one SQLite file, kill −9 at random points then resume, two
resumes of one run, a final write the database refuses, a full disk under a checkpoint, the heartbeat thread,
and how a run reports itself outside a terminal. Real processes and real signals (benchmarks/faults/ has the
long versions that docs/RELIABILITY.md quotes)."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
import torch

from vmbench import checkpoint as ck
from vmbench.store import Store

from dbfiles import sigterm_after_first_epoch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "faults"))

TINY = ["run", "test_resnet", "shapes", "--max-train-batches", "3", "--max-val-batches", "1", "--img-size", "32",
        "--batch-size", "8", "--device", "cpu"]


def _cli(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "vmbench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def test_concurrent_writers_lose_nothing(tmp_path):
    import writers

    out = writers.measure(str(tmp_path / "x.db"), procs=6, seconds=3.0)
    assert out["exit_codes"] == [0] and out["runs_finished"] > 0, out
    assert out["lock_errors"] == 0 and out["other_errors"] == 0 and out["lost_rows"] == 0, out
    assert out["runs_in_db"] == out["runs_finished"]


def test_kill9_at_random_points_then_resume(tmp_path):
    import kill

    # Each kill lands up to 0.1 s after checkpoint k (k random in 1..3 of 4 epochs): inside the next epoch.
    window = dict(length_s=1.0, first_checkpoint_s=0.0, interval_s=None, after_checkpoints=3)
    rng = random.Random(1)
    for i in range(2):
        t = kill.trial(tmp_path / f"t{i}", 4, window, rng)
        assert t["shown"] == "interrupted", t
        assert t["resume_rc"] == 0 and t["final"] == "completed" and t["lost_rows"] == 0, t
        # Work lost is at most one checkpoint interval: the resume starts from the newest checkpoint written before
        # the kill (wall-clock figures, which a loaded CI box stretches, are in benchmarks/faults/kill.py).
        assert t["epochs_done"] >= t["checkpoints_seen"], t


def test_second_resume_is_refused(tmp_path):
    db = tmp_path / "x.db"
    rc, err = sigterm_after_first_epoch([*TINY, "--epochs", "8", "--set", "checkpoints=true"], db)
    assert rc == 130, err
    procs = [subprocess.Popen([sys.executable, "-m", "vmbench.cli", "resume", "1", "--db", str(db)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert sorted(rc for rc, _ in outs) == [0, 2], outs
    refused = next(err for rc, err in outs if rc == 2)
    assert refused.count("\n") == 1 and ("is running" in refused or "is completed" in refused), refused
    run = Store(str(db), create=False).get_run(1)
    assert run.status == "completed"
    epochs = [m.epoch for m in run.metrics if m.key == "train_loss"]
    assert epochs == list(range(1, 9))  # each epoch once


def test_final_write_refused_keeps_results_and_applies_them_later(tmp_path):
    """The database is locked by another process for the whole end of the run: `vmbench run` ends without a
    traceback, the results wait in pending.json beside the run, and the next `vmbench runs` writes them."""
    db = tmp_path / "x.db"
    proc = subprocess.Popen([sys.executable, "-m", "vmbench.cli", *TINY, "--epochs", "2", "--db", str(db), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VMBENCH_BUSY_TIMEOUT_MS": "100"})
    holder = None
    try:
        deadline = time.monotonic() + 300
        while holder is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            logs = list((tmp_path / "runs").glob("*/run.log"))
            if logs and "training done" in logs[0].read_text():
                holder = sqlite3.connect(db, isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the run has ended
            time.sleep(0.005)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "did not take run 1's final completed status" in err
    assert json.loads(out)["top1"] is not None
    (pending,) = (tmp_path / "runs").glob("*/pending.json")
    assert Store(str(db), readonly=True).get_run(1).status == "running"
    r = _cli(["runs", "--db", str(db), "--json"])
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["status"] == "completed" and row["results"]["top1"] == json.loads(out)["top1"]
    assert not pending.exists()


def test_disk_full_while_writing_a_checkpoint(tmp_path):
    point = tmp_path / "small"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root); benchmarks/faults/diskfull.py --inject covers it")
    try:
        ck.save_checkpoint(point / ck.LAST, {"epochs_done": 1, "w": torch.ones(64 * 1024)}, keep_prev=True)  # 256 KB
        with pytest.raises(ck.CheckpointWriteError, match="No space left on device"):
            ck.save_checkpoint(point / ck.LAST, {"epochs_done": 2, "w": torch.ones(256 * 1024)}, keep_prev=True)
        assert ck.load_checkpoint(point / ck.LAST)["epochs_done"] == 1
        assert sorted(p.name for p in point.iterdir()) == [ck.LAST]
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_corrupt_checkpoint_is_detected_by_its_checksum(tmp_path):
    ck.save_checkpoint(tmp_path / ck.LAST, {"epochs_done": 1, "w": torch.zeros(1000)}, keep_prev=True)
    ck.save_checkpoint(tmp_path / ck.LAST, {"epochs_done": 2, "w": torch.zeros(1000)}, keep_prev=True)
    data = bytearray((tmp_path / ck.LAST).read_bytes())
    at = data.find(bytes(4000))  # inside the stored tensor's bytes: zip still reads, torch.load too
    data[at + 100] ^= 0xFF
    (tmp_path / ck.LAST).write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="checksum"):
        ck.load_checkpoint(tmp_path / ck.LAST)
    assert ck.latest_good(tmp_path) == tmp_path / ck.PREV


def test_heartbeat_thread_beats_while_the_run_is_busy(tmp_path):
    from vmbench.scheduler.common import Heartbeat, Progress, RunLog

    store = Store(str(tmp_path / "x.db"))
    rid = store.create_run("train", "m", "d", {})
    first = store.get_run(rid).heartbeat_at
    progress = Progress()
    progress("epoch 1/2 train", 3, 10)
    log = RunLog(tmp_path)
    with Heartbeat(store, rid, log, progress, every=0.05):
        time.sleep(0.5)  # the main thread does no store work meanwhile
    assert store.get_run(rid).heartbeat_at > first
    assert "at epoch 1/2 train 3/10" in (tmp_path / "run.log").read_text()


def test_outside_a_terminal_one_line_per_epoch_json_on_stop_and_no_checkpoint_promise(tmp_path):
    db = tmp_path / "x.db"
    proc = subprocess.Popen([sys.executable, "-m", "vmbench.cli", *TINY, "--epochs", "20", "--db", str(db), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        log = None
        while log is None or "epoch 1/20" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            log = next(iter((tmp_path / "runs").glob("*/run.log")), None)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert json.loads(out) == {"id": 1, "status": "interrupted", "error": json.loads(out)["error"]}
    assert "saving a checkpoint" not in err and "keeps no checkpoint" in err, err
    assert "run 1 epoch 1/20 train_loss" in err  # a plain line per epoch, no progress bar
    text = log.read_text()
    assert "run 1 epoch 1/20" in text and "ended interrupted" in text
    assert not list(log.parent.glob("*.pt"))  # the smoke recipe keeps no checkpoints


def test_server_database_needs_a_checkpoint_root(tmp_path):
    r = _cli([*TINY, "--epochs", "1", "--db", "sqlite://"])  # in memory: no folder beside it
    assert r.returncode == 2 and "--checkpoint-dir" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_checkpoint_dir_moved_folder_and_another_runs_checkpoint(tmp_path):
    """Runs keep their folders under --checkpoint-dir; `resume --checkpoint-dir` finds a moved one by its uuid;
    a checkpoint of another run (uuid inside the file) is refused."""
    db = tmp_path / "x.db"
    root = tmp_path / "ckpts"
    rc, err = sigterm_after_first_epoch([*TINY, "--epochs", "4", "--set", "checkpoints=true", "--checkpoint-dir",
                                         str(root)], db)
    assert rc == 130, err
    r = _cli([*TINY, "--epochs", "1", "--set", "checkpoints=true", "--db", str(db)],
             env={"VMBENCH_CHECKPOINTS": str(root)}, timeout=600)
    assert r.returncode == 0, r.stderr
    with Store(str(db), readonly=True) as store:
        first, second = store.get_run(1), store.get_run(2)
    assert Path(first.checkpoint_dir).parent == Path(second.checkpoint_dir).parent == root.resolve()
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    r = _cli(["resume", "1", "--db", str(db)])
    assert r.returncode == 2 and "no loadable checkpoint" in r.stderr, r.stderr
    mine = moved / first.run_uuid
    saved = {p.name: p.read_bytes() for p in mine.glob("*.pt")}
    for name in saved:
        (mine / name).unlink()
    (mine / ck.LAST).write_bytes((moved / second.run_uuid / ck.LAST).read_bytes())
    r = _cli(["resume", "1", "--db", str(db), "--checkpoint-dir", str(moved)])
    assert r.returncode == 2 and "belongs to another run" in r.stderr, r.stderr
    for name, data in saved.items():
        (mine / name).write_bytes(data)
    r = _cli(["resume", "1", "--db", str(db), "--checkpoint-dir", str(moved), "--json"], timeout=600)
    assert r.returncode == 0 and json.loads(r.stdout)["epochs_done"] == 4, r.stderr


def test_a_folder_dataset_is_recorded_resolved(tmp_path, monkeypatch):
    from vmbench.data import get_dataset_info
    from vmbench.scheduler.common import dataset_key

    work = tmp_path / "work"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (work / "digits" / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(work / "digits" / split / cls / "0.png")
    monkeypatch.chdir(work)
    keys = {dataset_key(get_dataset_info(name), name)
            for name in ("digits", "./digits", "../work/digits", f"{work}/digits/")}
    assert keys == {str(work / "digits")}
    assert dataset_key(get_dataset_info("shapes"), "shapes") == "shapes"


def test_git_state_is_vmbench_own_checkout_only(tmp_path):
    """An installed copy inside the user's own repository records no sha (not the user's project's)."""
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    git = ["git", "-C", str(project), "-c", "user.email=u@example.com", "-c", "user.name=u"]
    subprocess.run([*git, "init", "-q"], check=True)
    (project / "notes.txt").write_text("x")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    site = project / ".venv" / "site-packages"
    shutil.copytree(ROOT / "vmbench", site / "vmbench", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from vmbench.envinfo import git_state; print(git_state())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project,
                       env={**os.environ, "PYTHONPATH": str(site)})
    assert r.stdout.strip() == "(None, None)", r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.strip().startswith("('"), r.stdout  # this checkout of vmbench: its sha
