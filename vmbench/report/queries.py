"""The reports' read queries, in SQLAlchemy Core over the store's tables: filters and limits run in SQL, the
results of each run come as columns from `run_results`, and the per-epoch metrics are read only when asked for.

Entry points: `RunFilter`, `select_runs(conn, flt)` (one row per run, results as columns), `metric_rows`,
`result_rows`, `known_values`. Nothing here writes and nothing imports torch.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..config import DETECTION_METRICS
from ..store.liveness import effective_status
from ..store.tables import NUM_RESULTS, SETTINGS, TEXT_RESULTS, WEIGHTS, metrics, results, run_results, runs

# Results shown as columns of a run row come from `run_results` (one row per run): NUM_RESULTS by their own
# name, TEXT_RESULTS as `r_<name>`. Run settings (`p_<name>`) come from runs.settings (SETTINGS, one JSON array)
# and, for an evaluation, runs.weights_file (WEIGHTS).
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


def _unpack_settings(d: dict) -> None:
    """`settings` and `weights_file` (JSON arrays) -> `p_<name>` for each of SETTINGS and WEIGHTS."""
    for names, packed in ((SETTINGS, d.pop("settings", None)), (WEIGHTS, d.pop("weights_file", None))):
        values = json.loads(packed) if packed else ()
        for i, name in enumerate(names):
            d[f"p_{name}"] = values[i] if i < len(values) else None


def _with_results(src):
    """(FROM clause, columns): `src` LEFT JOIN run_results (a primary-key lookup per run), NUM_RESULTS as columns
    by their own name and TEXT_RESULTS as `r_<name>`."""
    cols = [run_results.c[k].label(k) for k in NUM_RESULTS] + [run_results.c[k].label(f"r_{k}") for k in TEXT_RESULTS]
    return src.outerjoin(run_results, run_results.c.run_id == runs.c.id), cols


def _weights_source(conn: sa.Connection):
    """(subquery `src` with eval_id, id, dataset, epochs; ON clause against runs): for each evaluation, the train
    run whose checkpoint folder holds its weights file (the file's folder is that run's checkpoint_dir, looked up
    by index). Evaluations of other files, and other runs, find none."""
    ev, train = runs.alias("ev"), runs.alias("train")
    path = ev.c.params["weights_path"].as_string()
    if conn.dialect.name == "sqlite":  # the folder: strip the name after the last "/", then the "/"
        folder = sa.func.rtrim(path, sa.func.replace(path, "/", ""))
        folder = sa.func.substr(folder, 1, sa.func.length(folder) - 1)
    else:
        folder = sa.func.regexp_replace(path, "/[^/]*$", "")
    src = (sa.select(ev.c.id.label("eval_id"), train.c.id, train.c.dataset,
                     train.c.params["epochs"].as_integer().label("epochs"))
           .join_from(ev, train, train.c.checkpoint_dir == folder)
           .where(ev.c.kind == "eval", train.c.kind == "train").subquery("src"))
    return src, src.c.eval_id == runs.c.id


def select_runs(conn: sa.Connection, flt: RunFilter, *, with_results: bool = True,
                with_source: bool = False) -> list[dict[str, Any]]:
    """One dict per run matching `flt`, newest first: the run's columns, `status` as it really is (a dead
    `running` run is `interrupted`), `p_<name>` for the settings (SETTINGS, WEIGHTS) and, with `with_results`,
    the results (NUM_RESULTS by name, TEXT_RESULTS as `r_<name>`; absent ones None); with `with_source`, an
    evaluation's source train run (`src_ids`: [its id] or [], `src_dataset`, `src_epochs`)."""
    stored, recheck = stored_statuses(flt.statuses)
    cols = [runs.c[c] for c in (*RUN_COLUMNS, "settings", "weights_file")]
    q = sa.select(*cols).where(*_where(flt, stored)).order_by(runs.c.id.desc())
    frm = runs
    if with_results:
        frm, rcols = _with_results(frm)
        q = q.add_columns(*rcols)
    if with_source:
        src, on = _weights_source(conn)
        frm = frm.outerjoin(src, on)
        q = q.add_columns(src.c.id.label("src_id"), src.c.dataset.label("src_dataset"),
                          src.c.epochs.label("src_epochs"))
    q = q.select_from(frm)
    if flt.limit is not None and not recheck:
        q = q.limit(flt.limit)
    out = []
    for row in conn.execute(q).all():
        d = dict(row._mapping)
        _unpack_settings(d)
        d["stored_status"] = d["status"]
        d["status"] = effective_status(row)
        if recheck and d["status"] not in flt.statuses:
            continue
        if isinstance(d.get("tags"), str):
            d["tags"] = json.loads(d["tags"])
        if with_source:
            d["src_ids"] = [d["src_id"]] if d["src_id"] is not None else []
        out.append(d)
        if flt.limit is not None and len(out) >= flt.limit:
            break
    return out


