"""Test helper: a fingerprint of a SQLite database's files, to prove a command wrote nothing."""
from __future__ import annotations

import hashlib
import os


def db_digest(path) -> str:
    """sha256 over the database file and its WAL (whichever exist)."""
    out = hashlib.sha256()
    for suffix in ("", "-wal"):
        p = str(path) + suffix
        if os.path.exists(p):
            with open(p, "rb") as f:
                out.update(f.read())
    return out.hexdigest()
