"""Concurrent writers on one SQLite file: N processes, each creating runs, logging three epochs of metrics and
finishing them (with results) for T seconds, as many `vmbench run`s sharing a database do.

    python benchmarks/faults/writers.py --procs 16 --seconds 60 [--db PATH] [--json]

Each writer reports the runs it finished and every exception it met; afterwards the database is read back:
`lock_errors` counts exceptions (any "database is locked" included), `lost_rows` counts runs a writer finished
that are not `completed` with their results and metrics in the database, `runs_left_running` runs whose
finish never landed (they would show `running` forever). All must be 0.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _writer(db: str, seconds: float, out: str, start_at: float) -> None:
    from vmbench.store import Store

    store = Store(db)
    done, errors = [], []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    while time.time() < end:
        try:
            rid = store.create_run("train", "m", "d", {"writer": os.getpid()})
            for epoch in (1, 2, 3):
                store.log_metrics(rid, {"train_loss": 1.0 / epoch, "val_top1": 10.0 * epoch}, epoch=epoch)
            store.finish_run(rid, "completed", {"top1": 30.0, "scan_backend": "torch"})
            done.append(rid)
        except Exception as e:  # counted: the figure is the number of these
            errors.append(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    store.close()
    Path(out).write_text(json.dumps({"done": done, "errors": errors}))


def measure(db: str, procs: int, seconds: float) -> dict:
    """Run the writers; the figures as a dict."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from vmbench.store import Store
    from vmbench.store.schema import Metric, Result, Run

    Store(db).close()  # migrated once, before the race
    tmp = tempfile.mkdtemp(prefix="vmbench-writers-")
    ctx = mp.get_context("spawn")
    start_at = time.time() + 3.0 + 0.3 * procs  # every process imported and connected before the start
    ps = [ctx.Process(target=_writer, args=(db, seconds, f"{tmp}/{i}.json", start_at)) for i in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(seconds + 600)
    reports = [json.loads(Path(f"{tmp}/{i}.json").read_text()) for i in range(procs)]
    done = [rid for r in reports for rid in r["done"]]
    errors = [e for r in reports for e in r["errors"]]
    engine = sa.create_engine(f"sqlite:///{db}")  # read back without the store's API (works for any vmbench)
    with Session(engine) as s:
        completed = set(s.scalars(sa.select(Run.id).where(Run.status == "completed")))
        with_results = set(s.scalars(sa.select(Result.run_id).where(Result.key == "top1")))
        # the listing columns, written in the results' transaction (a vmbench without them: the results alone)
        listed = (set(s.scalars(sa.text("SELECT run_id FROM run_results WHERE top1 IS NOT NULL")))
                  if sa.inspect(s.connection()).has_table("run_results") else with_results)
        metric_rows = dict(s.execute(sa.select(Metric.run_id, sa.func.count()).group_by(Metric.run_id)).all())
        total = s.scalar(sa.select(sa.func.count(Run.id)))
        left_running = s.scalar(sa.select(sa.func.count(Run.id)).where(Run.status == "running"))
    engine.dispose()
    lost = [rid for rid in done if rid not in completed or rid not in with_results or rid not in listed
            or metric_rows.get(rid) != 6]
    return dict(procs=procs, seconds=seconds, runs_finished=len(done), runs_in_db=total,
                finishes_per_s=round(len(done) / seconds, 1), lock_errors=sum("locked" in e for e in errors),
                other_errors=sum("locked" not in e for e in errors), lost_rows=len(lost),
                runs_left_running=left_running,
                exit_codes=sorted({p.exitcode for p in ps}), first_errors=errors[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--db", default=None, help="database file (default: a new one in a temporary folder)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    db = a.db or str(Path(tempfile.mkdtemp(prefix="vmbench-writers-db-")) / "x.db")
    out = measure(db, a.procs, a.seconds)
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0 if out["lock_errors"] == out["other_errors"] == out["lost_rows"] == out["runs_left_running"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
