"""The results tables (runs, metrics, results) in SQLAlchemy Core, without the ORM.

The reports read these directly, so a listing never pays for importing the ORM; `schema.py` maps its classes
onto the same Table objects. The migrations create them; a test checks the two agree.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..config import DETECTION_METRICS

RUN_KINDS = ("train", "bench", "eval")
# What a run can be: a `running` run whose process is gone is *shown* as
# `interrupted` (see store.liveness.effective_status), never trusted blindly.
RUN_STATUSES = ("running", "completed", "failed", "interrupted", "diverged")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("dataset", sa.String(256), index=True),
    sa.Column("recipe", sa.String(128)),
    sa.Column("params", sa.JSON, nullable=False, default=dict),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("pid", sa.Integer),
    sa.Column("host", sa.String(256)),
    sa.Column("gpus", sa.String(64)),
    sa.Column("device", sa.String(32)),
    sa.Column("scan_backend", sa.String(16)),
    sa.Column("started_at", sa.DateTime, nullable=False, default=utcnow),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("heartbeat_at", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.Column("git_sha", sa.String(64)),
    sa.Column("git_dirty", sa.Boolean),
    sa.Column("env", sa.JSON, nullable=False, default=dict),
    sa.Column("seed", sa.Integer),
    sa.Column("tags", sa.JSON, nullable=False, default=list),
    sa.Column("parent_id", sa.ForeignKey("runs.id")),
    sa.Column("checkpoint_dir", sa.String(1024), index=True),  # an evaluation's weights -> their train run
    sa.Column("run_uuid", sa.String(32), unique=True),  # never repeats: names the run's folder
    sa.Column("pid_started", sa.Float),  # the process's start time (epoch s): pid reuse
    sa.Column("settings", sa.Text),  # SETTINGS out of params, a compact JSON array (settings_columns)
    sa.Column("weights_file", sa.Text),  # an evaluation's [weights_path, weights_sha256] out of params, or NULL
)

# The run settings the reports show and group runs by, in this order. They live in `params`; `runs.settings`
# keeps them once more as one compact JSON array, written with params (store.api), so that a leaderboard over
# 10 000 runs groups by one text column instead of parsing every run's params document. Changing this list
# needs a migration that recomputes the column (migrations.fill_settings).
SETTINGS = ("epochs", "batch_size", "img_size", "val_resize", "train_resize", "res", "batch", "precision", "section",
            "kind", "compile", "compiled", "cuda_graph", "channels_last", "amp", "amp_dtype", "bench_batch", "init",
            "weights", "pretrained", "task", "res_w")
WEIGHTS = ("weights_path", "weights_sha256")  # runs.weights_file


def _compact(values: list) -> str:
    return json.dumps(values, separators=(",", ":"), default=str)


def settings_columns(params: Mapping[str, Any], names: tuple[str, ...] = SETTINGS,
                     weights: tuple[str, ...] = WEIGHTS) -> dict[str, str | None]:
    """The `settings` and `weights_file` column values of a run with these params."""
    w = [params.get(n) for n in weights]
    return {"settings": _compact([params.get(n) for n in names]),
            "weights_file": _compact(w) if any(v is not None for v in w) else None}


# One value logged during a run (per epoch or per step).
metrics = sa.Table(
    "metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("epoch", sa.Integer),
    sa.Column("step", sa.Integer),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("time", sa.DateTime, nullable=False, default=utcnow),
)

# A final result of a run: a number (`value`) or a text (`text`).
results = sa.Table(
    "results", metadata,
    sa.Column("run_id", sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Float),
    sa.Column("text", sa.Text),
)

# The results the listings show as columns, kept once more as one row per run in `run_results` (written in the
# same transaction as `results` by store.api; `results` stays the record): reading a leaderboard over 10 000
# runs is then one primary-key join per run instead of one per key.
NUM_RESULTS = ("top1", "top5", "val_loss", "params_m", "gflops", "img_s", "latency_ms", "peak_mem_mb", "train_time_s",
               "epochs_done", "num_classes", "img_size", "res", "batch", "bench_batch", *DETECTION_METRICS)
TEXT_RESULTS = ("peak_mem_source", "gpu_name", "precision")


run_results = sa.Table(
    "run_results", metadata,
    sa.Column("run_id", sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    *[sa.Column(k, sa.Float) for k in NUM_RESULTS], *[sa.Column(k, sa.Text) for k in TEXT_RESULTS],
)


def run_results_rows(rows: list[dict]) -> dict[int, dict]:
    """The `run_results` values that `results` rows ({run_id, key, value, text}) set: run id -> {column: value}
    (a numeric key's `value`, a text key's `text`; other keys have no column)."""
    out: dict[int, dict] = {}
    for r in rows:
        if r["key"] in NUM_RESULTS:
            out.setdefault(r["run_id"], {})[r["key"]] = r["value"]
        elif r["key"] in TEXT_RESULTS:
            out.setdefault(r["run_id"], {})[r["key"]] = r["text"]
    return out
