"""Results store: runs, per-epoch metrics and final results in SQLite (WAL) or PostgreSQL.

Names are loaded on first use, so that a listing that reads `store.tables` never imports the ORM.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "Store": "api", "results_dict": "api", "run_summary": "api",
    "effective_status": "liveness", "process_alive": "liveness", "STALE_AFTER": "liveness",
    "stale_after": "liveness",
    "StoreError": "db",
    "MIGRATIONS": "migrations", "migrate": "migrations",
    "Run": "schema", "Metric": "schema", "Result": "schema", "RUN_STATUSES": "tables",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
