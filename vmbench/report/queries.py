"""The reports' read queries, in SQLAlchemy Core over the store's tables: filters and limits run in SQL, the
results of each run are pivoted into columns in SQL, and the per-epoch metrics are read only when asked for.

Entry points: `RunFilter`, `select_runs(conn, flt)` (one row per run, results as columns), `metric_rows`,
`result_rows`, `known_values`, `trained_on`. Nothing here writes and nothing imports torch.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..store.liveness import effective_status
from ..store.tables import NUM_RESULTS, TEXT_RESULTS, metrics, results, run_results, runs

# Results shown as columns of a run row come from `run_results` (one row per run): NUM_RESULTS by their own
# name, TEXT_RESULTS as `r_<name>`.
# Run settings read out of the params JSON in SQL (name -> type).
PARAMS = {"epochs": "int", "batch_size": "int", "img_size": "int", "val_resize": "int", "train_resize": "int",
          "res": "int", "batch": "int", "precision": "str", "section": "str", "kind": "str", "compile": "bool",
          "compiled": "bool", "cuda_graph": "bool", "channels_last": "bool", "amp": "bool", "amp_dtype": "str",
          "weights_path": "str", "weights_sha256": "str", "bench_batch": "int", "init": "str", "weights": "str",
          "pretrained": "bool", "task": "str", "res_w": "int"}
RUN_COLUMNS = ("id", "kind", "model", "dataset", "recipe", "status", "pid", "pid_started", "host", "device",
               "scan_backend", "started_at", "ended_at", "heartbeat_at", "seed", "tags", "parent_id", "checkpoint_dir",
               "run_uuid", "git_sha", "git_dirty", "error")
STATUSES = ("running", "completed", "failed", "interrupted", "diverged")


@dataclass
class RunFilter:
    """What a report looks at. Every field narrows the SQL query; empty fields do not."""

    models: Sequence[str] = ()
    datasets: Sequence[str] = ()
    tags: Sequence[str] = ()
    recipes: Sequence[str] = ()
    kinds: Sequence[str] = ()
    statuses: Sequence[str] = ()
    since: dt.datetime | None = None
    ids: Sequence[int] = ()
    limit: int | None = None
    extra: dict = field(default_factory=dict)


def _param(name: str, typ: str):
    expr = runs.c.params[name]
    return {"int": expr.as_integer, "str": expr.as_string, "bool": expr.as_boolean, "float": expr.as_float}[typ]()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(flt: RunFilter, stored_statuses: Sequence[str] | None) -> list:
    conds = []
    if flt.models:
        conds.append(runs.c.model.in_(list(flt.models)))
    if flt.datasets:
        conds.append(runs.c.dataset.in_(list(flt.datasets)))
    if flt.recipes:
        conds.append(runs.c.recipe.in_(list(flt.recipes)))
    if flt.kinds:
        conds.append(runs.c.kind.in_(list(flt.kinds)))
    if flt.since is not None:
        conds.append(runs.c.started_at >= flt.since)
    if flt.ids:
        conds.append(runs.c.id.in_(list(flt.ids)))
    for tag in flt.tags:  # tags are a JSON list of strings: match the quoted element in its text
        conds.append(sa.cast(runs.c.tags, sa.Text).like(f"%{_like_escape(json.dumps(tag))}%", escape="\\"))
    if stored_statuses is not None:
        conds.append(runs.c.status.in_(list(stored_statuses)))
    return conds


def stored_statuses(statuses: Sequence[str]) -> tuple[list[str] | None, bool]:
    """(stored statuses to ask SQL for, whether Python must still check the effective status). A `running` run
    whose process is gone is shown as interrupted, so "interrupted" and "running" both read stored `running` rows."""
    if not statuses:
        return None, False
    stored = set(statuses)
    if "interrupted" in stored or "running" in stored:
        stored |= {"running"}
        return sorted(stored), True
    return sorted(stored), False


def _params_columns(conn: sa.Connection) -> list:
    """The PARAMS settings out of the params JSON: on SQLite one json_extract of all paths (the document is
    parsed once per row; a JSON array comes back), elsewhere one JSON path expression per setting."""
    if conn.dialect.name == "sqlite":
        paths = [f'$."{n}"' for n in PARAMS]
        return [sa.func.json_extract(runs.c.params, *paths).label("p__all")]
    return [_param(n, t).label(f"p_{n}") for n, t in PARAMS.items()]


def _unpack_params(d: dict) -> None:
    packed = d.pop("p__all", None)
    if packed is None and "p__all" not in d and any(k.startswith("p_") for k in d):
        return
    values = json.loads(packed) if isinstance(packed, str) else [None] * len(PARAMS)
    for (name, typ), v in zip(PARAMS.items(), values):
        if typ == "bool" and v is not None:
            v = bool(v)
        d[f"p_{name}"] = v


def _result_joins(keys: Sequence[str]):
    """(FROM clause, columns): runs LEFT JOIN run_results (a primary-key lookup per run), the `keys` as
    columns (numbers by name, texts as `r_<name>`)."""
    src = runs.outerjoin(run_results, run_results.c.run_id == runs.c.id)
    cols = []
    for key in keys:
        assert key in NUM_RESULTS or key in TEXT_RESULTS, key
        cols.append(run_results.c[key].label(key if key in NUM_RESULTS else f"r_{key}"))
    return src, cols


def select_runs(conn: sa.Connection, flt: RunFilter, *, with_results: bool = True) -> list[dict[str, Any]]:
    """One dict per run matching `flt`, newest first: the run's columns, `status` as it really is (a dead
    `running` run is `interrupted`), `p_<name>` for the PARAMS settings and, with `with_results`, the results
    (NUM_RESULTS by name, TEXT_RESULTS as `r_<name>`; absent ones None)."""
    stored, recheck = stored_statuses(flt.statuses)
    cols = [runs.c[c] for c in RUN_COLUMNS] + _params_columns(conn)
    q = sa.select(*cols).where(*_where(flt, stored)).order_by(runs.c.id.desc())
    if with_results:
        src, rcols = _result_joins(NUM_RESULTS + TEXT_RESULTS)
        q = q.add_columns(*rcols).select_from(src)
    if flt.limit is not None and not recheck:
        q = q.limit(flt.limit)
    out = []
    for row in conn.execute(q).all():
        d = dict(row._mapping)
        _unpack_params(d)
        d["stored_status"] = d["status"]
        d["status"] = effective_status(row)
        if recheck and d["status"] not in flt.statuses:
            continue
        if isinstance(d.get("tags"), str):
            d["tags"] = json.loads(d["tags"])
        out.append(d)
        if flt.limit is not None and len(out) >= flt.limit:
            break
    return out


# Results that are part of a run's protocol (grouped by) rather than measured values (averaged).
PROTOCOL_RESULTS = ("img_size", "res", "batch", "bench_batch", "num_classes")


def select_groups(conn: sa.Connection, flt: RunFilter) -> list[dict[str, Any]]:
    """Like `select_runs` (stored statuses only: no `running` / `interrupted` in `flt.statuses`), but runs with
    identical settings (every column, setting and protocol result except id, seed, tags, times, host, pid) are
    aggregated in SQL: one dict per such group with `n_runs`, `ids`, `seeds`, and for each measured result k
    its mean as k plus `k__n`, `k__sum`, `k__sq` (count, sum, sum of squares) to merge groups exactly."""
    assert not stored_statuses(flt.statuses)[1], "effective statuses need select_runs"
    src, rcols = _result_joins(NUM_RESULTS + TEXT_RESULTS)
    keys = [runs.c[c] for c in ("kind", "model", "dataset", "recipe", "status", "device", "scan_backend")]
    keys += _params_columns(conn)
    keys += [c for c in rcols if c.name not in NUM_RESULTS or c.name in PROTOCOL_RESULTS]
    measured = [c for c in rcols if c.name in NUM_RESULTS and c.name not in PROTOCOL_RESULTS]
    aggs = [sa.func.count().label("n_runs"), sa.func.max(runs.c.id).label("id"),
            sa.func.aggregate_strings(sa.cast(runs.c.id, sa.Text), ",").label("ids"),
            sa.func.aggregate_strings(sa.cast(runs.c.seed, sa.Text), ",").label("seeds_")]
    for c in measured:
        v = c.element if hasattr(c, "element") else c
        aggs += [sa.func.avg(v).label(c.name), sa.func.count(v).label(f"{c.name}__n"),
                 sa.func.sum(v).label(f"{c.name}__sum"), sa.func.sum(v * v).label(f"{c.name}__sq")]
    q = (sa.select(*keys, *aggs).select_from(src).where(*_where(flt, stored_statuses(flt.statuses)[0]))
         .group_by(*[k.element if hasattr(k, "element") else k for k in keys]))
    out = []
    for row in conn.execute(q).all():
        d = dict(row._mapping)
        _unpack_params(d)
        d["ids"] = sorted(int(x) for x in (d["ids"] or "").split(",") if x)
        d["seeds"] = sorted({int(x) for x in (d.pop("seeds_") or "").split(",") if x})
        out.append(d)
    return out


def known_values(conn: sa.Connection, column: str) -> list[str]:
    """The distinct values of a runs column (models, datasets, recipes), for one-line "no such" errors."""
    c = runs.c[column]
    return [v for (v,) in conn.execute(sa.select(c).where(c.is_not(None)).distinct().order_by(c))]


def exists(conn: sa.Connection, column: str, values: Iterable[str]) -> list[str]:
    """Those of `values` that no run has in `column`."""
    values = list(values)
    if not values:
        return []
    c = runs.c[column]
    found = {v for (v,) in conn.execute(sa.select(c).where(c.in_(values)).distinct())}
    return [v for v in values if v not in found]


def run_params(conn: sa.Connection, ids: Iterable[int]) -> dict[int, dict]:
    """The full params / env JSON of a few runs (id -> {"params", "env"})."""
    ids = list(ids)
    if not ids:
        return {}
    q = sa.select(runs.c.id, runs.c.params, runs.c.env).where(runs.c.id.in_(ids))
    return {r.id: {"params": r.params or {}, "env": r.env or {}} for r in conn.execute(q)}


def result_rows(conn: sa.Connection, run_id: int) -> dict[str, Any]:
    """All results of one run: key -> number or text (JSON lists and dicts decoded)."""
    out: dict[str, Any] = {}
    for key, value, text in conn.execute(sa.select(results.c.key, results.c.value, results.c.text)
                                         .where(results.c.run_id == run_id).order_by(results.c.key)):
        if text is None:
            out[key] = value
        else:
            try:
                out[key] = json.loads(text) if text[:1] in "[{" else text
            except ValueError:
                out[key] = text
    return out


def metric_rows(conn: sa.Connection, run_ids: Iterable[int], keys: Sequence[str] = ()) -> dict[int, list[dict]]:
    """Per-epoch (or per-step) metrics of some runs: run id -> [{"epoch", "step", key: value, …}, …] in order."""
    ids = list(run_ids)
    q = (sa.select(metrics.c.run_id, metrics.c.epoch, metrics.c.step, metrics.c.key, metrics.c.value)
         .where(metrics.c.run_id.in_(ids)).order_by(metrics.c.run_id, metrics.c.id))
    if keys:
        q = q.where(metrics.c.key.in_(list(keys)))
    out: dict[int, dict] = {i: {} for i in ids}
    for run_id, epoch, step, key, value in conn.execute(q):
        slot = epoch if epoch is not None else ("step", step)
        row = out[run_id].setdefault(slot, {"epoch": epoch, "step": step})
        row[key] = value
    return {i: list(rows.values()) for i, rows in out.items()}


def trained_on(conn: sa.Connection, weights_paths: Iterable[str]) -> dict[str, dict]:
    """For weights files that lie in a train run's checkpoint folder: path -> {"run_id", "dataset", "epochs"}
    of that run (files from elsewhere are left out)."""
    import posixpath

    by_dir: dict[str, list[str]] = {}
    for p in weights_paths:
        if p:
            by_dir.setdefault(posixpath.dirname(p), []).append(p)
    if not by_dir:
        return {}
    q = (sa.select(runs.c.id, runs.c.dataset, runs.c.checkpoint_dir, _param("epochs", "int").label("epochs"))
         .where(runs.c.kind == "train", runs.c.checkpoint_dir.in_(list(by_dir))))
    out = {}
    for r in conn.execute(q):
        for p in by_dir.get(r.checkpoint_dir, []):
            out[p] = {"run_id": r.id, "dataset": r.dataset, "epochs": r.epochs}
    return out
