"""The store's operations (`Store`): the one API that writes runs, metrics and results.

Every write is its own short transaction that takes the write lock when it begins (SQLite `BEGIN IMMEDIATE`,
so WAL never refuses it half-way with "database is locked"; busy_timeout then waits for the lock), upserts go
through the dialect's `INSERT … ON CONFLICT DO UPDATE`, and a transaction the database still answers "busy" is
retried a bounded number of times. A crash never leaves a half-written run.
"""
from __future__ import annotations

import json
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from .db import Reader
from .liveness import STALE_AFTER, effective_status, process_alive, process_started, stale_after  # noqa: F401
from .schema import RUN_KINDS, RUN_STATUSES, Metric, Run, utcnow
from .tables import results, run_results, run_results_rows, settings_columns

T = TypeVar("T")

WRITE_ATTEMPTS = 6  # a write the database still answers "busy" after busy_timeout is retried this many times


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _busy(exc: sa.exc.DBAPIError) -> bool:
    """Whether a failed statement may succeed when tried again (lock contention, not a real error)."""
    if getattr(exc.orig, "sqlite_errorname", None) in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in ("40001", "40P01", "55P03"):  # serialization failure, deadlock, lock not available
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


class Store(Reader):
    """Results database. `Store(target)` opens (and migrates) a path or URL; `create=False` never creates a
    missing SQLite file; `readonly=True` only reads (SQLite opened read-only)."""

    def __init__(self, target: str, create: bool = True, readonly: bool = False):
        super().__init__(target, create=create, readonly=readonly)
        self._writer = self.engine.execution_options(vmbench_begin_immediate=True)

    def session(self) -> Session:
        """A session for reading (writes go through `write`)."""
        return Session(self.engine, expire_on_commit=False)

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in one write transaction (BEGIN IMMEDIATE on SQLite), committed when it returns;
        retried from the start while the database answers busy (WRITE_ATTEMPTS tries in all)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with Session(self._writer, expire_on_commit=False) as s, s.begin():
                    return fn(s)
            except sa.exc.OperationalError as e:
                if not _busy(e) or attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _upsert_results(self, s: Session, rows: list[dict]) -> None:
        """Upsert `results` rows ({run_id, key, value, text}) and, in the same transaction, the `run_results`
        columns they set (store.tables)."""
        if not rows:
            return
        dialect = self.engine.dialect.name
        wide = run_results_rows(rows)
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(results).values(rows)
            s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "key"],
                                                 set_={"value": stmt.excluded.value, "text": stmt.excluded.text}))
            for run_id, cols in wide.items():
                stmt = insert(run_results).values(run_id=run_id, **cols)
                s.execute(stmt.on_conflict_do_update(index_elements=["run_id"],
                                                     set_={k: stmt.excluded[k] for k in cols}))
            return
        # other dialects: delete + insert / update inside the same transaction
        for row in rows:
            s.execute(sa.delete(results).where(results.c.run_id == row["run_id"], results.c.key == row["key"]))
        s.execute(sa.insert(results), rows)
        for run_id, cols in wide.items():
            if not s.execute(sa.update(run_results).where(run_results.c.run_id == run_id).values(**cols)).rowcount:
                s.execute(sa.insert(run_results).values(run_id=run_id, **cols))

    # ---- writes -------------------------------------------------------------------------------
    def create_run(self, kind: str, model: str, dataset: str | None, params: Mapping[str, Any], *,
                   recipe: str | None = None, seed: int | None = None, tags: Iterable[str] = (),
                   device: str | None = None, scan_backend: str | None = None, gpus: str | None = None,
                   env: Mapping[str, Any] | None = None, git_sha: str | None = None,
                   git_dirty: bool | None = None, parent_id: int | None = None,
                   checkpoint_dir: str | None = None, run_uuid: str | None = None) -> int:
        assert kind in RUN_KINDS, kind
        now = utcnow()
        run = Run(kind=kind, model=model, dataset=dataset, recipe=recipe, params=dict(params), status="running",
                  pid=os.getpid(), pid_started=process_started(), host=socket.gethostname(), gpus=gpus,
                  device=device, scan_backend=scan_backend, started_at=now, heartbeat_at=now, git_sha=git_sha,
                  git_dirty=git_dirty, env=dict(env or {}), seed=seed, tags=list(tags), parent_id=parent_id,
                  checkpoint_dir=checkpoint_dir, run_uuid=run_uuid or uuid.uuid4().hex, **settings_columns(params))
        self.write(lambda s: s.add(run))
        return run.id

    def heartbeat(self, run_id: int) -> None:
        self.write(lambda s: s.execute(sa.update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow())))

    def update_run(self, run_id: int, **fields: Any) -> None:
        if "params" in fields:
            fields.update(settings_columns(fields["params"]))
        self.write(lambda s: s.execute(sa.update(Run).where(Run.id == run_id).values(**fields)))

    def log_metrics(self, run_id: int, values: Mapping[str, Any], *, epoch: int | None = None,
                    step: int | None = None) -> None:
        """Record one epoch's (or step's) metrics and refresh the heartbeat, in one transaction."""
        now = utcnow()
        rows = [dict(run_id=run_id, epoch=epoch, step=step, key=key, value=_finite(v), time=now)
                for key, v in values.items()
                if key not in ("epoch", "step") and v is not None and not isinstance(v, (str, bool))]

        def tx(s: Session) -> None:
            if rows:
                s.execute(sa.insert(Metric.__table__), rows)
            s.execute(sa.update(Run).where(Run.id == run_id).values(heartbeat_at=now))

        self.write(tx)

    def finish_run(self, run_id: int, status: str, results: Mapping[str, Any] | None = None,
                   error: str | None = None, *, only_if_running: bool = False, **fields: Any) -> bool:
        """Write final results and the final status together (one transaction). With `only_if_running`, nothing
        is written unless the stored status is still `running`; returns whether it was written."""
        assert status in RUN_STATUSES and status != "running", status
        rows = []
        for key, v in (results or {}).items():
            if v is None:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append(dict(run_id=run_id, key=key, value=_finite(v), text=None))
            else:
                text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                rows.append(dict(run_id=run_id, key=key, value=None, text=text))

        def tx(s: Session) -> bool:
            now = utcnow()
            q = sa.update(Run).where(Run.id == run_id)
            if only_if_running:
                q = q.where(Run.status == "running")
            done = s.execute(q.values(status=status, error=error, ended_at=now, heartbeat_at=now, **fields))
            if done.rowcount == 0:
                return False
            self._upsert_results(s, rows)
            return True

        return self.write(tx)

    def claim_run(self, run_id: int, allowed: tuple[str, ...], what: str = "resumed") -> Run:
        """Atomically take run `run_id` over for this process (status `running`, this pid / host): a
        compare-and-swap on its status inside one write transaction (row-locked on PostgreSQL). ValueError
        (one line, nothing written) when the run is missing or its effective status is not in `allowed` — e.g.
        another process claimed it first."""

        def tx(s: Session) -> Run:
            run = s.scalars(sa.select(Run).where(Run.id == run_id).with_for_update()).first()
            if run is None:
                raise ValueError(f"no run {run_id} in {self.target}")
            status = effective_status(run)
            if status == "running":
                raise ValueError(f"run {run_id} is running (pid {run.pid} on {run.host}); it cannot be {what} "
                                 "while it runs")
            if status not in allowed:
                raise ValueError(f"run {run_id} is {status}; only {' or '.join(allowed)} runs can be {what}")
            now = utcnow()
            s.execute(sa.update(Run).where(Run.id == run_id, Run.status == run.status).values(
                status="running", pid=os.getpid(), pid_started=process_started(), host=socket.gethostname(),
                heartbeat_at=now, ended_at=None, error=None))
            return run

        return self.write(tx)

    # ---- reads --------------------------------------------------------------------------------
    def get_run(self, run_id: int) -> Run | None:
        with self.session() as s:
            return s.scalars(sa.select(Run).where(Run.id == run_id).options(
                selectinload(Run.metrics), selectinload(Run.results))).first()

    def get_run_by_uuid(self, run_uuid: str) -> Run | None:
        with self.session() as s:
            return s.scalars(sa.select(Run).where(Run.run_uuid == run_uuid)).first()

    def list_runs(self, *, kind: str | None = None, status: str | None = None, model: str | None = None,
                  dataset: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs newest first, filtered and limited in SQL. `status` is the effective status: the stored one,
        except that a stored `running` run whose process is gone counts as `interrupted` — those candidates are
        read page by page and checked until `limit` runs are found."""
        q = sa.select(Run).options(selectinload(Run.results)).order_by(Run.id.desc())
        if kind:
            q = q.where(Run.kind == kind)
        if model:
            q = q.where(Run.model == model)
        if dataset:
            q = q.where(Run.dataset == dataset)
        with self.session() as s:
            if status is None or status not in ("running", "interrupted"):
                if status is not None:
                    q = q.where(Run.status == status)
                return list(s.scalars(q.limit(limit) if limit else q))
            stored = ("running",) if status == "running" else ("running", "interrupted")
            q = q.where(Run.status.in_(stored))
            out: list[Run] = []
            page, offset = max(limit or 0, 100), 0
            while True:
                batch = list(s.scalars(q.limit(page).offset(offset)))
                out.extend(r for r in batch if effective_status(r) == status)
                if (limit and len(out) >= limit) or len(batch) < page:
                    return out[:limit] if limit else out
                offset += page

    def count_runs(self) -> int:
        with self.session() as s:
            return s.scalar(sa.select(sa.func.count(Run.id))) or 0


def results_dict(run: Run) -> dict[str, Any]:
    return {r.key: (r.value if r.text is None else r.text) for r in run.results}


def run_summary(run: Run) -> dict[str, Any]:
    """A plain dict of a run (JSON-ready)."""
    fmt = lambda t: t.isoformat(timespec="seconds") + "Z" if t else None  # noqa: E731
    return {
        "id": run.id, "uuid": run.run_uuid, "kind": run.kind, "model": run.model, "dataset": run.dataset,
        "recipe": run.recipe, "status": effective_status(run), "stored_status": run.status, "error": run.error,
        "device": run.device, "scan_backend": run.scan_backend, "seed": run.seed, "tags": run.tags,
        "host": run.host, "pid": run.pid, "gpus": run.gpus, "started_at": fmt(run.started_at),
        "ended_at": fmt(run.ended_at), "git_sha": run.git_sha, "git_dirty": run.git_dirty,
        "checkpoint_dir": run.checkpoint_dir, "params": run.params, "env": run.env, "results": results_dict(run),
    }
