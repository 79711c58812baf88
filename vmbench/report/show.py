"""Details of one run for `vmbench show`: the protocol, curves as sparklines (val top-1, loss, lr), the checkpoint,
the failure reason, then parameters, recipe, environment, results and per-epoch metrics. Reads only; no torch.
Entry points: `run_detail(run)`, `render_run(detail, console)`. All text from the data is printed as text."""
from __future__ import annotations

import os
from typing import Any

from ..store import Run, run_summary
from .sparkline import sparkline

CURVES = (("val_top1", "val top-1 %"), ("train_loss", "train loss"), ("val_loss", "val loss"), ("lr", "lr"))


def _checkpoint(run: Run) -> dict[str, Any] | None:
    folder = run.checkpoint_dir
    if not folder:
        return None
    files = {}
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".pt"):
                files[name] = os.path.getsize(os.path.join(folder, name))
    return {"dir": folder, "exists": os.path.isdir(folder), "files": files}


def run_detail(run: Run) -> dict[str, Any]:
    """run_summary plus per-epoch metrics ({epoch, step, key: value, …} rows), the checkpoint folder and files."""
    detail = run_summary(run)
    epochs: dict[Any, dict[str, Any]] = {}
    for m in run.metrics:
        key = m.epoch if m.epoch is not None else ("step", m.step)
        row = epochs.setdefault(key, {"epoch": m.epoch, "step": m.step})
        row[m.key] = m.value
    detail["metrics"] = list(epochs.values())
    detail["checkpoint"] = _checkpoint(run)
    detail["parent_id"] = run.parent_id
    return detail


def protocol(detail: dict[str, Any]) -> dict[str, Any]:
    """What the run's numbers depend on (the fields `compare` groups by)."""
    p, r = detail.get("params") or {}, detail.get("results") or {}
    env = detail.get("env") or {}
    out = {"dataset": detail.get("dataset"), "image size": r.get("img_size") or p.get("img_size") or p.get("res"),
           "val resize": p.get("val_resize"), "train resize": p.get("train_resize"), "epochs": p.get("epochs"),
           "recipe": detail.get("recipe"), "device": detail.get("device"), "gpu": env.get("gpu"),
           "precision": p.get("precision") or ("amp_" + p.get("amp_dtype", "bf16") if p.get("amp") else None),
           "batch": p.get("batch_size") or p.get("batch"), "compiled": p.get("compile"),
           "channels-last": p.get("channels_last"), "cuda graph": p.get("cuda_graph"),
           "scan backend": detail.get("scan_backend"), "weights": p.get("weights_path")}
    return {k: v for k, v in out.items() if v not in (None, False, "")}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _kv_table(title: str, mapping: dict, console) -> None:
    from rich.table import Table
    from rich.text import Text

    if not mapping:
        return
    t = Table(show_header=False, title=Text(title), title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in mapping.items():
        t.add_row(Text(str(k)), Text(_fmt(v)))
    console.print(t)


def render_run(detail: dict[str, Any], console) -> None:
    from rich.table import Table
    from rich.text import Text

    head = {k: detail[k] for k in ("kind", "model", "dataset", "status", "device", "scan_backend", "seed", "tags",
                                   "recipe", "started_at", "ended_at", "host", "pid", "git_sha", "git_dirty",
                                   "parent_id")
            if detail.get(k) not in (None, [], "")}
    _kv_table(f"run {detail['id']}", head, console)
    if detail.get("error"):
        console.print(Text("failure reason:", style="bold red"))
        console.print(Text(str(detail["error"])))
    _kv_table("protocol", protocol(detail), console)
    ck = detail.get("checkpoint")
    if ck:
        files = ", ".join(f"{n} ({s / 2**20:.1f} MB)" for n, s in ck["files"].items()) or "no checkpoint files"
        _kv_table("checkpoint", {"folder": ck["dir"] + ("" if ck["exists"] else " (missing)"), "files": files},
                  console)

    rows = detail.get("metrics") or []
    curves = Table(show_header=False, title=Text("curves"), title_justify="left")
    curves.add_column(style="bold")
    curves.add_column()
    curves.add_column(justify="right")
    for key, label in CURVES:
        series = [r.get(key) for r in rows if r.get("epoch") is not None]
        known = [v for v in series if v is not None]
        if known:
            curves.add_row(Text(label), Text(sparkline(series)),
                           Text(f"{known[0]:.4g} → {known[-1]:.4g} (min {min(known):.4g}, max {max(known):.4g})"))
    if curves.row_count:
        console.print(curves)

    params = dict(detail.get("params") or {})
    recipe_values = params.pop("recipe", None)
    recipe_title = f"recipe {detail.get('recipe') or ''}".strip()
    if params.get("recipe_source"):
        recipe_title += f" ({params.pop('recipe_source')})"
    if isinstance(recipe_values, dict):  # the recipe table shows these; parameters keeps the run settings
        params = {k: v for k, v in params.items() if k not in recipe_values}
    _kv_table("parameters", params, console)
    _kv_table(recipe_title, recipe_values if isinstance(recipe_values, dict) else {}, console)
    _kv_table("environment", detail.get("env") or {}, console)
    _kv_table("results", detail.get("results") or {}, console)

    if rows:
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("epoch", "step")]
        t = Table(title=Text("per-epoch metrics"), title_justify="left", header_style="bold")
        t.add_column("epoch", justify="right")
        for k in keys:
            t.add_column(Text(k), justify="right")
        for r in rows:
            t.add_row(_fmt(r.get("epoch") if r.get("epoch") is not None else r.get("step")),
                      *[_fmt(r.get(k)) for k in keys])
        console.print(t)
