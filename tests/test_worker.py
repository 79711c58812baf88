"""`vmbench worker` with real processes and real signals: CPU slots run a sweep; a user error is not retried; a
SIGKILLed run is retried and resumed from its checkpoint; SIGTERM to a worker puts its run back on the queue and
the next worker resumes it; several workers on one queue, some SIGKILLed, complete every item exactly once."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from vmbench.scheduler.local_exec import parse_gpu_memory, parse_gpus
from vmbench.scheduler.queue import enqueue, noop_item
from vmbench.store import Store
from vmbench.store.queue import Queue

TINY = ["--device", "cpu", "--img-size", "32", "--batch-size", "8", "--max-val-batches", "1"]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vmbench.cli", *args], capture_output=True, text=True, timeout=300,
                          **kw)


def _worker(db, *extra, log=None):
    return subprocess.Popen([sys.executable, "-m", "vmbench.cli", "worker", "--db", db, "--device", "cpu",
                             "--poll", "0.3", *extra], stdout=subprocess.PIPE, stderr=log or subprocess.PIPE,
                            text=True)


def _wait(cond, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _run(db, run_id):
    try:
        with Store(db, create=False) as s:
            return s.get_run(run_id)
    except ValueError:
        return None


def _epochs_logged(db, run_id):
    run = _run(db, run_id)
    return len({m.epoch for m in run.metrics}) if run else 0


def test_worker_runs_a_sweep_and_refuses_to_retry_user_errors(tmp_path):
    db = str(tmp_path / "q.db")
    out = _cli("sweep", "test_resnet", "--datasets", "shapes", "--seeds", "0,1", "--epochs", "1",
               "--max-train-batches", "1", *TINY, "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["added"] == 2
    out = _cli("queue", "add", "test_resnet", str(tmp_path / "no-such-folder"), "--epochs", "1", *TINY, "--db", db)
    assert out.returncode == 0, out.stderr
    w = _worker(db, "--slots", "2", "--backoff", "0.5", "--lease", "20", "--json")
    stdout, stderr = w.communicate(timeout=300)
    assert w.returncode == 0, stderr
    assert json.loads(stdout)["outcomes"]["done"] >= 2
    with Queue(db) as q:
        items = q.items()
        assert [i.status for i in items] == ["done", "done", "failed"]
        bad = items[2]
        assert bad.attempts == 1 and bad.failures == 0 and "no-such-folder" in bad.error  # exit 2: not retried
        for item in items[:2]:
            assert _run(db, item.run_id).status == "completed"
            assert f"queue:{item.id}:{item.attempts}" in _run(db, item.run_id).tags
            last = q.attempts(item.id)[-1]
            assert last.outcome == "done" and last.exit_code == 0 and last.action == "run"
            assert last.gpu_ids in ("cpu0", "cpu1") and last.host and last.worker.endswith(f":{w.pid}")
    listing = _cli("queue", "ls", "--db", db, "--json")
    rows = json.loads(listing.stdout)
    assert [r["status"] for r in rows] == ["done", "done", "failed"] and rows[0]["log_path"].endswith(".log")
    assert "dataset folder not found" in _cli("queue", "ls", "--db", db).stdout


def test_killed_run_resumes_and_a_stopped_worker_hands_over(tmp_path):
    """One run of 12 epochs through three workers: its process SIGKILLed (retried, resumed); its worker SIGTERMed
    (the run stops with a checkpoint, the item goes back); the next worker SIGKILLed (its run gets SIGTERM and
    stops, its claim expires); the last worker takes over and completes the run."""
    db = str(tmp_path / "q.db")
    # Enough epochs that the run is still going when each signal lands, however fast the machine.
    out = _cli("queue", "add", "test_resnet", "shapes", "--epochs", "12", "--max-train-batches", "8",
               "--set", "checkpoints=true", *TINY, "--db", db)
    assert out.returncode == 0, out.stderr
    w1 = _worker(db, "--backoff", "0.5", "--lease", "20")
    w2 = None
    try:
        _wait(lambda: _epochs_logged(db, 1) >= 1, 240, "the run's first epoch", w1)
        os.kill(_run(db, 1).pid, signal.SIGKILL)  # an infrastructure failure: retried, resumed from epoch 1
        _wait(lambda: len(Queue(db).attempts(1)) == 2 and _run(db, 1).status == "running"
              and _epochs_logged(db, 1) >= 2, 240, "the resumed attempt's next epoch", w1)
        w1.send_signal(signal.SIGTERM)  # the worker stops its run with a checkpoint and requeues the item
        w1.wait(timeout=240)
        assert w1.returncode == 0, w1.stderr.read()
        with Queue(db) as q:
            assert q.get(1).status == "queued"
        assert _run(db, 1).status == "interrupted"
        w2 = _worker(db, "--lease", "4", "--backoff", "0.5")
        _wait(lambda: _run(db, 1).status == "running" and _epochs_logged(db, 1) >= 3, 240, "epoch 3", w2)
        child = _run(db, 1).pid
        w2.kill()  # its run gets SIGTERM (it dies with its worker) and stops; the claim expires after 4 s
        w2.wait()
    finally:
        for w in (w1, w2):
            if w is not None and w.poll() is None:
                w.kill()
    w3 = _worker(db, "--lease", "20", "--backoff", "0.5")
    _, stderr = w3.communicate(timeout=300)
    assert w3.returncode == 0, stderr
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    with Queue(db) as q:
        item = q.get(1)
        assert item.status == "done" and item.run_id == 1
        steps = [(a.action, a.outcome) for a in q.attempts(1)]
        assert steps[:3] == [("run", "retry"), ("resume", "stopped"), ("resume", "lost")], steps
        assert steps[-1] == ("resume", "done") and set(steps[3:-1]) <= {("pending", "busy")}, steps
        assert "SIGKILL" in q.attempts(1)[0].error
        assert q.attempts(1)[-1].worker.endswith(f":{w3.pid}")
    run = _run(db, 1)
    assert run.status == "completed" and sorted({m.epoch for m in run.metrics}) == list(range(1, 13))


def test_workers_killed_at_random_lose_nothing_and_run_nothing_twice(tmp_path, any_db):
    """Four workers on 60 items that hold their claim for 0.25 s; two workers are SIGKILLed mid-way. Every item
    is recorded done exactly once, and no item's executions overlap (a dead worker's claim is taken over only
    after it died)."""
    db = any_db
    trace = tmp_path / "trace.jsonl"
    enqueue(db, [noop_item(f"n{i}", seconds=0.25, trace=str(trace)) for i in range(60)])
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(4)]
    workers = [_worker(db, "--slots", "2", "--lease", "3", "--poll", "0.05", log=log) for log in logs]
    killed = {}
    try:
        rng = random.Random(0)
        for victim in workers[:2]:
            _wait(lambda: trace.exists() and trace.read_text().count('"end"') >= rng.randint(5, 25), 120,
                  "some items done")
            victim.kill()
            killed[victim.pid] = time.time()
        for w in workers[2:]:
            w.wait(timeout=240)
            assert w.returncode == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    with Queue(db) as q:
        assert q.counts() == {"done": 60}
        attempts = q.attempts()
    worker_of = {a.claim_token: int(a.worker.rsplit(":", 1)[1]) for a in attempts}
    done_tokens = {a.claim_token for a in attempts if a.outcome == "done"}
    assert sorted(a.item_id for a in attempts if a.outcome == "done") == list(range(1, 61))  # recorded done once
    ends, starts = {}, {}
    for x in lines:
        if x["what"] == "end":
            # An item's work ends once under the claim recorded done; any other end is a killed worker's, which
            # died after the work and before recording it (the item is then done again by the next holder).
            assert x["token"] in done_tokens or worker_of[x["token"]] in killed, x
            ends[x["item"]] = ends.get(x["item"], 0) + (x["token"] in done_tokens)
        else:
            starts.setdefault(x["item"], []).append((x["t"], worker_of[x["token"]]))
    assert ends == {i: 1 for i in range(1, 61)}
    assert [a for a in attempts if a.outcome == "lost"], "no claim was taken over"
    for item, runs in starts.items():
        runs.sort()
        for (t0, pid0), (t1, _) in zip(runs, runs[1:]):
            assert pid0 in killed and killed[pid0] <= t1  # only a dead worker's attempt is ever repeated


def test_gpu_option_and_nvidia_smi_parsing():
    assert parse_gpus("all") == -1 and parse_gpus("2") == 2 and parse_gpus("0,3") == ["0", "3"]
    for bad in ("0", "x", "1,a"):
        with pytest.raises(ValueError):
            parse_gpus(bad)
    assert parse_gpu_memory("0, 80000, 81559\n1, 1200, 81559\n") == {"0": (80000, 81559), "1": (1200, 81559)}


def test_worker_refuses_bad_options(tmp_path):
    db = str(tmp_path / "q.db")
    for args in (["--slots", "2"], ["--device", "cpu", "--slots", "0"], ["--device", "cpu", "--lease", "0"]):
        out = _cli("worker", "--db", db, *args)
        assert out.returncode == 2 and out.stderr.startswith("error:") and len(out.stderr.splitlines()) == 1
    assert not os.path.exists(db)
