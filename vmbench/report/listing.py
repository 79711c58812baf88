"""`vmbench runs` (a filtered, limited list of runs, one SQL query) and `vmbench metrics` (per-epoch metrics
exported as csv / json). Entry points: `list_runs`, `render_runs`, `export_metrics`. Reads only; no torch."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from . import queries

_RESULT_FIELDS = ("top1", "top5", "val_loss", "img_s", "params_m", "gflops", "train_time_s", "epochs_done")


def _iso(t) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t is not None else None


def list_runs(engine, flt: queries.RunFilter) -> list[dict[str, Any]]:
    """Runs matching `flt`, newest first, as JSON-ready dicts (a stable subset of `vmbench show --json`)."""
    with engine.connect() as conn:
        rows = queries.select_runs(conn, flt)
    out = []
    for r in rows:
        img = r.get("img_size") or r.get("p_img_size") or r.get("p_res")
        out.append({
            "id": r["id"], "kind": r["kind"], "model": r["model"], "dataset": r["dataset"], "recipe": r["recipe"],
            "status": r["status"], "stored_status": r["stored_status"], "seed": r["seed"], "tags": r["tags"] or [],
            "epochs": r.get("p_epochs"), "epochs_done": r.get("epochs_done"),
            "img_size": int(img) if img is not None else None,
            "batch": r.get("p_batch_size") or r.get("p_batch"), "device": r["device"],
            "scan_backend": r["scan_backend"], "started_at": _iso(r["started_at"]), "ended_at": _iso(r["ended_at"]),
            "error": (r["error"] or "").splitlines()[0] if r["error"] else None,
            "results": {k: r.get(k) for k in _RESULT_FIELDS if r.get(k) is not None},
        })
    return out


def _fmt(v: Any) -> str:
    if v is None or v == []:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


_COLOURS = {"completed": "green", "failed": "red", "interrupted": "yellow", "diverged": "red", "running": "cyan"}


def render_runs(rows: list[dict[str, Any]], console) -> None:
    from rich.table import Table
    from rich.text import Text

    if not rows:
        console.print(Text("no runs match"))
        return
    t = Table(header_style="bold")
    for col in ("id", "kind", "model", "dataset", "status", "seed", "tags", "recipe", "epochs", "img", "top-1 %",
                "img/s", "device", "started"):
        t.add_column(col, justify="right" if col in ("id", "seed", "epochs", "img", "top-1 %", "img/s") else "left")
    for r in rows:
        res = r["results"]
        epochs = _fmt(r["epochs"])
        if r["epochs_done"] is not None and r["epochs"] is not None and r["epochs_done"] != r["epochs"]:
            epochs = f"{r['epochs_done']:.0f}/{r['epochs']}"
        cells = [str(r["id"]), r["kind"], r["model"], _fmt(r["dataset"]), r["status"], _fmt(r["seed"]),
                 _fmt(r["tags"]), _fmt(r["recipe"]), epochs, _fmt(r["img_size"]), _fmt(res.get("top1")),
                 _fmt(res.get("img_s")), _fmt(r["device"]), _fmt(r["started_at"])]
        row = [Text(c) for c in cells]
        row[4].stylize(_COLOURS.get(r["status"], "white"))
        t.add_row(*row)
    console.print(t)


def export_metrics(engine, run_ids: list[int], fmt: str, keys=()) -> str:
    """Per-epoch metrics of `run_ids`: csv (run, epoch, step, then one column per metric key) or json
    ([{"run": id, "epoch": …, key: value, …}, …]). An unknown run id is a ValueError."""
    with engine.connect() as conn:
        known = {r["id"] for r in queries.select_runs(conn, queries.RunFilter(ids=run_ids), with_results=False)}
        missing = [i for i in run_ids if i not in known]
        if missing:
            raise ValueError(f"no run {missing[0]} in the database")
        per_run = queries.metric_rows(conn, run_ids, keys)
    rows = [{"run": rid, **m} for rid in run_ids for m in per_run[rid]]
    if fmt == "json":
        return json.dumps(rows, indent=2)
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("run", "epoch", "step")))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["run", "epoch", "step", *names], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