# Results that are part of a run's protocol (grouped by) rather than measured values (averaged).
PROTOCOL_RESULTS = ("img_size", "res", "batch", "bench_batch", "num_classes")
# Measured results the reports show with their spread (std): the others are summed but not squared.
SPREAD_RESULTS = ("top1", "top5", "val_loss", "img_s", *DETECTION_METRICS)


def _has_detection(conn: sa.Connection) -> bool:
    """Whether any run has COCO AP results (else select_groups leaves the twelve AP sums out)."""
    return conn.execute(sa.select(run_results.c.run_id).where(run_results.c.box_ap.is_not(None)).limit(1)).first() \
        is not None


def select_groups(conn: sa.Connection, flt: RunFilter) -> list[dict[str, Any]]:
    """Like `select_runs` (stored statuses only: no `running` / `interrupted` in `flt.statuses`), but runs with
    identical settings (every column, setting and protocol result except id, seed, tags, times, host, pid) are
    aggregated in SQL: one dict per such group with `n_runs`, `ids`, `seeds`, and for each measured result k
    `k__n`, `k__sum`, for SPREAD_RESULTS `k__sq` (count, sum, sum of squares: groups merge exactly) and its mean
    as k (COCO AP only where some run has it). Evaluations of
    train runs' checkpoints group by the source runs' dataset and epochs (`src_dataset`, `src_epochs`, `src_ids`),
    not by file; those of other files by the file."""
    assert not stored_statuses(flt.statuses)[1], "effective statuses need select_runs"
    src, on = _weights_source(conn)
    joined, rcols = _with_results(runs.outerjoin(src, on))
    own_file = src.c.id.is_(None)
    keys = [runs.c[c] for c in ("kind", "model", "dataset", "recipe", "status", "device", "scan_backend")]
    keys += [runs.c.settings, sa.case((own_file, runs.c.weights_file)).label("weights_file")]
    keys += [src.c.dataset.label("src_dataset"), src.c.epochs.label("src_epochs")]
    keys += [c for c in rcols if c.name not in NUM_RESULTS or c.name in PROTOCOL_RESULTS]
    skip = () if _has_detection(conn) else DETECTION_METRICS
    measured = [c for c in rcols if c.name in NUM_RESULTS and c.name not in (*PROTOCOL_RESULTS, *skip)]
    aggs = [sa.func.count().label("n_runs"), sa.func.max(runs.c.id).label("id"),
            sa.func.aggregate_strings(sa.cast(runs.c.id, sa.Text), ",").label("ids"),
            sa.func.aggregate_strings(sa.cast(runs.c.seed, sa.Text), ",").label("seeds_"),
            sa.func.aggregate_strings(sa.cast(src.c.id, sa.Text), ",").label("src_ids")]
    for c in measured:
        v = c.element
        aggs += [sa.func.count(v).label(f"{c.name}__n"), sa.func.sum(v).label(f"{c.name}__sum")]
        if c.name in SPREAD_RESULTS:
            aggs.append(sa.func.sum(v * v).label(f"{c.name}__sq"))
    q = (sa.select(*keys, *aggs).select_from(joined)
         .where(*_where(flt, stored_statuses(flt.statuses)[0]))
         .group_by(*[k.element if hasattr(k, "element") else k for k in keys]))
    names = [c.name for c in measured]
    out = []
    for row in conn.execute(q).all():
        d = dict(row._mapping)
        _unpack_settings(d)
        d["ids"] = sorted(map(int, d["ids"].split(",")))
        d["seeds"] = sorted({int(x) for x in (d.pop("seeds_") or "").split(",") if x})
        d["src_ids"] = sorted({int(x) for x in (d["src_ids"] or "").split(",") if x})
        for k in names:
            d[k] = d[f"{k}__sum"] / d[f"{k}__n"] if d[f"{k}__n"] else None
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
