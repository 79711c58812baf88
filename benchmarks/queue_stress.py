"""The run queue under load, on the CPU: real `vmbench worker` processes claiming no-op items (queue item kind
`noop`: a claim held for a set time, traced to a file) from one SQLite file or one PostgreSQL database.

    python3 benchmarks/queue_stress.py throughput --db sqlite   # 8 workers × 1000 items: double claims, lost items,
    python3 benchmarks/queue_stress.py throughput --db URL      #   claim latency p50 / p99 (all claims, all workers)
    python3 benchmarks/queue_stress.py kill --trials 20         # SIGKILL one of 4 workers at a random moment per
                                                                #   trial: items lost, items run twice (recorded done
                                                                #   twice, or two executions overlapping in time),
                                                                #   time from the kill to the takeover of its claims

A PostgreSQL URL is e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres (a scratch database is created in
it and dropped). Prints a JSON summary per run. Run from a checkout: PYTHONPATH=. python3 benchmarks/queue_stress.py …
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmbench.scheduler.queue import enqueue, noop_item  # noqa: E402
from vmbench.store.queue import Queue  # noqa: E402


def scratch_db(kind: str, folder: Path) -> tuple[str, callable]:
    """(database target, cleanup) — a new SQLite file, or a new database on the PostgreSQL server `kind`."""
    if kind == "sqlite":
        return str(folder / f"q-{uuid.uuid4().hex[:6]}.db"), lambda: None
    import sqlalchemy as sa

    name = f"qstress_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(kind, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return kind.rsplit("/", 1)[0] + "/" + name, drop


def start_worker(db: str, lease: float, stats: Path | None, slots: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vmbench.cli", "worker", "--db", db, "--device", "cpu", "--slots", str(slots),
           "--lease", str(lease), "--poll", "0.05"]
    if stats:
        cmd += ["--stats-file", str(stats)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def read_trace(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def outcome(db: str, trace: Path) -> tuple[list[dict], dict, list]:
    """What a finished pass left: the trace's lines, the queue's counts by status, every attempt."""
    with Queue(db) as q:
        return read_trace(trace), q.counts(), q.attempts()


def holds(db: str, pid: int) -> bool:
    """Whether worker `pid` holds a claim now (an attempt of its without an end)."""
    with Queue(db) as q:
        return any(a.ended_at is None and a.worker.endswith(f":{pid}") for a in q.attempts())


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def throughput(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db, cleanup = scratch_db(args.db, folder)
        try:
            trace = folder / "trace.jsonl"
            enqueue(db, [noop_item(f"t{i}", seconds=0.0, trace=str(trace)) for i in range(args.items)])
            t0 = time.perf_counter()
            procs = [start_worker(db, 30.0, folder / f"w{i}.json") for i in range(args.workers)]
            for p in procs:
                p.wait(timeout=3600)
            wall = time.perf_counter() - t0
            lat = [ms for i in range(args.workers) for ms in json.loads((folder / f"w{i}.json").read_text())["claim_ms"]]
            lines, counts, attempts = outcome(db, trace)
        finally:
            cleanup()
    starts: dict[int, int] = {}
    for x in lines:
        if x["what"] == "start":
            starts[x["item"]] = starts.get(x["item"], 0) + 1
    return {
        "db": "sqlite" if args.db == "sqlite" else "postgresql", "workers": args.workers, "items": args.items,
        "double_claims": sum(n - 1 for n in starts.values() if n > 1) + (len(attempts) - args.items),
        "lost_items": args.items - counts.get("done", 0), "claims": len(lat),
        "claim_ms_p50": round(pct(lat, 0.50), 2), "claim_ms_p99": round(pct(lat, 0.99), 2),
        "claim_ms_max": round(max(lat), 2), "wall_s": round(wall, 1), "items_per_s": round(args.items / wall, 1),
    }


def kill_trials(args) -> dict:
    rng = random.Random(args.seed)
    lost_total = twice_total = redone_total = 0
    takeovers: list[float] = []
    per_trial = []
    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(args.trials):
            folder = Path(tmp) / str(trial)
            folder.mkdir()
            db, cleanup = scratch_db(args.db, folder)
            try:
                trace = folder / "trace.jsonl"
                enqueue(db, [noop_item(f"k{trial}-{i}", seconds=args.hold, trace=str(trace)) for i in range(40)])
                procs = [start_worker(db, args.lease, None) for _ in range(4)]
                victim = rng.choice(procs)
                # A random point of the work: after 3..30 items are done, the first moment the victim holds one.
                goal = rng.randint(3, 30)
                while not (trace.exists() and trace.read_text().count('"end"') >= goal and holds(db, victim.pid)):
                    time.sleep(0.01)
                victim.kill()
                killed_at = time.time()
                for p in procs:
                    p.wait(timeout=600)
                lines, counts, attempts = outcome(db, trace)
            finally:
                cleanup()
            worker_of = {a.claim_token: a.worker for a in attempts}
            victim_name = next((w for w in worker_of.values() if w.endswith(f":{victim.pid}")), None)
            done_per_item: dict[int, int] = {}
            for a in attempts:
                if a.outcome == "done":
                    done_per_item[a.item_id] = done_per_item.get(a.item_id, 0) + 1
            starts: dict[int, list[tuple[float, str]]] = {}
            redone = 0  # the dead worker had finished the work but not recorded it: done again by the next holder
            for x in lines:
                if x["what"] == "start":
                    starts.setdefault(x["item"], []).append((x["t"], x["token"]))
                elif worker_of.get(x["token"]) == victim_name and x["token"] not in {
                        a.claim_token for a in attempts if a.outcome == "done"}:
                    redone += 1
            lost = 40 - counts.get("done", 0)
            twice = sum(1 for n in done_per_item.values() if n > 1)  # recorded done twice
            overlap = 0  # executions of one item that overlapped in time
            trial_takeovers = []
            for item, runs in starts.items():
                runs.sort()
                for (t0, tok0), (t1, _) in zip(runs, runs[1:]):
                    if worker_of.get(tok0) != victim_name or t1 < killed_at:
                        overlap += 1  # a repeat that was not the dead worker's item, or began before it died
                    else:
                        trial_takeovers.append(t1 - killed_at)
            lost_total += lost
            twice_total += twice + overlap
            takeovers += trial_takeovers
            redone_total += redone
            per_trial.append({"trial": trial, "lost": lost, "twice": twice + overlap, "redone": redone,
                              "taken_over": len(trial_takeovers)})
            print(json.dumps(per_trial[-1]), file=sys.stderr)
    return {"db": "sqlite" if args.db == "sqlite" else "postgresql", "trials": args.trials, "lease_s": args.lease,
            "items_lost": lost_total, "items_run_twice": twice_total, "claims_taken_over": len(takeovers),
            "work_redone_after_kill": redone_total,
            "takeover_s_median": round(statistics.median(takeovers), 2) if takeovers else None,
            "takeover_s_max": round(max(takeovers), 2) if takeovers else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "kill"])
    ap.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL server URL")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--lease", type=float, default=3.0, help="kill: the workers' lease (s)")
    ap.add_argument("--hold", type=float, default=0.2, help="kill: seconds each item holds its claim")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = throughput(args) if args.what == "throughput" else kill_trials(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
