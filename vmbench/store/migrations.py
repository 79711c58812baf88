"""Ordered, named schema migrations.

Each migration is a function of a SQLAlchemy Connection, listed in MIGRATIONS in
the order it must run. Applied names are recorded in `schema_migrations`; all
pending ones run in one transaction that holds the database's write lock
(SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so two processes
opening a new database at once cannot both migrate it.
A migration is never edited once released: add a new one.
"""
from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .tables import settings_columns, utcnow

_PG_LOCK_ID = 0x766D62  # "vmb"


def _m0001_initial(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "runs", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False, index=True),
        sa.Column("dataset", sa.String(256), index=True),
        sa.Column("recipe", sa.String(128)),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("pid", sa.Integer),
        sa.Column("host", sa.String(256)),
        sa.Column("gpus", sa.String(64)),
        sa.Column("device", sa.String(32)),
        sa.Column("scan_backend", sa.String(16)),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("error", sa.Text),
        sa.Column("git_sha", sa.String(64)),
        sa.Column("git_dirty", sa.Boolean),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("runs.id")),
        sa.Column("checkpoint_dir", sa.String(1024)),
    )
    sa.Table(
        "metrics", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("epoch", sa.Integer),
        sa.Column("step", sa.Integer),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("time", sa.DateTime, nullable=False),
    )
    sa.Table(
        "results", md,
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float),
        sa.Column("text", sa.Text),
    )
    md.create_all(conn)


def _m0002_run_uuid_and_liveness(conn: Connection) -> None:
    """runs.run_uuid: a key that never repeats (checkpoint folders, pending results); runs.pid_started: the
    process's start time, so that a reused pid is not taken for the run's process."""
    import uuid

    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN run_uuid VARCHAR(32)"))
    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN pid_started FLOAT"))
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("run_uuid", sa.String))
    for (run_id,) in conn.execute(sa.select(runs.c.id)).all():
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(run_uuid=uuid.uuid4().hex))
    conn.execute(sa.text("CREATE UNIQUE INDEX ix_runs_run_uuid ON runs (run_uuid)"))


