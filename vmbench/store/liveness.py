"""Whether a run recorded as `running` really runs: its process (pid + start time, psutil) on this host, its
heartbeat elsewhere. `effective_status(row)` is the entry point; it needs only the row's columns (an ORM Run or
a Core row), so the listings use it without the ORM.
"""
from __future__ import annotations

import datetime as dt
import os
import socket

from .tables import utcnow

# A running run whose heartbeat is older than this is shown as interrupted when its process cannot be checked
# (another host). The run's heartbeat thread beats every 30 s; `$VMBENCH_STALE_AFTER` (seconds) overrides.
STALE_AFTER = dt.timedelta(minutes=10)


def stale_after() -> dt.timedelta:
    """The stale-heartbeat threshold: `$VMBENCH_STALE_AFTER` seconds, else STALE_AFTER."""
    raw = os.environ.get("VMBENCH_STALE_AFTER")
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            raise ValueError(f"VMBENCH_STALE_AFTER must be a number of seconds, got {raw!r}") from None
        if seconds > 0:
            return dt.timedelta(seconds=seconds)
    return STALE_AFTER


def process_started(pid: int | None = None) -> float | None:
    """The start time (epoch seconds) of process `pid` (default: this one), None when it does not exist."""
    import psutil

    try:
        return psutil.Process(pid if pid is not None else os.getpid()).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """Whether process `pid` runs and is the one that started at `started` (a reused pid is another process)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        now_started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return started is None or abs(now_started - started) < 1.0


def effective_status(run, now: dt.datetime | None = None) -> str:
    """The run's status as it really is: a `running` run whose process is gone (or whose pid now belongs to
    another process) is `interrupted`; on another host, one whose heartbeat is stale (stale_after())."""
    if run.status != "running":
        return run.status
    if run.host == socket.gethostname() and run.pid is not None:
        return "running" if process_alive(run.pid, run.pid_started) else "interrupted"
    beat = run.heartbeat_at or run.started_at
    if beat is not None and (now or utcnow()) - beat > stale_after():
        return "interrupted"
    return "running"
