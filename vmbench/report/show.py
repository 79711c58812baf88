"""Details of one run and lists of runs, for `vmbench show` / `vmbench runs`. Reads only; no torch."""
from __future__ import annotations

from typing import Any

from ..store import Run, run_summary


def run_detail(run: Run) -> dict[str, Any]:
    """run_summary plus per-epoch metrics as a list of {epoch, key: value, …} rows."""
    detail = run_summary(run)
    epochs: dict[Any, dict[str, Any]] = {}
    for m in run.metrics:
        key = m.epoch if m.epoch is not None else ("step", m.step)
        row = epochs.setdefault(key, {"epoch": m.epoch, "step": m.step})
        row[m.key] = m.value
    detail["metrics"] = list(epochs.values())
    return detail


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_run(detail: dict[str, Any], console) -> None:
    from rich.table import Table

    head = Table(show_header=False, title=f"run {detail['id']}", title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    for key in ("kind", "model", "dataset", "status", "error", "device", "scan_backend", "seed", "tags", "recipe",
                "started_at", "ended_at", "host", "pid", "git_sha", "git_dirty"):
        if detail.get(key) not in (None, [], ""):
            head.add_row(key, _fmt(detail[key]))
    console.print(head)

    params = dict(detail.get("params") or {})
    recipe_values = params.pop("recipe", None)
    recipe_title = f"recipe {detail.get('recipe') or ''}".strip()
    if params.get("recipe_source"):
        recipe_title += f" ({params.pop('recipe_source')})"
    if isinstance(recipe_values, dict):  # the recipe table shows these; parameters keeps the run settings
        params = {k: v for k, v in params.items() if k not in recipe_values}
    for title, mapping in (("parameters", params), (recipe_title, recipe_values if isinstance(recipe_values, dict)
                                                     else {}),
                           ("environment", detail.get("env") or {}), ("results", detail.get("results") or {})):
        if not mapping:
            continue
        t = Table(show_header=False, title=title, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for k, v in mapping.items():
            t.add_row(k, _fmt(v))
        console.print(t)

    rows = detail.get("metrics") or []
    if rows:
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("epoch", "step")]
        t = Table(title="per-epoch metrics", title_justify="left", header_style="bold")
        t.add_column("epoch", justify="right")
        for k in keys:
            t.add_column(k, justify="right")
        for r in rows:
            t.add_row(_fmt(r.get("epoch") if r.get("epoch") is not None else r.get("step")),
                      *[_fmt(r.get(k)) for k in keys])
        console.print(t)


def render_runs(rows: list[dict[str, Any]], console) -> None:
    from rich.table import Table

    t = Table(header_style="bold")
    for col in ("id", "kind", "model", "dataset", "status", "top-1 %", "img/s", "device", "started"):
        t.add_column(col)
    colours = {"completed": "green", "failed": "red", "interrupted": "yellow", "diverged": "red",
               "running": "cyan"}
    for r in rows:
        res = r.get("results") or {}
        status = r["status"]
        t.add_row(str(r["id"]), r["kind"], r["model"], r.get("dataset") or "—",
                  f"[{colours.get(status, 'white')}]{status}[/]", _fmt(res.get("top1")), _fmt(res.get("img_s")),
                  r.get("device") or "—", r.get("started_at") or "—")
    console.print(t)
