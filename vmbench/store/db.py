"""Opening the results database: SQLite (WAL + busy_timeout) or any SQLAlchemy URL (PostgreSQL on clusters)."""
from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from .migrations import migrate

BUSY_TIMEOUT_MS = 10_000


class StoreError(ValueError):
    """The database cannot be opened or written (a user-facing problem: bad path, permissions)."""


def is_url(target: str) -> bool:
    return "://" in target


def _sqlite_hooks(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin
        # (so that migrations can ask for BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no committed transaction's integrity
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("vmbench_begin_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


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


def make_engine(target: str, create: bool = True) -> sa.Engine:
    """Engine for a file path or SQLAlchemy URL; migrates the schema when `create` is true.

    Raises StoreError (a ValueError) with a one-line message for user-facing problems.
    """
    if is_url(target):
        engine = sa.create_engine(target, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            _sqlite_hooks(engine)
    else:
        path = Path(target).expanduser()
        _check_sqlite_path(path, create)
        engine = sa.create_engine(f"sqlite:///{path}")
        _sqlite_hooks(engine)
    try:
        if create:
            migrate(engine)
        else:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("runs"):
                    raise StoreError(f"{target} holds no vmbench runs table")
    except sa.exc.DatabaseError as e:
        engine.dispose()
        if "not a database" in str(e.orig):
            raise StoreError(f"{target} is not a SQLite database") from None
        if isinstance(e, sa.exc.OperationalError):
            raise StoreError(f"cannot use database {target}: {e.orig}") from None
        raise StoreError(f"{target} is not a usable database: {e.orig}") from None
    return engine
