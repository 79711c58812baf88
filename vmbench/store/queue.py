"""The run queue in the results database: planned runs (`queue_items`) and every attempt at one
(`queue_attempts`). Entry point: `Queue(target)`.

Claims are leases: `claim` marks one item running under a fresh token until `lease_until`; the holder renews the
lease (`renew`) and every later write about the item names the token, so a holder whose lease expired and was
taken over can no longer change it (fencing). A claim is one write transaction: `BEGIN IMMEDIATE` on SQLite,
`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, so two workers never get the same item. The scheduler
(vmbench.scheduler.queue / worker) is the only writer; `queue ls` only reads.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import make_engine
from .schema import Base, utcnow

ITEM_KINDS = ("train", "noop")
ITEM_STATUSES = ("queued", "running", "done", "failed", "cancelled")
# How an attempt ended: done; failed (a user error, not retried); retry (an infrastructure failure, queued again
# after a back-off); stopped (the worker was asked to stop: queued again at once); lost (its lease expired);
# requeued (SLURM time limit / preemption: the job requeued itself); busy (the item's run still has a live process:
# queued again after a back-off, not a failure).
OUTCOMES = ("done", "failed", "retry", "stopped", "busy", "lost", "requeued", "cancelled")


class QueueItem(Base):
    __tablename__ = "queue_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec_hash: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str | None] = mapped_column(String(128))
    dataset: Mapped[str | None] = mapped_column(String(256))
    args: Mapped[list[str]] = mapped_column(JSON)  # the arguments of `vmbench run` (noop: {"seconds": s})
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    gpus: Mapped[int] = mapped_column(Integer)  # GPUs (CPU slots) one attempt needs
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer)  # claims so far
    failures: Mapped[int] = mapped_column(Integer)  # attempts that ended in an infrastructure failure or lost lease
    not_before: Mapped[dt.datetime] = mapped_column(DateTime)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    worker: Mapped[str | None] = mapped_column(String(256))
    host: Mapped[str | None] = mapped_column(String(256))
    gpu_ids: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    slurm_job_id: Mapped[str | None] = mapped_column(String(64))
    log_path: Mapped[str | None] = mapped_column(String(1024))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class QueueAttempt(Base):
    __tablename__ = "queue_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("queue_items.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    claim_token: Mapped[str] = mapped_column(String(36))
    worker: Mapped[str] = mapped_column(String(256))
    host: Mapped[str] = mapped_column(String(256))
    gpu_ids: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # run | resume | noop
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(Integer)
    slurm_job_id: Mapped[str | None] = mapped_column(String(64))


class Claim:
    """What `claim` hands a worker: the item's id, token, kind, arguments, GPUs and attempt number."""

    def __init__(self, item, token: str):
        get = item.get if isinstance(item, dict) else lambda k: getattr(item, k)
        self.item_id, self.token, self.kind = get("id"), token, get("kind")
        self.args, self.gpus, self.attempt = get("args"), get("gpus"), get("attempts")
        self.run_id, self.failures, self.slurm_job_id = get("run_id"), get("failures"), get("slurm_job_id")
        self.spec = dict(get("spec") or {})

    def __repr__(self) -> str:
        return f"Claim(item={self.item_id}, attempt={self.attempt}, token={self.token[:8]})"


