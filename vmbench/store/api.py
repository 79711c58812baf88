"""The store's operations. Every write is its own short transaction, so a crash never leaves a half-written run."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from .db import make_engine
from .schema import RUN_KINDS, RUN_STATUSES, Metric, Result, Run, utcnow

# A running run on another host whose heartbeat is older than this is shown as interrupted.
STALE_AFTER = dt.timedelta(minutes=15)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_status(run: Run, now: dt.datetime | None = None) -> str:
    """The run's status as it really is: a `running` run whose process is gone is `interrupted`."""
    if run.status != "running":
        return run.status
    if run.host == socket.gethostname() and run.pid is not None:
        return "running" if _pid_alive(run.pid) else "interrupted"
    beat = run.heartbeat_at or run.started_at
    if beat is not None and (now or utcnow()) - beat > STALE_AFTER:
        return "interrupted"
    return "running"


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


class Store:
    """Results database. `Store(target)` opens (and migrates) a path or URL; `create=False` only reads."""

    def __init__(self, target: str, create: bool = True):
        self.target = target
        self.engine = make_engine(target, create=create)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- writes -------------------------------------------------------------------------------
    def create_run(self, kind: str, model: str, dataset: str | None, params: Mapping[str, Any], *,
                   recipe: str | None = None, seed: int | None = None, tags: Iterable[str] = (),
                   device: str | None = None, scan_backend: str | None = None, gpus: str | None = None,
                   env: Mapping[str, Any] | None = None, git_sha: str | None = None,
                   git_dirty: bool | None = None, parent_id: int | None = None,
                   checkpoint_dir: str | None = None) -> int:
        assert kind in RUN_KINDS, kind
        now = utcnow()
        run = Run(kind=kind, model=model, dataset=dataset, recipe=recipe, params=dict(params), status="running",
                  pid=os.getpid(), host=socket.gethostname(), gpus=gpus, device=device, scan_backend=scan_backend,
                  started_at=now, heartbeat_at=now, git_sha=git_sha, git_dirty=git_dirty, env=dict(env or {}),
                  seed=seed, tags=list(tags), parent_id=parent_id, checkpoint_dir=checkpoint_dir)
        with self.session() as s, s.begin():
            s.add(run)
        return run.id

    def heartbeat(self, run_id: int) -> None:
        with self.session() as s, s.begin():
            s.execute(sa.update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))

    def update_run(self, run_id: int, **fields: Any) -> None:
        with self.session() as s, s.begin():
            s.execute(sa.update(Run).where(Run.id == run_id).values(**fields))

    def log_metrics(self, run_id: int, values: Mapping[str, Any], *, epoch: int | None = None,
                    step: int | None = None) -> None:
        """Record one epoch's (or step's) metrics and refresh the heartbeat, in one transaction."""
        now = utcnow()
        with self.session() as s, s.begin():
            for key, v in values.items():
                if key in ("epoch", "step") or v is None or isinstance(v, (str, bool)):
                    continue
                s.add(Metric(run_id=run_id, epoch=epoch, step=step, key=key, value=_finite(v), time=now))
            s.execute(sa.update(Run).where(Run.id == run_id).values(heartbeat_at=now))

    def finish_run(self, run_id: int, status: str, results: Mapping[str, Any] | None = None,
                   error: str | None = None, **fields: Any) -> None:
        """Write final results and the final status together."""
        assert status in RUN_STATUSES and status != "running", status
        with self.session() as s, s.begin():
            for key, v in (results or {}).items():
                if v is None:
                    continue
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    s.merge(Result(run_id=run_id, key=key, value=_finite(v), text=None))
                else:
                    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                    s.merge(Result(run_id=run_id, key=key, value=None, text=text))
            s.execute(sa.update(Run).where(Run.id == run_id).values(
                status=status, error=error, ended_at=utcnow(), heartbeat_at=utcnow(), **fields))

    # ---- reads --------------------------------------------------------------------------------
    def get_run(self, run_id: int) -> Run | None:
        with self.session() as s:
            return s.scalars(sa.select(Run).where(Run.id == run_id).options(
                selectinload(Run.metrics), selectinload(Run.results))).first()

    def list_runs(self, *, kind: str | None = None, status: str | None = None, model: str | None = None,
                  dataset: str | None = None, limit: int | None = None) -> list[Run]:
        q = sa.select(Run).options(selectinload(Run.results)).order_by(Run.id.desc())
        if kind:
            q = q.where(Run.kind == kind)
        if model:
            q = q.where(Run.model == model)
        if dataset:
            q = q.where(Run.dataset == dataset)
        with self.session() as s:
            runs = list(s.scalars(q))
        if status:
            runs = [r for r in runs if effective_status(r) == status]
        return runs[:limit] if limit else runs

    def count_runs(self) -> int:
        with self.session() as s:
            return s.scalar(sa.select(sa.func.count(Run.id))) or 0


def results_dict(run: Run) -> dict[str, Any]:
    return {r.key: (r.value if r.text is None else r.text) for r in run.results}


def run_summary(run: Run) -> dict[str, Any]:
    """A plain dict of a run (JSON-ready)."""
    fmt = lambda t: t.isoformat(timespec="seconds") + "Z" if t else None  # noqa: E731
    return {
        "id": run.id, "kind": run.kind, "model": run.model, "dataset": run.dataset, "recipe": run.recipe,
        "status": effective_status(run), "stored_status": run.status, "error": run.error,
        "device": run.device, "scan_backend": run.scan_backend, "seed": run.seed, "tags": run.tags,
        "host": run.host, "pid": run.pid, "gpus": run.gpus, "started_at": fmt(run.started_at),
        "ended_at": fmt(run.ended_at), "git_sha": run.git_sha, "git_dirty": run.git_dirty,
        "params": run.params, "env": run.env, "results": results_dict(run),
    }