def _m0003_queue(conn: Connection) -> None:
    """The run queue (vmbench.store.queue): one row per planned run, one row per attempt at it."""
    md = sa.MetaData()
    sa.Table("runs", md, sa.Column("id", sa.Integer, primary_key=True))  # referenced, not created
    sa.Table(
        "queue_items", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("model", sa.String(128)),
        sa.Column("dataset", sa.String(256)),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("not_before", sa.DateTime, nullable=False),
        sa.Column("claim_token", sa.String(36)),
        sa.Column("lease_until", sa.DateTime),
        sa.Column("worker", sa.String(256)),
        sa.Column("host", sa.String(256)),
        sa.Column("gpu_ids", sa.String(64)),
        sa.Column("claimed_at", sa.DateTime),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("slurm_job_id", sa.String(64)),
        sa.Column("log_path", sa.String(1024)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime),
    )
    sa.Table(
        "queue_attempts", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("queue_items.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("claim_token", sa.String(36), nullable=False),
        sa.Column("worker", sa.String(256), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("gpu_ids", sa.String(64)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("outcome", sa.String(16)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("run_id", sa.Integer),
        sa.Column("slurm_job_id", sa.String(64)),
    )
    md.create_all(conn, tables=[md.tables["queue_items"], md.tables["queue_attempts"]])


def _m0004_run_results(conn: Connection) -> None:
    """`run_results`: the results the listings show as columns, one row per run (store.tables), filled from
    `results` for the runs already recorded; an index on runs.checkpoint_dir."""
    num = ("top1", "top5", "val_loss", "params_m", "gflops", "img_s", "latency_ms", "peak_mem_mb", "train_time_s",
           "epochs_done", "num_classes", "img_size", "res", "batch", "bench_batch",
           *(f"{t}_ap{s}" for t in ("box", "mask") for s in ("", "50", "75", "s", "m", "l")))
    text = ("peak_mem_source", "gpu_name", "precision")
    md = sa.MetaData()
    sa.Table("runs", md, sa.Column("id", sa.Integer, primary_key=True))  # referenced, not created
    table = sa.Table("run_results", md,
                     sa.Column("run_id", sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
                     *[sa.Column(k, sa.Float) for k in num], *[sa.Column(k, sa.Text) for k in text])
    table.create(conn)
    results = sa.table("results", sa.column("run_id"), sa.column("key"), sa.column("value"), sa.column("text"))
    pick = [sa.func.max(sa.case((results.c.key == k, results.c.value))).label(k) for k in num]
    pick += [sa.func.max(sa.case((results.c.key == k, results.c.text))).label(k) for k in text]
    rows = sa.select(results.c.run_id, *pick).where(results.c.key.in_(num + text)).group_by(results.c.run_id)
    conn.execute(table.insert().from_select(["run_id", *num, *text], rows))
    # the reports find the train run of an evaluated checkpoint by its folder
    sa.Index("ix_runs_checkpoint_dir", sa.Table("runs", sa.MetaData(), sa.Column("checkpoint_dir", sa.String(1024)))
             .c.checkpoint_dir).create(conn)


# The settings list as migration 0005 wrote it (tables.SETTINGS must equal the newest such list: a change there
# adds a migration that calls fill_settings with the new one).
SETTINGS_0005 = ("epochs", "batch_size", "img_size", "val_resize", "train_resize", "res", "batch", "precision",
                 "section", "kind", "compile", "compiled", "cuda_graph", "channels_last", "amp", "amp_dtype",
                 "bench_batch", "init", "weights", "pretrained", "task", "res_w")


def fill_settings(conn: Connection, names: tuple[str, ...], chunk: int = 5000) -> None:
    """Recompute runs.settings and runs.weights_file out of every run's params (tables.settings_columns)."""
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("params", sa.JSON), sa.column("settings"),
                    sa.column("weights_file"))
    update = (sa.update(runs).where(runs.c.id == sa.bindparam("rid"))
              .values(settings=sa.bindparam("s"), weights_file=sa.bindparam("w")))
    last = 0
    while True:
        rows = conn.execute(sa.select(runs.c.id, runs.c.params).where(runs.c.id > last)
                            .order_by(runs.c.id).limit(chunk)).all()
        if not rows:
            return
        values = []
        for rid, params in rows:
            cols = settings_columns(params or {}, names)
            values.append({"rid": rid, "s": cols["settings"], "w": cols["weights_file"]})
        conn.execute(update, values)
        last = rows[-1][0]


def _m0005_run_settings(conn: Connection) -> None:
    """runs.settings / runs.weights_file: the settings the reports group by, out of params, as one text column each
    (store.tables.SETTINGS), filled for the runs already recorded."""
    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN settings TEXT"))
    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN weights_file TEXT"))
    fill_settings(conn, SETTINGS_0005)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _m0001_initial),
    ("0002_run_uuid_and_liveness", _m0002_run_uuid_and_liveness),
    ("0003_queue", _m0003_queue),
    ("0004_run_results", _m0004_run_results),
    ("0005_run_settings", _m0005_run_settings),
]

_ledger = sa.Table(
    "schema_migrations", sa.MetaData(),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)


def applied_migrations(conn: Connection) -> list[str]:
    if not sa.inspect(conn).has_table("schema_migrations"):
        return []
    return [r[0] for r in conn.execute(sa.select(_ledger.c.name))]


def migrate(engine: sa.Engine) -> list[str]:
    """Apply pending migrations in order; return the names applied now."""
    names = [n for n, _ in MIGRATIONS]
    assert len(set(names)) == len(names), "duplicate migration names"
    with engine.connect() as conn:
        done = set(applied_migrations(conn))
        if done - set(names):  # written by a newer vmbench: never write into a schema this version does not know
            raise ValueError(f"the database's schema is newer than this vmbench (migration "
                             f"{sorted(done - set(names))[-1]} unknown): upgrade vmbench to use it")
        if set(names) <= done:
            return []  # fast path: nothing to do, no write lock taken
    with engine.connect() as conn:
        # On SQLite the "begin" hook in store.db turns this into BEGIN IMMEDIATE:
        # the write lock is held from before the ledger is read until commit.
        conn.execution_options(vmbench_begin_immediate=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
            _ledger.create(conn, checkfirst=True)
            done = set(applied_migrations(conn))
            applied = []
            for name, fn in MIGRATIONS:
                if name in done:
                    continue
                fn(conn)
                conn.execute(_ledger.insert().values(name=name, applied_at=utcnow()))
                applied.append(name)
    return applied
