"""Deleting runs and their checkpoints: `vmbench rm` (whole runs, or only their checkpoints) and `vmbench gc`
(checkpoints of finished runs, best.pt kept). Entry points: `plan_rm` / `plan_gc` (what would go, in bytes),
then `apply(store, plan)`.

Safety rules:
* A running run is never touched: each run is re-checked and deleted inside one write transaction
  (SQLite `BEGIN IMMEDIATE`; PostgreSQL `SELECT … FOR UPDATE` on its row) that also covers deleting its files, so
  a `resume` that claims the run in between waits for the transaction or is seen as running and skipped.
* Only the folder stored on the run (`runs.checkpoint_dir`) is looked at, and in it only vmbench's own files
  (last.pt, last.prev.pt, best.pt, their sidecars and temp files, and `*.log` when the whole run goes), never
  through a symlink; never a recursive delete: the folder itself is removed only once empty.
* Database rows go in the same transaction (metrics and results cascade; runs that resumed from a deleted run
  keep their rows, their parent link cleared).
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import os
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..store import Run, Store, effective_status
from ..store.schema import utcnow

__all__ = ["Item", "Plan", "plan_rm", "plan_gc", "apply", "parse_age", "human_bytes", "GC_STATUSES"]

# What the trainer writes in a run's checkpoint folder (vmbench.checkpoint: LAST, PREV, BEST, their sidecars and
# the temp files of an interrupted write), by name: a folder recorded on a run is never emptied of other files.
_CHECKPOINT_NAMES = ("last.pt", "last.prev.pt", "best.pt")
CHECKPOINT_PATTERNS = (*_CHECKPOINT_NAMES, *(f"{n}.*" for n in _CHECKPOINT_NAMES),
                       *(f".{n}.*.tmp" for n in _CHECKPOINT_NAMES))
RUN_FILE_PATTERNS = CHECKPOINT_PATTERNS + ("*.log",)  # everything of a run that `rm` removes with it
KEEP_BEST = ("best.pt", "best.pt.*")
# gc's default: runs that are over. Interrupted runs are meant to be resumed; they go only when asked for.
GC_STATUSES = ("completed", "failed", "diverged")


@dataclass
class Item:
    """One run in a plan: what goes (its row, when `delete_run`; the files listed) and how many bytes."""

    run_id: int
    model: str
    status: str
    delete_run: bool
    checkpoint_dir: str | None
    files: list[str] = field(default_factory=list)
    bytes: int = 0

    def to_dict(self) -> dict:
        return dict(run_id=self.run_id, model=self.model, status=self.status, delete_run=self.delete_run,
                    checkpoint_dir=self.checkpoint_dir, files=self.files, bytes=self.bytes)


@dataclass
class Plan:
    items: list[Item]
    patterns: tuple[str, ...]
    keep: tuple[str, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def to_dict(self) -> dict:
        return dict(items=[i.to_dict() for i in self.items], bytes=self.bytes, runs=len(self.items),
                    files=sum(len(i.files) for i in self.items))


def parse_age(text: str) -> dt.timedelta:
    """`30d`, `12h`, `2w`, `90m` → a timedelta; ValueError (one line) otherwise."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    t = text.strip().lower()
    if len(t) < 2 or t[-1] not in units or not t[:-1].isdigit():
        raise ValueError(f"--older-than must be a number and a unit (m, h, d, w), e.g. 30d; got {text!r}")
    return dt.timedelta(**{units[t[-1]]: int(t[:-1])})


def _files(folder: str | None, patterns, keep=()) -> tuple[list[str], int]:
    """(paths, bytes) of the files directly in `folder` that match `patterns` and none of `keep`."""
    if not folder:
        return [], 0
    try:
        entries = list(os.scandir(folder))
    except OSError:  # gone already, or not a folder
        return [], 0
    out, total = [], 0
    for e in sorted(entries, key=lambda e: e.name):
        if not e.is_file(follow_symlinks=False):
            continue
        if any(fnmatch.fnmatchcase(e.name, p) for p in patterns) and \
                not any(fnmatch.fnmatchcase(e.name, k) for k in keep):
            out.append(e.path)
            total += e.stat(follow_symlinks=False).st_size
    return out, total


def _item(run: Run, delete_run: bool, patterns, keep) -> Item:
    files, size = _files(run.checkpoint_dir, patterns, keep)
    return Item(run.id, run.model, effective_status(run), delete_run, run.checkpoint_dir, files, size)