class Queue:
    """The queue tables of one database (path or URL); `create=False` only reads."""

    def __init__(self, target: str, create: bool = True):
        self.target = target
        self.engine = make_engine(target, create=create)
        self.dialect = self.engine.dialect.name
        db_file = self.engine.url.database if self.dialect == "sqlite" else None
        self._lock_path = f"{db_file}.queue-lock" if db_file and db_file != ":memory:" else None
        self._lock_fd: int | None = None

    def close(self) -> None:
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self) -> Session:
        """A session whose transaction takes the write lock first (SQLite BEGIN IMMEDIATE)."""
        conn_opts = {"vmbench_begin_immediate": True}
        return Session(self.engine.execution_options(**conn_opts), expire_on_commit=False)

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- planning -----------------------------------------------------------------------------------------
    def add(self, items: list[Mapping[str, Any]]) -> list[tuple[int, bool]]:
        """Enqueue items (dicts with kind, spec_hash, model, dataset, args, spec, gpus) in one transaction;
        returns (id, added) per item: an item whose spec_hash is already queued is not added again."""
        now = utcnow()
        out = []
        with self._locked(), self._write() as s, s.begin():
            for it in items:
                assert it["kind"] in ITEM_KINDS, it["kind"]
                known = s.scalar(sa.select(QueueItem.id).where(QueueItem.spec_hash == it["spec_hash"]))
                if known is not None:
                    out.append((known, False))
                    continue
                row = QueueItem(kind=it["kind"], spec_hash=it["spec_hash"], model=it.get("model"),
                                dataset=it.get("dataset"), args=it["args"], spec=dict(it.get("spec") or {}),
                                gpus=int(it.get("gpus", 1)), status="queued", attempts=0, failures=0,
                                not_before=now, created_at=now)
                s.add(row)
                s.flush()
                out.append((row.id, True))
        return out

    # ---- claims -------------------------------------------------------------------------------------------
    def claim(self, worker: str, *, lease_s: float, max_gpus: int = 1, max_failures: int = 3,
              slots: list[str] | None = None, kinds: tuple[str, ...] = ITEM_KINDS) -> Claim | None:
        """Claim the oldest item that is due (queued and past its back-off, or running with an expired lease) and
        needs at most `max_gpus`; None when there is none. The attempt records the first `gpus` of `slots` (the
        GPUs or CPU slots it gets). An expired claim is recorded as a lost attempt; an item that has failed
        `max_failures` times is marked failed instead of claimed. One short write transaction (Core SQL)."""
        items, attempts = QueueItem.__table__, QueueAttempt.__table__
        now = utcnow()
        due = sa.or_(sa.and_(items.c.status == "queued", items.c.not_before <= now),
                     sa.and_(items.c.status == "running", items.c.lease_until < now))
        q = (sa.select(items).where(due, items.c.gpus <= max_gpus, items.c.kind.in_(kinds))
             .order_by(items.c.id).limit(1))
        if self.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        host = socket.gethostname()
        with self._locked(), self._conn() as conn, conn.begin():
            while True:
                row = conn.execute(q).mappings().first()
                if row is None:
                    return None
                item = dict(row)
                if item["status"] == "running":  # its holder is gone: the lease ran out
                    self._close_attempt(conn, item["id"], item["claim_token"], "lost", run_id=item["run_id"],
                                        error=f"lease expired (worker {item['worker']})")
                    item["failures"] += 1
                if item["failures"] >= max_failures:
                    last = f"; last: {item['error']}" if item["error"] else ""
                    conn.execute(sa.update(items).where(items.c.id == item["id"]).values(
                        status="failed", ended_at=now, claim_token=None, lease_until=None, failures=item["failures"],
                        error=f"gave up after {item['failures']} failed attempts{last}"))
                    continue
                token = str(uuid.uuid4())
                gpu_ids = ",".join(slots[:item["gpus"]]) if slots else None
                item.update(status="running", claim_token=token, attempts=item["attempts"] + 1)
                conn.execute(sa.update(items).where(items.c.id == item["id"]).values(
                    status="running", claim_token=token, lease_until=now + dt.timedelta(seconds=lease_s),
                    worker=worker, host=host, gpu_ids=gpu_ids, claimed_at=now, attempts=item["attempts"],
                    failures=item["failures"]))
                conn.execute(sa.insert(attempts).values(
                    item_id=item["id"], attempt=item["attempts"], claim_token=token, worker=worker, host=host,
                    gpu_ids=gpu_ids, action="noop" if item["kind"] == "noop" else "pending", started_at=now))
                return Claim(item, token)

    @contextlib.contextmanager
    def _locked(self):
        """Around every write transaction on a SQLite file: the queue's writers first line up on an flock of a
        file beside the database (`<db>.queue-lock`). The kernel hands the lock to the next waiter the moment it
        is free, where SQLite's busy handler would poll in growing sleeps: that polling, not the work, made the
        claim latency's tail with 8 workers. The transaction itself still takes SQLite's write lock (BEGIN
        IMMEDIATE) against the other writers (runs)."""
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _conn(self):
        """A connection whose transactions take the write lock first (SQLite BEGIN IMMEDIATE)."""
        return self.engine.connect().execution_options(vmbench_begin_immediate=True)

    @staticmethod
    def _close_attempt(conn, item_id: int, token: str | None, outcome: str, *, run_id: int | None = None,
                       exit_code: int | None = None, error: str | None = None) -> None:
        t = QueueAttempt.__table__
        conn.execute(sa.update(t).where(t.c.item_id == item_id, t.c.claim_token == token, t.c.ended_at.is_(None))
                     .values(ended_at=utcnow(), outcome=outcome, exit_code=exit_code, error=error, run_id=run_id))

    def _end_attempt(self, s: Session, item: QueueItem, outcome: str, *, exit_code: int | None = None,
                     error: str | None = None) -> None:
        s.execute(sa.update(QueueAttempt).where(QueueAttempt.item_id == item.id,
                                                QueueAttempt.claim_token == item.claim_token,
                                                QueueAttempt.ended_at.is_(None))
                  .values(ended_at=utcnow(), outcome=outcome, exit_code=exit_code, error=error,
                          run_id=item.run_id))

    def _held(self, s: Session, item_id: int, token: str) -> QueueItem | None:
        q = sa.select(QueueItem).where(QueueItem.id == item_id, QueueItem.claim_token == token,
                                       QueueItem.status == "running")
        if self.dialect == "postgresql":
            q = q.with_for_update()
        return s.scalars(q).first()

    def renew(self, item_id: int, token: str, lease_s: float) -> bool:
        """Extend the lease; False when the claim is no longer this token's (taken over, cancelled)."""
        items = QueueItem.__table__
        with self._locked(), self._conn() as conn, conn.begin():
            res = conn.execute(sa.update(items)
                               .where(items.c.id == item_id, items.c.claim_token == token, items.c.status == "running")
                               .values(lease_until=utcnow() + dt.timedelta(seconds=lease_s)))
            return res.rowcount == 1

    def started(self, item_id: int, token: str, action: str, **fields: Any) -> bool:
        """Record how the attempt runs (action run / resume / noop, gpu_ids, slurm_job_id, log_path)."""
        with self._locked(), self._write() as s, s.begin():
            item = self._held(s, item_id, token)
            if item is None:
                return False
            for k in ("slurm_job_id", "log_path", "gpu_ids"):
                if k in fields:
                    setattr(item, k, fields[k])
            s.execute(sa.update(QueueAttempt).where(QueueAttempt.item_id == item_id,
                                                    QueueAttempt.claim_token == token,
                                                    QueueAttempt.ended_at.is_(None))
                      .values(action=action, **{k: v for k, v in fields.items() if k in ("slurm_job_id", "gpu_ids")}))
            return True

    def link_run(self, item_id: int, token: str, run_id: int) -> bool:
        with self._locked(), self._write() as s, s.begin():
            item = self._held(s, item_id, token)
            if item is None:
                return False
            item.run_id = run_id
            return True

    def finish(self, item_id: int, token: str, outcome: str, *, exit_code: int | None = None,
               error: str | None = None, backoff_s: float = 0.0, max_failures: int = 3,
               run_id: int | None = None) -> str | None:
        """End the attempt held by `token` with `outcome` (done, failed, retry, stopped); returns the item's new
        status, or None when the token no longer holds it (nothing written)."""
        assert outcome in OUTCOMES, outcome
        items = QueueItem.__table__
        now = utcnow()
        q = sa.select(items.c.failures, items.c.run_id).where(items.c.id == item_id, items.c.claim_token == token,
                                                              items.c.status == "running")
        if self.dialect == "postgresql":
            q = q.with_for_update()
        with self._locked(), self._conn() as conn, conn.begin():
            row = conn.execute(q).first()
            if row is None:
                return None
            run_id = run_id if run_id is not None else row.run_id
            failures = row.failures + (outcome == "retry")
            values = dict(run_id=run_id, failures=failures, error=error if outcome != "done" else None,
                          claim_token=None, lease_until=None)
            if outcome == "done":
                values.update(status="done", ended_at=now)
            elif outcome == "failed" or (outcome == "retry" and failures >= max_failures):
                values.update(status="failed", ended_at=now)
                if outcome == "retry":
                    values["error"] = f"gave up after {failures} failed attempts; last: {error}"
            else:  # retry or busy (after a back-off), stopped (at once)
                values.update(status="queued", not_before=now + dt.timedelta(
                    seconds=backoff_s if outcome in ("retry", "busy") else 0.0))
            self._close_attempt(conn, item_id, token, outcome, run_id=run_id, exit_code=exit_code, error=error)
            conn.execute(sa.update(items).where(items.c.id == item_id).values(**values))
            return values["status"]

    def attempt_event(self, item_id: int, token: str, outcome: str, error: str | None = None,
                      slurm_job_id: str | None = None) -> bool:
        """Close the current attempt row with `outcome` and open the next one under the same claim (a SLURM job
        that requeued itself and runs again)."""
        now = utcnow()
        with self._locked(), self._write() as s, s.begin():
            item = self._held(s, item_id, token)
            if item is None:
                return False
            self._end_attempt(s, item, outcome, error=error)
            item.attempts += 1
            s.add(QueueAttempt(item_id=item.id, attempt=item.attempts, claim_token=token, worker=item.worker or "",
                               host=socket.gethostname(), gpu_ids=item.gpu_ids, action="resume", started_at=now,
                               slurm_job_id=slurm_job_id))
            return True

    # ---- user commands ------------------------------------------------------------------------------------
    def cancel(self, item_id: int) -> str:
        """Cancel a queued or running item (a running one's holder notices at its next renewal); returns the
        status it had. ValueError when there is no such item or it has ended."""
        with self._locked(), self._write() as s, s.begin():
            item = _item_in(s, item_id, ("queued", "running"), "cancelled")
            was = item.status
            if was == "running":
                self._end_attempt(s, item, "cancelled", error="cancelled")
            item.status, item.ended_at, item.claim_token, item.lease_until = "cancelled", utcnow(), None, None
            return was

    def retry(self, item_id: int) -> None:
        """Queue a failed or cancelled item again, its failure count reset. ValueError otherwise."""
        with self._locked(), self._write() as s, s.begin():
            item = _item_in(s, item_id, ("failed", "cancelled"), "retried")
            item.status, item.failures, item.not_before, item.ended_at = "queued", 0, utcnow(), None

    def prune(self, statuses: tuple[str, ...]) -> int:
        """Delete items in `statuses` (and their attempts); returns how many."""
        with self._locked(), self._write() as s, s.begin():
            ids = list(s.scalars(sa.select(QueueItem.id).where(QueueItem.status.in_(statuses))))
            if ids:
                s.execute(sa.delete(QueueAttempt).where(QueueAttempt.item_id.in_(ids)))
                s.execute(sa.delete(QueueItem).where(QueueItem.id.in_(ids)))
            return len(ids)

    # ---- reads --------------------------------------------------------------------------------------------
    def items(self, status: str | None = None) -> list[QueueItem]:
        q = sa.select(QueueItem).order_by(QueueItem.id)
        if status:
            q = q.where(QueueItem.status == status)
        with self._read() as s:
            return list(s.scalars(q))

    def get(self, item_id: int) -> QueueItem | None:
        with self._read() as s:
            return s.get(QueueItem, item_id)

    def attempts(self, item_id: int | None = None) -> list[QueueAttempt]:
        q = sa.select(QueueAttempt).order_by(QueueAttempt.id)
        if item_id is not None:
            q = q.where(QueueAttempt.item_id == item_id)
        with self._read() as s:
            return list(s.scalars(q))

    def counts(self) -> dict[str, int]:
        with self._read() as s:
            rows = s.execute(sa.select(QueueItem.status, sa.func.count()).group_by(QueueItem.status))
            return {k: v for k, v in rows}


