"""Opening the results database: SQLite (WAL + busy_timeout) or any SQLAlchemy URL (PostgreSQL on clusters).

`make_engine(target, create, readonly)` is the entry point; `Reader` wraps it for reading commands. Write
transactions ask for `BEGIN IMMEDIATE` through the execution option `vmbench_begin_immediate=True` (store.api does
for every write); `readonly` opens a SQLite file with `mode=ro` (and `immutable=1` where even the WAL's shared
memory cannot be made: a read-only folder).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from .migrations import migrate

# How long a statement waits for another writer's lock; `$VMBENCH_BUSY_TIMEOUT_MS` overrides.
BUSY_TIMEOUT_MS = int(os.environ.get("VMBENCH_BUSY_TIMEOUT_MS") or 10_000)


class StoreError(ValueError):
    """The database cannot be opened or written (a user-facing problem: bad path, permissions)."""


def is_url(target: str) -> bool:
    return "://" in target


def _sqlite_hooks(engine: sa.Engine, readonly: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin
        # (so that writes can ask for BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            _set_wal(cur)
            cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no committed transaction
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("vmbench_begin_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


WAL_TRIES = 12  # about 4.5 s of backoff in all


def _set_wal(cur) -> None:
    """PRAGMA journal_mode = WAL, asked again while the file is busy. Two connections switching one new (rollback
    journal) file at once each hold a shared lock and ask to upgrade it: SQLite answers one of them "database is
    locked" at once, without the busy handler (it would deadlock); by the next try the other has switched the file
    and the pragma has nothing left to do."""
    for attempt in range(WAL_TRIES):
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == WAL_TRIES - 1:
                raise
            time.sleep(0.01 * 2 ** min(attempt, 6))


def _check_sqlite_path(path: Path, create: bool) -> None:
    if path.exists():
        if path.is_dir():
            raise StoreError(f"database path {path} is a directory")
        if not os.access(path, os.R_OK):
            raise StoreError(f"cannot read database {path}: permission denied")
        if create and not os.access(path, os.W_OK):
            raise StoreError(f"cannot write database {path}: permission denied")
        # Not a database is reported by SQLite itself (make_engine): opening and closing the file here
        # would drop the POSIX locks of any connection this process already has on it.
        return
    if not create:
        raise StoreError(f"no database at {path} (runs are recorded there by `vmbench run` / `vmbench bench`)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"cannot create database {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise StoreError(f"cannot create database {path}: directory {parent} is not writable")


def _server_engine(target: str) -> sa.Engine:
    """Engine for a SQLAlchemy URL; a URL whose driver is not installed (or not known) is a one-line StoreError."""
    try:
        url = sa.engine.make_url(target)
    except sa.exc.ArgumentError:
        raise StoreError(f"{target!r} is not a database URL (expected e.g. postgresql://user@host/db)") from None
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as e:
        raise StoreError(f"the {url.get_backend_name()} database driver is not installed ({e.name}): "
                         "pip install 'vmbench[postgres]'") from None
    except sa.exc.NoSuchModuleError:
        raise StoreError(f"unknown database kind {url.drivername!r} in {target!r}: use a SQLite file path or a "
                         "postgresql:// URL (pip install 'vmbench[postgres]')") from None


def _readonly_url(path: Path) -> str:
    """A read-only SQLite URI for `path`: `immutable=1` when its folder cannot hold the WAL index (read-only
    filesystem or folder), so that reading needs no write anywhere."""
    from urllib.parse import quote

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    shm = Path(str(path) + "-shm")
    if not os.access(path.parent if str(path.parent) else ".", os.W_OK) and not shm.exists():
        uri += "&immutable=1"
    return f"sqlite:///{uri}&uri=true"


def check_schema(conn, target: str) -> list[str]:
    """The migrations still to apply to this database; StoreError when it was written by a newer vmbench."""
    from .migrations import MIGRATIONS, applied_migrations

    known = [n for n, _ in MIGRATIONS]
    applied = applied_migrations(conn)
    newer = sorted(set(applied) - set(known))
    if newer:
        raise StoreError(f"{target} was written by a newer vmbench (schema {newer[-1]}); upgrade vmbench to use it")
    return [n for n in known if n not in applied]


def make_engine(target: str, create: bool = True, readonly: bool = False) -> sa.Engine:
    """Engine for a file path or SQLAlchemy URL; migrates the schema unless `readonly` (`create`: a missing
    SQLite file may be created). `readonly` opens a SQLite file read-only; a database that still needs
    migrating is then refused (a writing command upgrades it).

    Raises StoreError (a ValueError) with a one-line message for user-facing problems.
    """
    assert not (create and readonly)
    if is_url(target):
        engine = _server_engine(target)
        if engine.dialect.name == "sqlite":
            _sqlite_hooks(engine)
    else:
        path = Path(target).expanduser()
        _check_sqlite_path(path, create)
        engine = sa.create_engine(_readonly_url(path) if readonly else f"sqlite:///{path}")
        _sqlite_hooks(engine, readonly=readonly)
    try:
        with engine.connect() as conn:
            has_runs = sa.inspect(conn).has_table("runs")
            if not has_runs and (readonly or not create):
                raise StoreError(f"{target} holds no vmbench runs table")
            pending = check_schema(conn, target) if has_runs else None
        if not readonly:
            migrate(engine)
        elif pending:
            if not is_url(target) and not os.access(Path(target).expanduser(), os.W_OK):
                raise StoreError(f"{target} has an older schema and cannot be written: open it once with a "
                                 "writing vmbench command where it is writable, to upgrade it")
            make_engine(target, create=False).dispose()  # upgrade it once, then read
    except StoreError:
        engine.dispose()
        raise
    except sa.exc.DatabaseError as e:
        engine.dispose()
        if "not a database" in str(e.orig):
            raise StoreError(f"{target} is not a SQLite database") from None
        if isinstance(e, sa.exc.OperationalError):
            raise StoreError(f"cannot use database {target}: {e.orig}") from None
        raise StoreError(f"{target} is not a usable database: {e.orig}") from None
    return engine


class Reader:
    """A results database opened for reading through SQLAlchemy Core only (the listings: no ORM import):
    `Reader(target)` → `.engine`, `close()`; a context manager. `store.api.Store` extends it with the writes."""

    def __init__(self, target: str, create: bool = False, readonly: bool = True):
        self.target = target
        self.engine = make_engine(target, create=create and not readonly, readonly=readonly)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
