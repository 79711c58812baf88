"""`vmbench diff A B`: what differs between two runs — the spec, the recipe, the environment (versions, GPU,
git sha) and the results. Entry points: `diff_runs(a, b)` over two `show.run_detail` dicts, `render_diff`."""
from __future__ import annotations

from typing import Any

_RUN_FIELDS = ("kind", "model", "dataset", "recipe", "status", "seed", "tags", "device", "scan_backend", "gpus",
               "git_sha", "git_dirty", "error", "checkpoint_dir")


def _sections(d: dict) -> dict[str, dict[str, Any]]:
    params = dict(d.get("params") or {})
    recipe = params.pop("recipe", None)
    return {"run": {k: d.get(k) for k in _RUN_FIELDS},
            "spec": params,
            "recipe": recipe if isinstance(recipe, dict) else {},
            "environment": d.get("env") or {},
            "results": d.get("results") or {}}


def diff_runs(a: dict, b: dict, everything: bool = False) -> list[dict[str, Any]]:
    """[{"section", "key", "a", "b"}] for every key whose values differ (all keys with `everything`)."""
    out = []
    sa_, sb = _sections(a), _sections(b)
    for section in sa_:
        left, right = sa_[section], sb[section]
        for key in dict.fromkeys([*left, *right]):
            va, vb = left.get(key), right.get(key)
            if everything or va != vb:
                out.append({"section": section, "key": key, "a": va, "b": vb})
    return out


def _text(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def render_diff(rows: list[dict], a_id: int, b_id: int, console) -> None:
    from rich.table import Table
    from rich.text import Text

    if not rows:
        console.print(Text(f"runs {a_id} and {b_id} do not differ in spec, recipe, environment or results"))
        return
    t = Table(title=Text(f"run {a_id} vs run {b_id}: what differs"), title_justify="left", header_style="bold")
    for col in ("section", "key", f"run {a_id}", f"run {b_id}"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(Text(r["section"]), Text(r["key"]), Text(_text(r["a"])), Text(_text(r["b"])))
    console.print(t)
