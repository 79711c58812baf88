"""Results store: migrations, WAL, crash-safe writes, status reality, user-facing errors."""
import datetime as dt
import json
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
    """Processes that open one new database at once all succeed (the WAL switch is asked again when SQLite answers
    "locked" without waiting) and the migrations run once."""
    code = "import sys; from vmbench.store import Store; Store(sys.argv[1]).close()"
    for round_ in range(3):
        db = tmp_path / f"race{round_}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(errors)
        con = sqlite3.connect(db)
        assert con.execute("select count(*) from schema_migrations").fetchone()[0] == len(MIGRATIONS)
        assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
        con.close()


def test_wal_switch_races_on_a_new_file(tmp_path):
    """8 connections switching one new file to WAL at the same moment (a barrier just before): without asking
    again, 5 to 8 connections in 100 rounds were answered "database is locked" at once (measured here)."""
    import threading

    from vmbench.store.db import BUSY_TIMEOUT_MS, _set_wal

    errors = []
    for round_ in range(100):
        db = str(tmp_path / f"w{round_}.db")
        barrier = threading.Barrier(8)

        def switch():
            con = sqlite3.connect(db, isolation_level=None)
            try:
                con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                cur = con.cursor()
                barrier.wait()
                _set_wal(cur)
            except sqlite3.Error as e:
                errors.append(e)
            finally:
                con.close()

        threads = [threading.Thread(target=switch) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]


def test_wal_switch_is_asked_again_while_locked(monkeypatch):
    """The one SQLite answer that skips the busy handler (two connections upgrading their locks on one file) is
    retried; any other error, or a lock that stays, is raised."""
    from vmbench.store import db as store_db

    monkeypatch.setattr(store_db.time, "sleep", lambda s: None)

    class Cursor:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def execute(self, sql):
            self.calls += 1
            assert sql == "PRAGMA journal_mode = WAL"
            if self.errors:
                raise self.errors.pop(0)

    cur = Cursor([sqlite3.OperationalError("database is locked")] * 2)
    store_db._set_wal(cur)
    assert cur.calls == 3
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store_db._set_wal(Cursor([sqlite3.OperationalError("disk I/O error")]))
    stuck = Cursor([sqlite3.OperationalError("database is locked")] * store_db.WAL_TRIES)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store_db._set_wal(stuck)
    assert stuck.calls == store_db.WAL_TRIES


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


# ---- writes that cannot lose, liveness, schema versions, read-only opens, drivers ---------------------------
def test_finish_run_upserts_results(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    rid = store.create_run("train", "m", "d", {})
    store.finish_run(rid, "failed", {"top1": 1.0, "note": "a"}, error="boom")
    store.finish_run(rid, "completed", {"top1": 2.0, "note": ["b"]})  # same keys: updated, not duplicated
    run = store.get_run(rid)
    assert run.status == "completed" and run.error is None
    assert {r.key: (r.value, r.text) for r in run.results} == {"top1": (2.0, None), "note": (None, '["b"]')}
    assert store.finish_run(rid, "failed", only_if_running=True) is False  # an ended run is left alone
    assert store.get_run(rid).status == "completed"


def test_writes_begin_immediate(tmp_path):
    """Every write transaction takes the write lock when it begins: under WAL a deferred transaction that reads
    and then writes is refused at once with "database is locked" when another writer committed meanwhile."""
    store = Store(str(tmp_path / "x.db"))
    seen = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda conn, cur, stmt, *a: seen.append(stmt) if stmt.startswith("BEGIN") else None)
    rid = store.create_run("train", "m", "d", {})
    store.log_metrics(rid, {"loss": 1.0}, epoch=1)
    store.finish_run(rid, "completed", {"top1": 1.0})
    assert seen and set(seen) == {"BEGIN IMMEDIATE"}, seen


