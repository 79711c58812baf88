"""Shared fixtures: a real PostgreSQL server for the store and queue tests (`pg_url`, and `any_db`, which runs a test
on SQLite and on PostgreSQL); the number of test processes `-n auto` starts.

The server is the one `.ci/run` started when $VMBENCH_TEST_PG holds its URL (postgresql+psycopg://user@host:port/db),
else a private one each test process starts from Debian's binaries (/usr/lib/postgresql/<v>/bin, or $VMBENCH_PG_BIN) in
a temporary folder, on a free port, as the `postgres` user when the tests run as root (the server refuses root),
and stops at the end. Each test gets a database of its own. Without a server the PostgreSQL cases are skipped,
except in CI ($CI=true), where they fail.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import zlib

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker per CPU this process may use for the CPU suite, none for a run that
    selects GPU tests (`-m gpu`: they share one device, and some time it)."""
    expr = config.option.markexpr or ""
    if "gpu" in expr and "not gpu" not in expr:
        return 0
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pytest_configure(config):
    """In a worker of `-n N`: one thread per torch process (this one and the CLI processes its tests start), so that
    N workers share the CPUs without each running a thread per CPU."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # before the test modules import torch
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test starts from a random state of its own, whatever ran before it: inputs drawn from torch's global
    generator depend on the test alone, so a tolerance that holds in one order holds in every order."""
    if "torch" in sys.modules:  # tests that never import torch stay light
        sys.modules["torch"].manual_seed(zlib.crc32(request.node.name.encode()))


def _pg_bin() -> str | None:
    if os.environ.get("VMBENCH_PG_BIN"):
        return os.environ["VMBENCH_PG_BIN"]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    exe = shutil.which("pg_ctl")
    return os.path.dirname(exe) if exe else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(why: str):
    if IN_CI:
        pytest.fail(f"PostgreSQL is needed in CI: {why}")
    pytest.skip(f"no PostgreSQL: {why}")


@pytest.fixture(scope="session")
def pg_server():
    """A base URL (without database name) of a running PostgreSQL server, for the whole session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'vmbench[postgres]')")
    if os.environ.get("VMBENCH_TEST_PG"):
        url = os.environ["VMBENCH_TEST_PG"]
        yield url.rsplit("/", 1)[0]
        return
    bindir = _pg_bin()
    if bindir is None:
        _unavailable("no PostgreSQL binaries (apt-get install postgresql)")
    root = tempfile.mkdtemp(prefix="vmbench-pg-")
    data = os.path.join(root, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    os.chmod(root, 0o755)
    port = _free_port()

    def run(*cmd):
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=180)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    run(f"{bindir}/pg_ctl", "-D", data, "-w", "-t", "120", "-l", os.path.join(root, "server.log"), "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """The URL of a new, empty PostgreSQL database (dropped after the test)."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{pg_server}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    """A fresh database: a SQLite file, then a PostgreSQL database (the test runs once on each)."""
    if request.param == "sqlite":
        return str(tmp_path / "test.db")
    return request.getfixturevalue("pg_url")
