"""Results store: runs, per-epoch metrics and final results in SQLite (WAL) or PostgreSQL."""
from .api import STALE_AFTER, Store, effective_status, process_alive, results_dict, run_summary, stale_after
from .db import StoreError
from .migrations import MIGRATIONS, migrate
from .schema import RUN_STATUSES, Metric, Result, Run

__all__ = ["Store", "StoreError", "effective_status", "results_dict", "run_summary", "MIGRATIONS", "migrate",
           "Run", "Metric", "Result", "RUN_STATUSES", "STALE_AFTER", "stale_after", "process_alive"]
