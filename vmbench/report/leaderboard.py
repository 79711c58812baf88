"""Leaderboards from the store: one row per (model, dataset), best completed run first. Reads only; no torch."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from ..store import Run, effective_status, results_dict

FORMATS = ("table", "markdown", "csv", "json")

# (key, header, format) of the columns shown; rows carry all of them (None where unknown).
COLUMNS = [
    ("model", "model", "{}"),
    ("dataset", "dataset", "{}"),
    ("top1", "top-1 %", "{:.2f}"),
    ("top5", "top-5 %", "{:.2f}"),
    ("params_m", "params M", "{:.1f}"),
    ("gflops", "GFLOPs", "{:.2f}"),
    ("img_s", "img/s", "{:.0f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
    ("res", "res", "{:.0f}"),
    ("precision", "precision", "{}"),
    ("device", "device", "{}"),
    ("runs", "runs", "{}"),
    ("run_id", "best run", "{}"),
]
BENCH_GROUP = "(benchmark)"


def bench_mode(params: dict) -> str:
    """How a benchmark run was measured, beyond its precision: "" for eager inference, else e.g. "train",
    "compiled", "train graph" (the paper suite's sections). Runs of different modes are never ranked together."""
    parts = []
    if params.get("kind") == "train" or params.get("section") == "train":
        parts.append("train")
    if params.get("compile") or params.get("compiled"):
        parts.append("compiled")
    if params.get("section") == "graph" or params.get("cuda_graph"):
        parts.append("graph")
    return " ".join(parts)


def _row(run: Run, n_runs: int) -> dict[str, Any]:
    res = results_dict(run)
    precision = res.get("precision") or (run.params or {}).get("precision")
    if run.kind == "bench" and bench_mode(run.params or {}):
        precision = f"{precision} ({bench_mode(run.params or {})})"
    gpu = (run.env or {}).get("gpu")
    device = run.device if not gpu else f"{run.device} ({gpu})"
    return {
        "model": run.model,
        "dataset": run.dataset if run.kind != "bench" else BENCH_GROUP,
        "kind": run.kind,
        "top1": res.get("top1"),
        "top5": res.get("top5"),
        "params_m": res.get("params_m"),
        "gflops": res.get("gflops"),
        "img_s": res.get("img_s"),
        "peak_mem_mb": res.get("peak_mem_mb"),
        "res": res.get("res") or res.get("img_size"),
        "precision": precision,
        "device": device,
        "scan_backend": run.scan_backend,
        "runs": n_runs,
        "run_id": run.id,
    }


def leaderboard(runs: Iterable[Run], dataset: str | None = None, include_bench: bool = True) -> list[dict]:
    """Best completed run per (model, dataset); benchmark runs per (model, res, batch, precision, device).

    Rows are grouped by dataset (benchmarks last) and sorted by top-1 (or img/s) descending.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if effective_status(run) != "completed":
            continue
        if run.kind == "bench":
            if not include_bench or dataset:
                continue
            p = run.params or {}
            key = ("bench", run.model, p.get("res"), p.get("batch"), p.get("precision"), bench_mode(p), run.device,
                   (run.env or {}).get("gpu"))
        else:
            if dataset and run.dataset != dataset:
                continue
            key = ("train", run.model, run.dataset)
        groups.setdefault(key, []).append(run)

    rows = []
    for key, grp in groups.items():
        metric = "img_s" if key[0] == "bench" else "top1"

        def score(r: Run) -> float:
            v = results_dict(r).get(metric)
            return v if isinstance(v, (int, float)) else float("-inf")

        best = max(grp, key=lambda r: (score(r), r.id))
        rows.append(_row(best, len(grp)))

    def order(r):
        is_bench = r["dataset"] == BENCH_GROUP
        main = r["img_s"] if is_bench else r["top1"]
        return (is_bench, r["dataset"] or "", -(main if isinstance(main, (int, float)) else float("-inf")))

    return sorted(rows, key=order)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _show(row: dict, key: str, fmt: str) -> str:
    """A row's cell as displayed; the best run says when it is an evaluation of a weights file, not a training run."""
    if key == "run_id" and row.get("kind") == "eval":
        return f"{row['run_id']} (eval)"
    return _cell(row.get(key), fmt)


def to_markdown(rows: list[dict]) -> str:
    head = [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_show(r, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    keys = [k for k, _, _ in COLUMNS] + ["kind", "scan_backend"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)


def render_table(rows: list[dict], console) -> None:
    """Rich tables, one per dataset group."""
    from rich.table import Table

    by_ds: dict[str, list[dict]] = {}
    for r in rows:
        by_ds.setdefault(r["dataset"] or "", []).append(r)
    for ds, grp in by_ds.items():
        cols = [c for c in COLUMNS if c[0] != "dataset"]
        if ds == BENCH_GROUP:
            cols = [c for c in cols if c[0] not in ("top1", "top5")]
        else:
            cols = [c for c in cols if c[0] not in ("res", "precision")]
        title = "benchmarks (inference unless the precision says train)" if ds == BENCH_GROUP else f"dataset: {ds}"
        t = Table(title=title, title_justify="left", header_style="bold")
        for k, h, _ in cols:
            t.add_column(h, justify="left" if k in ("model", "device") else "right")
        for i, r in enumerate(grp):
            style = "bold green" if i == 0 and len(grp) > 1 else None
            t.add_row(*[_show(r, k, f) for k, _, f in cols], style=style)
        console.print(t)
