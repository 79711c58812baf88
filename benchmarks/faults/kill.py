"""Kill −9 at random points of a real training run (a tiny CPU model), then `vmbench resume` it.

    python benchmarks/faults/kill.py --trials 20 [--epochs 4] [--json]

A reference run (same command, not killed) gives the run's length. Each trial starts `vmbench run … --set
checkpoints=true`, waits for its first checkpoint, sends SIGKILL at a uniformly random time between then and the
reference run's end (retried with a new time when the run ended first), and checks:
  - the run shows `interrupted` (its pid is gone; nothing was written at the kill),
  - `vmbench resume` finishes it: exit 0, `completed`, every epoch's metrics once, its results;
  - work lost = kill time − the write time of the checkpoint resumed from (polled every 5 ms), against the
    checkpoint interval (the longest gap between two checkpoint writes of that run before the kill, else the
    reference run's); kills after the last
    epoch (during the final benchmark, which keeps no checkpoint) are counted apart;
  - rows lost: runs / epochs / results missing from the database after the resume (must be 0).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def command(epochs: int) -> list[str]:
    return [sys.executable, "-m", "vmbench.cli", "run", "test_resnet", "shapes", "--epochs", str(epochs),
            "--max-train-batches", "8", "--max-val-batches", "1", "--img-size", "32", "--batch-size", "8",
            "--device", "cpu", "--set", "checkpoints=true", "--json"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _watch(proc, runs: Path, t0: float, writes: list[float], seen: list, until: float | None = None) -> bool:
    """Poll the run's folder until `until` (s since t0) or the process ends, noting the time each new last.pt
    appears in `writes`; True when `until` came first."""
    while proc.poll() is None:
        now = time.monotonic() - t0
        for last in runs.glob("*/last.pt"):
            try:
                ino = last.stat().st_ino  # a new checkpoint is a new file (renamed over the old one)
            except FileNotFoundError:
                continue
            if ino != seen[0]:
                seen[0] = ino
                writes.append(now)
        if until is not None and writes and now >= max(until, writes[0]):
            return True
        time.sleep(0.005)
    return False


def reference(folder: Path, epochs: int) -> dict:
    """One uninterrupted run: its length, its checkpoint times (seconds from start) and their longest gap."""
    db = folder / "ref" / "x.db"
    db.parent.mkdir(parents=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([*command(epochs), "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=_env())
    writes: list[float] = []
    _watch(proc, db.parent / "runs", t0, writes, [None])
    assert proc.wait() == 0, "the reference run failed"
    return dict(length_s=time.monotonic() - t0, first_checkpoint_s=writes[0], last_checkpoint_s=writes[-1],
                interval_s=max(b - a for a, b in zip(writes, writes[1:])))


def trial(folder: Path, epochs: int, ref: dict, rng: random.Random) -> dict:
    """One killed-and-resumed run; its figures."""
    from vmbench import checkpoint as ck
    from vmbench.store import Store, effective_status

    for attempt in range(5):
        db = folder / f"attempt{attempt}" / "x.db"
        db.parent.mkdir(parents=True)
        t0 = time.monotonic()
        proc = subprocess.Popen([*command(epochs), "--db", str(db)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_env())
        after_first = rng.uniform(0.0, ref["length_s"] - ref["first_checkpoint_s"])
        writes: list[float] = []  # times a new last.pt appeared (s since start)
        killed_at = None
        seen: list = [None]
        if "after_checkpoints" in ref:  # short form (tests): a random point shortly after the k-th checkpoint
            k = rng.randint(1, ref["after_checkpoints"])
            while _watch(proc, db.parent / "runs", t0, writes, seen, until=0.0) and len(writes) < k:
                time.sleep(0.001)
            _watch(proc, db.parent / "runs", t0, writes, seen, until=time.monotonic() - t0 + rng.uniform(0, 0.1))
        elif _watch(proc, db.parent / "runs", t0, writes, seen, until=0.0):  # the first checkpoint is there
            _watch(proc, db.parent / "runs", t0, writes, seen, until=writes[0] + after_first)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic() - t0
        proc.wait()
        with Store(str(db), create=False) as store:
            run = store.get_run(1)
            shown = effective_status(run)
            folder_ = Path(run.checkpoint_dir)
        if killed_at is None or run.status == "completed":  # it ended before the kill: another random time
            continue
        used = ck.latest_good(folder_)
        state = ck.load_checkpoint(used)
        # The checkpoint resumed from was written at the last `writes` time at or before it (a later one was
        # not complete, or it is last.prev.pt when last.pt was torn).
        written = writes[-1] if used.name == ck.LAST else (writes[-2] if len(writes) > 1 else writes[-1])
        r = subprocess.run([sys.executable, "-m", "vmbench.cli", "resume", "1", "--db", str(db), "--json"],
                           capture_output=True, text=True, env=_env(), timeout=900)
        with Store(str(db), create=False) as store:
            after = store.get_run(1)
            epochs_logged = sorted(m.epoch for m in after.metrics if m.key == "train_loss")
            results = {x.key for x in after.results}
        gaps = [b - a for a, b in zip(writes, writes[1:])]
        interval = max(gaps) if gaps else ref["interval_s"]
        lost_rows = (epochs_logged != list(range(1, epochs + 1))) + ("top1" not in results)
        return dict(attempt=attempt, killed_at_s=round(killed_at, 3), shown=shown,
                    checkpoint=used.name, epochs_done=int(state["epochs_done"]), checkpoints_seen=len(writes),
                    phase="training" if int(state["epochs_done"]) < epochs else "final measurement",
                    work_lost_s=round(killed_at - written, 3), interval_s=round(interval, 3) if interval else None, resume_rc=r.returncode, final=after.status,
                    lost_rows=int(lost_rows))
    return dict(attempt=5, shown="never killed")


def summarize(rows: list[dict], ref: dict) -> dict:
    """The figure: counts over the trials. Work lost is checked two ways: the resume started from the newest
    checkpoint written before the kill (so at most one checkpoint interval of work is redone), and in wall-clock
    time against the run's own longest checkpoint gap (trials that saw two checkpoints or more)."""
    training = [r for r in rows if r.get("phase") == "training"]
    timed = [r for r in training if r.get("checkpoints_seen", 0) >= 2]
    return dict(trials=len(rows), reference_s=round(ref["length_s"], 2),
                reference_checkpoint_interval_s=round(ref["interval_s"], 3),
                killed_in_training=len(training), killed_in_final_measurement=len(rows) - len(training),
                interrupted=sum(r["shown"] == "interrupted" for r in rows),
                resumed_completed=sum(r.get("final") == "completed" and r.get("resume_rc") == 0 for r in rows),
                resumed_from_newest_checkpoint=sum(r.get("epochs_done", -1) >= r.get("checkpoints_seen", 0)
                                                   for r in rows),
                resumed_from_prev=sum(r.get("checkpoint") == "last.prev.pt" for r in rows),
                timed_trials=len(timed),
                timed_lost_within_interval=sum(r["work_lost_s"] <= r["interval_s"] for r in timed),
                max_work_lost_s=max((r["work_lost_s"] for r in training), default=None),
                lost_rows=sum(r.get("lost_rows", 0) for r in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    folder = Path(tempfile.mkdtemp(prefix="vmbench-kill-"))
    ref = reference(folder, a.epochs)
    rows = [trial(folder / f"t{i}", a.epochs, ref, rng) for i in range(a.trials)]
    summary = summarize(rows, ref)
    if a.json:
        print(json.dumps(dict(summary=summary, trials=rows)))
    else:
        for r in rows:
            print(r)
        print("\n".join(f"{k}: {v}" for k, v in summary.items()))
    ok = summary["interrupted"] == summary["resumed_completed"] == summary["resumed_from_newest_checkpoint"] \
        == len(rows) and summary["lost_rows"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