def item_summary(item: QueueItem, now: dt.datetime | None = None) -> dict[str, Any]:
    """A plain dict of a queue item (JSON-ready); a running item whose lease ran out is shown as `lost`."""
    fmt = lambda t: t.isoformat(timespec="seconds") + "Z" if t else None  # noqa: E731
    status = item.status
    if status == "running" and item.lease_until is not None and item.lease_until < (now or utcnow()):
        status = "lost"
    return {
        "id": item.id, "kind": item.kind, "model": item.model, "dataset": item.dataset, "status": status,
        "stored_status": item.status, "attempts": item.attempts, "failures": item.failures, "gpus": item.gpus,
        "worker": item.worker, "host": item.host, "gpu_ids": item.gpu_ids, "since": fmt(item.claimed_at),
        "lease_until": fmt(item.lease_until), "not_before": fmt(item.not_before), "run_id": item.run_id,
        "slurm_job_id": item.slurm_job_id, "log_path": item.log_path, "error": item.error,
        "spec_hash": item.spec_hash, "args": item.args, "created_at": fmt(item.created_at),
        "ended_at": fmt(item.ended_at),
    }


def _item_in(s, item_id: int, statuses: tuple[str, str], done_to_it: str) -> QueueItem:
    """The queue item `item_id`, inside the caller's write transaction; ValueError when there is none or its status
    is not one of `statuses` (the message says which items can be `done_to_it`)."""
    item = s.get(QueueItem, item_id)
    if item is None:
        raise ValueError(f"no queue item {item_id}")
    if item.status not in statuses:
        raise ValueError(f"queue item {item_id} is {item.status}; only {statuses[0]} or {statuses[1]} items can be "
                         f"{done_to_it}")
    return item
