"""`vmbench compare`: filters -> SQL -> protocol groups -> sorted, limited rows. Entry point: `compare_report`.
Raises ValueError (one line) for a filter that names nothing in the database or an unknown column."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from . import aggregate, queries
from .tables import COLUMNS


def parse_since(text: str | None) -> dt.datetime | None:
    """--since: an ISO date or date-time (UTC), or N followed by d / h (that long ago)."""
    if not text:
        return None
    t = text.strip()
    if t[:-1].isdigit() and t[-1:] in ("d", "h"):
        delta = dt.timedelta(days=int(t[:-1])) if t[-1] == "d" else dt.timedelta(hours=int(t[:-1]))
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - delta
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a date (2026-01-31), a date-time, or an age such as 7d / 12h") \
            from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def check_columns(names: Sequence[str], what: str) -> None:
    bad = [n for n in names if n not in COLUMNS]
    if bad:
        raise ValueError(f"{what}: unknown column {bad[0]!r} (known: {', '.join(COLUMNS)})")


def check_names(conn, flt: queries.RunFilter) -> None:
    """A model, dataset or recipe no run has is a mistake, not an empty table."""
    for column, values in (("model", flt.models), ("dataset", flt.datasets), ("recipe", flt.recipes)):
        missing = queries.exists(conn, column, values)
        if missing:
            known = queries.known_values(conn, column)
            shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
            raise ValueError(f"no run has {column} {missing[0]!r} (recorded: {shown or 'none'})")


def compare_report(engine, flt: queries.RunFilter, *, agg: str = "mean", paper: bool = False,
                   include_bench: bool = True, sort: str | None = None, limit: int | None = None) -> list[dict]:
    """The rows of `vmbench compare`: completed runs (or `flt.statuses`) of the filter, grouped by protocol,
    aggregated by `agg`, best values marked, sorted; `limit` rows per section; quoted paper rows with `paper`."""
    if sort:
        check_columns([sort], "--sort")
    if not flt.statuses:
        flt.statuses = ("completed",)
    with engine.connect() as conn:
        check_names(conn, flt)
        if agg == "mean" and not queries.stored_statuses(flt.statuses)[1]:
            run_rows = queries.select_groups(conn, flt)  # runs of identical settings summed up in SQL
        else:
            run_rows = queries.select_runs(conn, flt, with_source=True)
    bench = include_bench and not flt.datasets and not flt.recipes
    rows = aggregate.compare_rows(run_rows, agg, include_bench=bench)
    if paper:
        from ..models import list_models

        models = {r["model"] for r in rows} | set(flt.models)
        rows += aggregate.paper_rows(e for e in list_models() if not models or e.name in models)
    aggregate.mark_best(rows)
    rows = aggregate.sort_rows(rows, sort)
    if limit is not None:
        kept, seen = [], {}
        for r in rows:
            seen[r["section"]] = seen.get(r["section"], 0) + 1
            if seen[r["section"]] <= limit:
                kept.append(r)
        rows = kept
    return rows
