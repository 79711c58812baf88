"""`vmbench worker --executor slurm` on a real SLURM cluster (the one-node cluster `.ci/slurm-up.sh` starts): a queued
run is submitted through submitit, told to checkpoint and requeue (`scancel --signal=USR2`, what SLURM sends before a
time limit or on preemption), resumed by the requeued job, and completed; the database shows each step.
Skipped only where SLURM is absent outside CI."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from vmbench.scheduler.slurm import job_state, parse_time
from vmbench.store import Store
from vmbench.store.queue import Queue

IN_CI = os.environ.get("CI", "").lower() == "true"
TINY = ["--device", "cpu", "--img-size", "32", "--batch-size", "8", "--max-val-batches", "1"]


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sinfo") is None:
        if IN_CI:
            pytest.fail("SLURM is needed in CI (.ci/slurm-up.sh)")
        pytest.skip("no SLURM here (sinfo not found)")
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=60)
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        pytest.fail(f"SLURM is installed but no node is up: {out.stdout} {out.stderr}")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vmbench.cli", *args], capture_output=True, text=True, timeout=300)


def _wait(cond, timeout, what, proc):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if proc.poll() is not None:
            raise AssertionError(f"the worker ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def _epochs(db):
    try:
        with Store(db, create=False) as s:
            run = s.get_run(1)
    except ValueError:
        return 0
    return len({m.epoch for m in run.metrics}) if run else 0


def _restarts(job_id):
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return int(fields.get("Restarts", 0)), fields.get("JobState")


def test_slurm_job_requeues_on_signal_and_resumes(slurm, tmp_path):
    db = str(tmp_path / "q.db")
    # Enough epochs that the run is still going when the signal lands, however fast the machine.
    out = _cli("queue", "add", "test_resnet", "shapes", "--epochs", "20", "--max-train-batches", "8",
               "--set", "checkpoints=true", *TINY, "--db", db)
    assert out.returncode == 0, out.stderr
    w = subprocess.Popen([sys.executable, "-m", "vmbench.cli", "worker", "--executor", "slurm", "--db", db,
                          "--time", "00:10:00", "--cpus-per-run", "1", "--mem", "2G", "--lease", "15", "--poll", "0.5",
                          "--sbatch", "comment=vmbench-test", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = None
    try:
        job = _wait(lambda: Queue(db).get(1).slurm_job_id, 120, "the job's submission", w)
        _wait(lambda: _epochs(db) >= 1, 300, "the run's first epoch in the job", w)
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
        _wait(lambda: _restarts(job)[0] >= 1 and _restarts(job)[1] == "PENDING", 180, "the requeue", w)
        # SLURM starts the requeued job again once the first start's credential has expired (.ci/slurm-up.sh sets
        # cred_expire to 15 s); a start forced before then fails ("Job credential revoked") and the job ends FAILED.
        stdout, stderr = w.communicate(timeout=400)
        assert w.returncode == 0, stderr
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
        if job:
            subprocess.run(["scancel", job], capture_output=True, timeout=60)
    assert json.loads(stdout)["outcomes"] == {"done": 1}, stderr[-4000:]  # the worker's lines say why
    with Queue(db) as q:
        item = q.get(1)
        assert item.status == "done" and item.slurm_job_id == job and item.run_id == 1
        assert item.log_path.endswith(f"{job}_0_log.out") and os.path.exists(item.log_path)
        steps = [(a.action, a.outcome, a.slurm_job_id) for a in q.attempts(1)]
        assert steps == [("run", "requeued", job), ("resume", "done", job)]
    with Store(db, create=False) as s:
        run = s.get_run(1)
        assert run.status == "completed" and sorted({m.epoch for m in run.metrics}) == list(range(1, 21))
    log = open(item.log_path).read()
    assert "resume 1" in log and "Requeued job" in log
    rows = json.loads(_cli("queue", "ls", "--db", db, "--json").stdout)
    assert rows[0]["slurm_job_id"] == job and rows[0]["log_path"] == item.log_path
    assert job_state(job) in (None, "COMPLETED")


def test_slurm_options_are_checked(slurm, tmp_path):
    assert parse_time("90") == 90 and parse_time("1-00:00:00") == 1440 and parse_time("00:00:30") == 1
    db = str(tmp_path / "q.db")
    for args in (["--time", "x"], ["--sbatch", "novalue"]):
        out = _cli("worker", "--executor", "slurm", "--db", db, *args)
        assert out.returncode == 2 and out.stderr.startswith("error:"), out.stderr


def test_job_state_tells_a_forgotten_job_from_a_controller_that_cannot_answer(slurm, tmp_path, monkeypatch):
    """Only "Invalid job id" means SLURM has forgotten a job; any other scontrol failure (a busy or restarting
    controller) leaves the job live, to be asked about again, instead of counting its attempt as failed."""
    assert job_state("999999999") is None
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out on send/recv' >&2\n"
                                   "exit 1\n")
    (fake / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert job_state("1") == "UNKNOWN"