def test_pid_reuse_is_not_running(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    rid = store.create_run("train", "m", "d", {})
    run = store.get_run(rid)
    assert run.pid == os.getpid() and run.pid_started is not None and effective_status(run) == "running"
    store.update_run(rid, pid_started=run.pid_started - 3600)  # our pid, but another process's start time
    assert effective_status(store.get_run(rid)) == "interrupted"


def test_stale_threshold_from_environment(monkeypatch):
    now = dt.datetime(2026, 1, 1, 12, 0)
    run = Run(status="running", host="elsewhere", pid=1, started_at=now, heartbeat_at=now - dt.timedelta(seconds=90))
    assert effective_status(run, now=now) == "running"
    monkeypatch.setenv("VMBENCH_STALE_AFTER", "60")
    assert effective_status(run, now=now) == "interrupted"


def test_claim_is_a_compare_and_swap(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    rid = store.create_run("train", "m", "d", {})
    store.finish_run(rid, "interrupted", error="x")
    store.claim_run(rid, ("failed", "interrupted"))
    run = store.get_run(rid)
    assert run.status == "running" and run.pid == os.getpid() and run.error is None and run.ended_at is None
    with pytest.raises(ValueError, match="is running"):
        store.claim_run(rid, ("failed", "interrupted"))
    with pytest.raises(ValueError, match="no run 99"):
        store.claim_run(99, ("failed",))


def test_list_runs_filters_in_sql_and_corrects_liveness(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ids = {}
    for name in ("done", "alive", "dead", "stopped"):
        ids[name] = store.create_run("train", name, "d", {})
    store.finish_run(ids["done"], "completed")
    store.update_run(ids["dead"], pid=dead.pid)
    store.finish_run(ids["stopped"], "interrupted")
    names = lambda **kw: [r.model for r in store.list_runs(**kw)]  # noqa: E731
    assert names() == ["stopped", "dead", "alive", "done"]
    assert names(limit=2) == ["stopped", "dead"]
    assert names(status="running") == ["alive"]
    assert names(status="interrupted") == ["stopped", "dead"]
    assert names(status="interrupted", limit=1) == ["stopped"]
    assert names(status="completed") == ["done"]
    assert names(model="dead", status="interrupted") == ["dead"]


def test_pending_results_are_applied_on_next_open(tmp_path):
    from vmbench.scheduler.common import finish
    from vmbench.store.pending import PENDING, apply_pending

    db = str(tmp_path / "x.db")
    store = Store(db)
    rid = store.create_run("train", "m", "d", {}, run_uuid="ab" * 16)
    folder = tmp_path / "runs" / ("ab" * 16)
    store.close()
    os.chmod(db, 0o444)  # the database refuses the last write (as root too: the engine opens it read-only)
    ro = Store(db, create=False, readonly=True)
    path = finish(ro, rid, "completed", {"top1": 9.5}, folder=folder, run_uuid="ab" * 16)
    ro.close()
    os.chmod(db, 0o644)
    assert path == folder / PENDING and json.loads(path.read_text())["results"] == {"top1": 9.5}
    other = Store(str(tmp_path / "other.db"))  # another database sharing the root: not its run
    assert apply_pending(other, tmp_path / "runs") == [] and path.exists()
    store = Store(db)
    assert apply_pending(store, tmp_path / "runs") == [rid] and not path.exists()
    run = store.get_run(rid)
    assert run.status == "completed" and {r.key: r.value for r in run.results} == {"top1": 9.5}


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "x.db"
    Store(str(db)).close()
    con = sqlite3.connect(db)
    con.execute("insert into schema_migrations values ('9999_from_the_future', '2030-01-01')")
    con.commit()
    con.close()
    for kw in ({}, {"create": False}, {"readonly": True}):
        with pytest.raises(StoreError, match="newer vmbench"):
            Store(str(db), **kw)
    from click.testing import CliRunner

    from vmbench.cli import main

    r = CliRunner().invoke(main, ["runs", "--db", str(db)])
    assert r.exit_code == 2 and "newer vmbench" in r.stderr and r.stderr.count("\n") == 1


def test_old_schema_is_upgraded_with_uuids(tmp_path):
    from vmbench.store.migrations import _m0001_initial, _ledger

    db = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        _m0001_initial(conn)
        _ledger.create(conn)
        conn.execute(_ledger.insert().values(name="0001_initial", applied_at=dt.datetime(2026, 1, 1)))
        conn.execute(sa.text("insert into runs (kind, model, params, status, started_at, env, tags) values "
                             "('train', 'm', '{}', 'completed', '2026-01-01 00:00:00', '{}', '[]')"))
    engine.dispose()
    with Store(str(db), readonly=True) as store:  # a reading open of a writable file upgrades it once
        (run,) = store.list_runs()
    assert len(run.run_uuid) == 32


def test_read_only_file_and_filesystem(tmp_path):
    db = tmp_path / "src" / "x.db"
    db.parent.mkdir()
    with Store(str(db)) as store:
        store.create_run("train", "m", "d", {})
    from click.testing import CliRunner

    from vmbench.cli import main

    os.chmod(db, 0o444)
    try:
        r = CliRunner().invoke(main, ["runs", "--db", str(db), "--json"])
        assert r.exit_code == 0 and len(json.loads(r.stdout)) == 1, r.output
    finally:
        os.chmod(db, 0o644)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(db.parent), str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount read-only here (not root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True)
        with pytest.raises(OSError):
            (mnt / "probe").write_text("x")
        for args in (["runs", "--json"], ["compare", "--format", "json"], ["show", "1", "--json"]):
            r = CliRunner().invoke(main, [*args, "--db", str(mnt / "x.db")])
            assert r.exit_code == 0, (args, r.output)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("url", ["postgresql+pg8000://127.0.0.1:1/x", "foo://bar"])
def test_server_url_without_driver_is_one_line(url):
    import importlib.util

    if "pg8000" in url and importlib.util.find_spec("pg8000"):
        pytest.skip("pg8000 is installed")
    from click.testing import CliRunner

    from vmbench.cli import main

    r = CliRunner().invoke(main, ["runs", "--db", url])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "pip install 'vmbench[postgres]'" in r.stderr


def _pivot(engine) -> dict:
    """run_results as {run_id: {column: value}} without empty columns."""
    with engine.connect() as c:
        return {r.run_id: {k: v for k, v in r._mapping.items() if v is not None and k != "run_id"}
                for r in c.execute(sa.text("SELECT * FROM run_results"))}


def test_run_results_mirror_the_results_written(tmp_path):
    """The listing columns (run_results) follow every results write: new keys, overwritten keys, text keys, and
    keys without a column left out."""
    with Store(str(tmp_path / "x.db")) as store:
        a = store.create_run("train", "vmamba_t", "shapes", {})
        b = store.create_run("bench", "swin_t", None, {})
        store.finish_run(a, "completed", {"top1": 50.0, "gpu_name": "H200", "classes": ["x"], "note": "n"})
        store.finish_run(b, "failed", error="boom")
        assert _pivot(store.engine) == {a: {"top1": 50.0, "gpu_name": "H200"}}
        store.finish_run(a, "completed", {"top1": 61.5, "img_s": 900.0})  # a second write upserts
        store.finish_run(b, "completed", {"precision": "amp_bf16", "batch": 16})
        assert _pivot(store.engine) == {a: {"top1": 61.5, "img_s": 900.0, "gpu_name": "H200"},
                                        b: {"precision": "amp_bf16", "batch": 16.0}}
        with store.engine.connect() as c:
            n = c.execute(sa.text("SELECT count(*) FROM results WHERE run_id = :a"), {"a": a}).scalar()
        assert n == 5  # top1, img_s, gpu_name, classes, note: results keeps every key


def _old_database(tmp_path, n_migrations: int, *inserts: str):
    """A SQLite file at the schema of the first `n_migrations` migrations, holding the rows `inserts` write."""
    from vmbench.store.migrations import MIGRATIONS, _ledger

    db = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as c:
        _ledger.create(c)
        for name, fn in MIGRATIONS[:n_migrations]:
            fn(c)
            c.execute(_ledger.insert().values(name=name, applied_at=dt.datetime(2026, 1, 1)))
        for sql in inserts:
            c.execute(sa.text(sql))
    engine.dispose()
    return db


def test_migration_0004_fills_run_results_from_existing_results(tmp_path):
    """A database written before run_results existed gets it filled from its results when it is opened."""
    db = _old_database(tmp_path, 3, "INSERT INTO runs (id, kind, model, params, status, started_at, env, tags) "
                       "VALUES (1, 'train', 'm', '{}', 'completed', '2026-01-01', '{}', '[]'), "
                       "(2, 'bench', 'm', '{}', 'completed', '2026-01-01', '{}', '[]')",
                       "INSERT INTO results (run_id, key, value, text) VALUES (1, 'top1', 70.5, NULL), "
                       "(1, 'params_m', 30.0, NULL), (1, 'other', 1.0, NULL), (2, 'precision', NULL, 'fp32')")
    with Store(str(db)) as store:
        assert _pivot(store.engine) == {1: {"top1": 70.5, "params_m": 30.0}, 2: {"precision": "fp32"}}


def test_run_settings_follow_params_and_migration_0005_fills_them(tmp_path):
    """runs.settings / runs.weights_file (what the reports group by) are written with params, by create_run and
    by a params update, and filled for the runs of a database recorded before the columns existed; the
    migration's settings list is the current one."""
    from vmbench.store.migrations import SETTINGS_0005
    from vmbench.store.tables import SETTINGS

    assert SETTINGS == SETTINGS_0005  # a change of tables.SETTINGS needs a migration that recomputes the column

    def columns(engine):
        with engine.connect() as c:
            return {r.id: (json.loads(r.settings), r.weights_file and json.loads(r.weights_file))
                    for r in c.execute(sa.text("SELECT id, settings, weights_file FROM runs"))}

    db = _old_database(tmp_path, 4, "INSERT INTO runs (id, kind, model, params, status, started_at, env, tags) "
                       "VALUES (1, 'train', 'm', '{\"epochs\": 30, \"amp\": true, \"lr\": 0.1}', 'completed', "
                       "'2026-01-01', '{}', '[]'), (2, 'eval', 'm', '{\"weights_path\": \"/c/best.pt\"}', "
                       "'completed', '2026-01-01', '{}', '[]')")
    blank = [None] * len(SETTINGS)
    with Store(str(db)) as store:
        filled = columns(store.engine)
        assert filled[1][0][SETTINGS.index("epochs")] == 30 and filled[1][0][SETTINGS.index("amp")] is True
        assert sum(v is not None for v in filled[1][0]) == 2 and filled[1][1] is None  # lr is no setting
        assert filled[2] == (blank, ["/c/best.pt", None])
        run = store.create_run("bench", "m", None, {"res": 384, "precision": "fp32", "batch": 1})
        assert columns(store.engine)[run][0][SETTINGS.index("res")] == 384
        store.update_run(run, params={"res": 512, "weights_path": "/w.pt", "weights_sha256": "ab"})
        assert columns(store.engine)[run] == ([512 if n == "res" else None for n in SETTINGS], ["/w.pt", "ab"])
