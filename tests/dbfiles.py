"""Test helpers on database files: a fingerprint (to prove a command wrote nothing), waiting for a run in
another process to have logged its first epoch, and sending that process SIGTERM then."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time


def db_digest(path) -> str:
    """sha256 over the database file and its WAL (whichever exist)."""
    out = hashlib.sha256()
    for suffix in ("", "-wal"):
        p = str(path) + suffix
        if os.path.exists(p):
            with open(p, "rb") as f:
                out.update(f.read())
    return out.hexdigest()


def wait_for_first_epoch(proc, db, run_id: int = 1, timeout: float = 120.0) -> None:
    """Poll until run `run_id` of the `vmbench` subprocess `proc` has per-epoch metrics in `db` (so training
    steps have happened). Reads only: a poller that opened the store for writing would take the write lock
    the run needs. Fails if `proc` exits first or `timeout` seconds pass."""
    from vmbench.store import Store

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"no epoch finished after {timeout:.0f} s"
        if os.path.exists(db):
            try:
                with Store(str(db), create=False) as store:
                    run = store.get_run(run_id)
            except ValueError:  # the file exists, its schema not yet
                run = None
            if run is not None and run.metrics:
                return
        time.sleep(0.05)


def sigterm_after_first_epoch(cli_args, db) -> tuple[int, str]:
    """Run `vmbench *cli_args --db db` in a subprocess, send it SIGTERM once its first epoch is logged, and
    return (exit code, stderr) when it has stopped (killed if anything fails on the way)."""
    proc = subprocess.Popen([sys.executable, "-m", "vmbench.cli", *cli_args, "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_epoch(proc, db)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    return proc.returncode, err