def plan_rm(store: Store, run_ids: list[int], checkpoints_only: bool = False) -> Plan:
    """What `vmbench rm RUN…` deletes: the runs (rows and files), or with `checkpoints_only` their checkpoint
    files (best.pt included) and nothing else. ValueError (nothing deleted) for an unknown id or a running run."""
    patterns = CHECKPOINT_PATTERNS if checkpoints_only else RUN_FILE_PATTERNS
    items = []
    with store.session() as s:
        runs = {r.id: r for r in s.scalars(sa.select(Run).where(Run.id.in_(run_ids)))}
    for rid in dict.fromkeys(run_ids):
        run = runs.get(rid)
        if run is None:
            raise ValueError(f"no run {rid} in {store.target}; nothing deleted")
        if effective_status(run) == "running":
            raise ValueError(f"run {rid} is running; nothing deleted (stop it first)")
        items.append(_item(run, not checkpoints_only, patterns, ()))
    return Plan(items, patterns)


def plan_gc(store: Store, statuses=GC_STATUSES, older_than: dt.timedelta | None = None,
            keep_best: bool = True, now: dt.datetime | None = None) -> Plan:
    """What `vmbench gc` deletes: checkpoint files of the runs with one of `statuses` (as they really are: a
    dead `running` run counts as interrupted) that ended (or, never ended, started) more than `older_than` ago;
    best.pt (and its sidecars) kept unless `keep_best` is false. Runs stay; so do files that are not
    checkpoints. Runs that are running are never planned."""
    keep = KEEP_BEST if keep_best else ()
    cutoff = (now or utcnow()) - older_than if older_than is not None else None
    items = []
    with store.session() as s:
        runs = list(s.scalars(sa.select(Run).where(Run.checkpoint_dir.is_not(None)).order_by(Run.id)))
    for run in runs:
        status = effective_status(run)
        if status == "running" or status not in statuses:
            continue
        when = run.ended_at or run.heartbeat_at or run.started_at
        if cutoff is not None and (when is None or when > cutoff):
            continue
        item = _item(run, False, CHECKPOINT_PATTERNS, keep)
        if item.files:
            items.append(item)
    return Plan(items, CHECKPOINT_PATTERNS, keep)


def _locked_run(conn: sa.Connection, run_id: int):
    q = sa.select(Run.__table__).where(Run.id == run_id)
    if conn.dialect.name != "sqlite":
        q = q.with_for_update()
    return conn.execute(q).first()


def apply(store: Store, plan: Plan) -> dict:
    """Carry out `plan`, one run per write transaction: the run is re-read under the lock, left alone (and
    listed in `skipped`) if it is running now, else its files are deleted and, for `rm`, its rows. Returns
    {runs, files, bytes, skipped, errors}."""
    done = dict(runs=0, files=0, bytes=0, skipped=[], errors=[])
    for item in plan.items:
        conn = store.engine.connect().execution_options(vmbench_begin_immediate=True)
        try:
            with conn.begin():
                row = _locked_run(conn, item.run_id)
                if row is None:
                    done["skipped"].append(f"run {item.run_id}: already gone")
                    continue
                if effective_status(Run(**row._mapping)) == "running":
                    done["skipped"].append(f"run {item.run_id}: running now; left alone")
                    continue
                if item.delete_run:  # rows first: a refusal (a table that still points at the run) keeps the files
                    conn.execute(sa.update(Run.__table__).where(Run.parent_id == item.run_id).values(parent_id=None))
                    conn.execute(sa.delete(Run.__table__).where(Run.id == item.run_id))
                # Re-list under the lock: only what is there now and matches the plan's patterns.
                files, _ = _files(row.checkpoint_dir, plan.patterns, plan.keep)
                for path in files:
                    try:
                        size = os.stat(path, follow_symlinks=False).st_size
                        os.unlink(path)
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        done["errors"].append(f"cannot delete {path}: {e.strerror or e}")
                        continue
                    done["files"] += 1
                    done["bytes"] += size
                if item.delete_run and row.checkpoint_dir:
                    try:
                        os.rmdir(row.checkpoint_dir)  # only when empty: never a recursive delete
                    except OSError:
                        pass
                done["runs"] += 1
        finally:
            conn.close()
    return done


def human_bytes(n: int) -> str:
    """1536 → '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
