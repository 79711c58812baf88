"""Results store: migrations, WAL, crash-safe writes, status reality, user-facing errors."""
import datetime as dt
import os
import socket
import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy as sa

from vmbench.store import MIGRATIONS, STALE_AFTER, Run, Store, StoreError, effective_status
from vmbench.store.schema import Base


def test_new_db_is_migrated_in_wal_mode(tmp_path):
    db = tmp_path / "x.db"
    Store(str(db)).close()
    con = sqlite3.connect(db)
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    applied = [r[0] for r in con.execute("select name from schema_migrations order by name")]
    assert applied == [name for name, _ in MIGRATIONS]


def test_orm_schema_matches_migrated_schema(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    insp = sa.inspect(store.engine)
    for table in Base.metadata.sorted_tables:
        migrated = {c["name"] for c in insp.get_columns(table.name)}
        assert migrated == {c.name for c in table.columns}, table.name


def test_reopening_applies_nothing_twice(tmp_path):
    db = str(tmp_path / "x.db")
    Store(db).close()
    from vmbench.store import migrate

    assert migrate(Store(db).engine) == []


def test_concurrent_first_open_migrates_once(tmp_path):
    db = tmp_path / "race.db"
    code = "import sys; from vmbench.store import Store; Store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db)]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_run_lifecycle(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    rid = store.create_run("train", "vmamba_t", "shapes", {"epochs": 1}, seed=3, tags=["a"])
    store.log_metrics(rid, {"train_loss": 2.0, "val_top1": 10.0, "epoch": 1, "nan": float("nan")}, epoch=1)
    store.finish_run(rid, "completed", {"top1": 55.5, "scan_backend": "torch", "skipped": None})
    run = store.get_run(rid)
    assert run.status == "completed" and run.ended_at is not None and run.seed == 3 and run.tags == ["a"]
    assert {m.key: m.value for m in run.metrics} == {"train_loss": 2.0, "val_top1": 10.0, "nan": None}
    res = {r.key: (r.value, r.text) for r in run.results}
    assert res == {"top1": (55.5, None), "scan_backend": (None, "torch")}


def test_dead_pid_is_not_running(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    rid = store.create_run("train", "m", "d", {})
    assert effective_status(store.get_run(rid)) == "running"  # our own pid is alive
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    store.update_run(rid, pid=p.pid)
    assert effective_status(store.get_run(rid)) == "interrupted"
    assert store.get_run(rid).status == "running"  # stored value untouched; the view reflects reality


def test_stale_heartbeat_on_other_host_is_interrupted():
    now = dt.datetime(2026, 1, 1, 12, 0)
    run = Run(status="running", host=socket.gethostname() + "-elsewhere", pid=1, started_at=now,
              heartbeat_at=now - STALE_AFTER - dt.timedelta(seconds=1))
    assert effective_status(run, now=now) == "interrupted"
    run.heartbeat_at = now
    assert effective_status(run, now=now) == "running"


def test_read_only_open_never_creates(tmp_path):
    db = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no database"):
        Store(str(db), create=False)
    assert not db.exists()


@pytest.mark.parametrize("case", ["missing_dir", "not_sqlite", "directory"])
def test_unusable_db_paths_are_user_errors(tmp_path, case):
    if case == "missing_dir":
        target = tmp_path / "nope" / "x.db"
    elif case == "not_sqlite":
        target = tmp_path / "x.db"
        target.write_text("hello, not a database at all")
    else:
        target = tmp_path
    with pytest.raises(StoreError):
        Store(str(target))


def test_not_sqlite_message(tmp_path):
    target = tmp_path / "notes.db"
    target.write_text("hello, not a database at all")
    with pytest.raises(StoreError, match="is not a SQLite database"):
        Store(str(target))


def test_opening_never_reads_the_file_itself(tmp_path, monkeypatch):
    """SQLite's locks are POSIX locks, which a process loses when it closes *any* descriptor of the file:
    a header check with open()/close() would drop the locks of this process's other connections (and let
    another process delete the WAL under them). Opening a Store leaves the file to SQLite."""
    import builtins

    db = tmp_path / "x.db"
    Store(str(db)).close()
    real_open = builtins.open

    def guarded(file, *a, **k):
        assert os.fspath(file) != str(db), "the database file was opened outside SQLite"
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    Store(str(db)).close()
    Store(str(db), create=False).close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            Store(str(d / "x.db"))
    finally:
        d.chmod(0o700)


def test_uncreatable_file_is_a_user_error():
    # /proc accepts no new files even for root: the SQLite open itself fails.
    with pytest.raises(StoreError, match="cannot use database"):
        Store("/proc/vmbench-test.db")
