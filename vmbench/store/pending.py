"""Final results that the database did not take: kept in a file beside the run's checkpoints, applied later.

    path = write_pending(folder, run_uuid, run_id, status, results, error, fields)   # temp + fsync + rename
    applied = apply_pending(store, root)   # every `<root>/*/pending.json` whose run is in `store`

A run whose last write (`finish_run`) failed would otherwise stay `running` with its results lost. The scheduler
writes them here instead, and the next open of the store by the scheduler (`vmbench run`, `resume`) or a listing
(`vmbench runs`) writes them to the run, if it is still `running` there, then deletes the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PENDING = "pending.json"


def checkpoint_root(db: str, override: str | None = None) -> Path:
    """Where train runs keep their folders (`<root>/<run uuid>/`: checkpoints, run.log, pending results):
    `override` (--checkpoint-dir), else $VMBENCH_CHECKPOINTS, else `<database folder>/runs` for a SQLite file.
    ValueError (one line) for a server or in-memory database without either."""
    from .db import is_url

    chosen = override or os.environ.get("VMBENCH_CHECKPOINTS")
    if chosen:
        return Path(chosen).expanduser().resolve()
    if is_url(db):
        import sqlalchemy as sa

        try:
            url = sa.engine.make_url(db)
        except sa.exc.ArgumentError:
            url = None
        if url is None or url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            raise ValueError("a train run on a database that is not a file keeps its checkpoints and log in a "
                             "folder: give --checkpoint-dir DIR (or set VMBENCH_CHECKPOINTS)")
        path = Path(url.database)
    else:
        path = Path(db).expanduser()
    return path.resolve().parent / "runs"


def write_pending(folder, run_uuid: str, run_id: int, status: str, results: dict | None, error: str | None,
                  fields: dict | None = None) -> Path:
    """Write the final state of a run to `<folder>/pending.json` atomically; returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PENDING
    tmp = folder / f".{PENDING}.{os.getpid()}.tmp"
    body = dict(run_uuid=run_uuid, run_id=run_id, status=status, results=results or {}, error=error,
                fields=fields or {})
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(body, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def pending_files(root) -> list[Path]:
    """The pending files under a checkpoint root (one folder per run)."""
    if root is None or not Path(root).is_dir():
        return []
    return sorted(Path(root).glob(f"*/{PENDING}"))


def apply_pending(store, root) -> list[int]:
    """Write each pending file under `root` whose run (same UUID) is in `store` and still `running` there, then
    delete it; returns the run ids written. Files of runs in other databases that share the root stay; a file
    whose run already ended (written meanwhile) is deleted."""
    done = []
    for path in pending_files(root):
        try:
            body: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        run = store.get_run_by_uuid(str(body.get("run_uuid")))
        if run is None:
            continue
        if store.finish_run(run.id, body["status"], body.get("results"), body.get("error"), only_if_running=True,
                            **(body.get("fields") or {})):
            done.append(run.id)
        path.unlink(missing_ok=True)
    return done
